//! The node's speed benchmark, Linpack style: LU factorisation with partial pivoting of a
//! dense random n×n system, then the triangular solves, counted as `2/3 n³ + 2 n²`
//! floating-point operations. One core (a job runs in one slot on one core), fixed n so that
//! results compare between nodes, repeated until about a second has been measured; the
//! median run is reported. Every run checks its normalised residual, so a miscompiled or
//! broken build cannot announce nonsense.
//!
//! The result is kept in `<data>/bench.json` (written atomically) and reused at the next
//! start unless a re-run is asked for, the file is unreadable, or it was written by another
//! version of the program.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rjs_signer::fsutil::{self, FileError};
use serde::{Deserialize, Serialize};

/// Name of the result file inside the data directory.
pub const BENCH_FILE: &str = "bench.json";
/// Matrix order used by the node.
pub const DEFAULT_N: usize = 500;
/// Largest normalised residual `‖Ax−b‖∞ / (n ‖A‖∞ ‖x‖∞ ε)` accepted. A correct LU with
/// partial pivoting gives values of order 1 on random matrices.
pub const MAX_RESIDUAL: f64 = 100.0;

/// How to run the benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    /// Matrix order.
    pub n: usize,
    /// Keep running until at least this much time has been measured…
    pub min_time: Duration,
    /// …and at least this many runs.
    pub min_runs: u32,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            n: DEFAULT_N,
            min_time: Duration::from_secs(1),
            min_runs: 3,
        }
    }
}

/// A benchmark result, as stored in `bench.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    /// Millions of floating-point operations per second (median run).
    pub mflops: f64,
    /// Matrix order.
    pub n: usize,
    /// Runs measured.
    pub runs: u32,
    /// Time measured over all runs (factorisation and solve only), seconds.
    pub seconds: f64,
    /// Largest normalised residual seen (order 1 is good).
    pub residual: f64,
    /// When it was measured, seconds since the Unix epoch.
    pub measured_at: u64,
    /// Version of the program that measured it; another version measures again.
    pub program_version: String,
}

/// A result and whether it was just measured (`false`: read from `bench.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOutcome {
    pub result: BenchResult,
    pub fresh: bool,
    pub path: PathBuf,
}

/// Why the benchmark produced no result.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("benchmark matrix is singular at column {0} (broken arithmetic?)")]
    Singular(usize),
    #[error(
        "benchmark residual {residual:.3e} exceeds {MAX_RESIDUAL} (the solver or the floating-point unit is broken; refusing to report a speed)"
    )]
    Inaccurate { residual: f64 },
    #[error("benchmark matrix order {0} is out of range (2..=5000)")]
    BadSize(usize),
    #[error("saving the benchmark result")]
    Save(#[source] FileError),
}

/// Floating-point operations of one LU solve of order `n`.
pub fn flops(n: usize) -> f64 {
    let n = n as f64;
    2.0 / 3.0 * n * n * n + 2.0 * n * n
}

/// Runs the benchmark (CPU-bound for about `min_time`; async callers use `spawn_blocking`).
pub fn run(opts: &BenchOptions) -> Result<BenchResult, BenchError> {
    let n = opts.n;
    if !(2..=5000).contains(&n) {
        return Err(BenchError::BadSize(n));
    }
    let mut times = Vec::new();
    let mut total = Duration::ZERO;
    let mut worst = 0.0f64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    while total < opts.min_time || (times.len() as u32) < opts.min_runs.max(1) {
        let original = random_matrix(n, &mut seed);
        // b = A·1, so the exact solution is all ones.
        let b_orig: Vec<f64> = original.chunks_exact(n).map(|r| r.iter().sum()).collect();
        let mut a = original.clone();
        let mut x = b_orig.clone();
        let start = Instant::now();
        lu_solve(&mut a, n, &mut x)?;
        let elapsed = start.elapsed();
        let r = normalised_residual(&original, n, &x, &b_orig);
        if !(r.is_finite() && r <= MAX_RESIDUAL) {
            return Err(BenchError::Inaccurate { residual: r });
        }
        worst = worst.max(r);
        total += elapsed;
        times.push(elapsed.as_secs_f64().max(1e-9));
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok(BenchResult {
        mflops: flops(n) / median / 1e6,
        n,
        runs: times.len() as u32,
        seconds: total.as_secs_f64(),
        residual: worst,
        measured_at: rjs_signer::unix_now(),
        program_version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// Reads a stored result; `None` if the file is missing, unreadable, malformed, from another
/// version or implausible (then the caller measures again).
pub fn load(path: &Path) -> Option<BenchResult> {
    let bytes = fsutil::read_bounded(path, 64 * 1024).ok()?;
    let r: BenchResult = serde_json::from_slice(&bytes).ok()?;
    (r.program_version == env!("CARGO_PKG_VERSION")
        && r.mflops.is_finite()
        && r.mflops > 0.0
        && r.residual.is_finite()
        && r.residual <= MAX_RESIDUAL)
        .then_some(r)
}

/// Stores a result atomically (mode 0644), creating the data directory (0700) if needed.
pub fn save(path: &Path, result: &BenchResult) -> Result<(), BenchError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fsutil::create_private_dir(dir).map_err(BenchError::Save)?;
    }
    let mut json = serde_json::to_vec_pretty(result).expect("serialising a bench result");
    json.push(b'\n');
    fsutil::write_atomic(path, &json, 0o644).map_err(BenchError::Save)
}

/// The node's start-up step: reuse `<data>/bench.json` unless `rebench`, else measure with
/// the default options and store the result.
pub fn load_or_run(data_dir: &Path, rebench: bool) -> Result<BenchOutcome, BenchError> {
    load_or_run_with(data_dir, rebench, &BenchOptions::default())
}

/// [`load_or_run`] with explicit options (tests use a small matrix).
pub fn load_or_run_with(
    data_dir: &Path,
    rebench: bool,
    opts: &BenchOptions,
) -> Result<BenchOutcome, BenchError> {
    let path = data_dir.join(BENCH_FILE);
    if !rebench && let Some(result) = load(&path) {
        return Ok(BenchOutcome {
            result,
            fresh: false,
            path,
        });
    }
    let result = run(opts)?;
    save(&path, &result)?;
    Ok(BenchOutcome {
        result,
        fresh: true,
        path,
    })
}

/// A reproducible random matrix, entries uniform in [-0.5, 0.5) (xorshift64*).
fn random_matrix(n: usize, state: &mut u64) -> Vec<f64> {
    (0..n * n)
        .map(|_| {
            *state ^= *state >> 12;
            *state ^= *state << 25;
            *state ^= *state >> 27;
            let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
            (v >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
        .collect()
}

/// Solves `A x = b` in place: on return `a` holds L and U (row-major, rows permuted) and `b`
/// holds x. Partial pivoting by row swaps.
pub fn lu_solve(a: &mut [f64], n: usize, b: &mut [f64]) -> Result<(), BenchError> {
    assert_eq!(a.len(), n * n);
    assert_eq!(b.len(), n);
    for k in 0..n {
        let mut p = k;
        let mut max = a[k * n + k].abs();
        for i in k + 1..n {
            let v = a[i * n + k].abs();
            if v > max {
                max = v;
                p = i;
            }
        }
        if max == 0.0 || !max.is_finite() {
            return Err(BenchError::Singular(k));
        }
        if p != k {
            let (top, bottom) = a.split_at_mut(p * n);
            top[k * n..(k + 1) * n].swap_with_slice(&mut bottom[..n]);
            b.swap(k, p);
        }
        let (top, bottom) = a.split_at_mut((k + 1) * n);
        let row_k = &top[k * n..];
        let inv = 1.0 / row_k[k];
        let bk = b[k];
        for (row_i, bi) in bottom.chunks_exact_mut(n).zip(&mut b[k + 1..]) {
            let l = row_i[k] * inv;
            row_i[k] = l;
            if l != 0.0 {
                for (x, y) in row_i[k + 1..].iter_mut().zip(&row_k[k + 1..]) {
                    *x -= l * y;
                }
                // Forward substitution (L y = P b) done alongside.
                *bi -= l * bk;
            }
        }
    }
    for i in (0..n).rev() {
        let row = &a[i * n..(i + 1) * n];
        let s: f64 = row[i + 1..]
            .iter()
            .zip(&b[i + 1..])
            .map(|(x, y)| x * y)
            .sum();
        b[i] = (b[i] - s) / row[i];
    }
    Ok(())
}

/// `‖Ax−b‖∞ / (n ‖A‖∞ ‖x‖∞ ε)`.
pub fn normalised_residual(a: &[f64], n: usize, x: &[f64], b: &[f64]) -> f64 {
    // `f64::max` ignores NaN: a NaN anywhere must not vanish from the result.
    if !x.iter().chain(a).chain(b).all(|v| v.is_finite()) {
        return f64::INFINITY;
    }
    let mut r_max = 0.0f64;
    let mut a_norm = 0.0f64;
    for (row, bi) in a.chunks_exact(n).zip(b) {
        let ax: f64 = row.iter().zip(x).map(|(p, q)| p * q).sum();
        r_max = r_max.max((ax - bi).abs());
        a_norm = a_norm.max(row.iter().map(|v| v.abs()).sum());
    }
    let x_norm = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let r = r_max / (n as f64 * a_norm * x_norm * f64::EPSILON);
    if r.is_nan() { f64::INFINITY } else { r }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> BenchOptions {
        BenchOptions {
            n: 120,
            min_time: Duration::from_millis(20),
            min_runs: 3,
        }
    }

    #[test]
    fn solves_accurately_and_reports_positive_speed() {
        let r = run(&small()).unwrap();
        assert!(r.mflops > 0.0 && r.mflops.is_finite(), "{r:?}");
        assert!(r.residual < 10.0, "{r:?}");
        assert!(r.runs >= 3);
        assert_eq!(r.n, 120);
    }

    #[test]
    fn solution_is_all_ones() {
        let n = 50;
        let mut seed = 42;
        let a0 = random_matrix(n, &mut seed);
        let b: Vec<f64> = a0.chunks_exact(n).map(|r| r.iter().sum()).collect();
        let mut a = a0.clone();
        let mut x = b.clone();
        lu_solve(&mut a, n, &mut x).unwrap();
        for v in &x {
            assert!((v - 1.0).abs() < 1e-9, "{v}");
        }
        assert!(normalised_residual(&a0, n, &x, &b) < 10.0);
    }

    #[test]
    fn pivoting_is_needed_and_done() {
        // A zero on the diagonal: fails without pivoting.
        let a0 = vec![0.0, 1.0, 1.0, 1.0];
        let b = vec![1.0, 2.0];
        let mut a = a0.clone();
        let mut x = b.clone();
        lu_solve(&mut a, 2, &mut x).unwrap();
        assert_eq!(x, vec![1.0, 1.0]);
    }

    #[test]
    fn singular_and_wrong_answers_are_caught() {
        let mut a = vec![1.0, 2.0, 2.0, 4.0];
        let mut b = vec![1.0, 2.0];
        assert!(matches!(
            lu_solve(&mut a, 2, &mut b),
            Err(BenchError::Singular(1))
        ));
        let a0 = vec![2.0, 0.0, 0.0, 2.0];
        let wrong = vec![1.0, 0.9];
        assert!(normalised_residual(&a0, 2, &wrong, &[2.0, 2.0]) > MAX_RESIDUAL);
        assert!(normalised_residual(&a0, 2, &[f64::NAN, 1.0], &[2.0, 2.0]).is_infinite());
    }

    #[test]
    fn stored_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = load_or_run_with(&data, false, &small()).unwrap();
        assert!(first.fresh);
        assert_eq!(first.path, data.join(BENCH_FILE));
        let again = load_or_run_with(&data, false, &small()).unwrap();
        assert!(!again.fresh);
        assert_eq!(again.result, first.result);
        let re = load_or_run_with(&data, true, &small()).unwrap();
        assert!(re.fresh);
        // A damaged file is measured again, not trusted.
        std::fs::write(data.join(BENCH_FILE), b"{\"mflops\": -1}").unwrap();
        assert!(load_or_run_with(&data, false, &small()).unwrap().fresh);
        assert_eq!(
            std::fs::read_dir(&data).unwrap().count(),
            1,
            "no temporary files left"
        );
    }
}
