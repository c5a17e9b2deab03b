//! Bundle benchmarks: `cargo bench -p rjs-signer --bench bundle`.
//!
//! 1. Verifying a 10 MiB bundle versus `sha256sum` of the same file (target: at most 2x).
//!    Two bundles: one of incompressible data (stored), one of compressible data (deflated).
//!    The target holds for `verify_signed` (what the web server does on upload) on both, and
//!    for the full verification (`verify_file`: what `rjs-sign verify` and compute nodes do)
//!    on the incompressible one. The deflated one's full verification inflates and hashes
//!    about 23 MiB, so it is also compared, for information, with `sha256sum` of a file of
//!    as many bytes as it inflates to.
//! 2. Packing the Mandelbrot sample (target: under 50 ms), in-process and through the CLI.
//!
//! Prints the medians and exits non-zero if a target is missed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rjs_harness::data::noise;
use rjs_harness::paths;
use rjs_signer::{BundleBuilder, KeyPair, VerifyLimits, verify_bytes, verify_signed};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<F: FnMut()>(runs: usize, mut f: F) -> Duration {
    f(); // warm-up
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

/// Real WebAssembly code (the sample modules, cycled): deflates about 2.4x, like modules do.
fn wasm_like_bytes(n: usize) -> Vec<u8> {
    let mut pool = Vec::new();
    for job in [
        "mandelbrot",
        "hello",
        "evil-loop",
        "evil-escape",
        "evil-output",
    ] {
        let dir = paths::samples_dir().join(job);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "wasm") {
                    pool.extend(std::fs::read(e.path()).unwrap());
                }
            }
        }
    }
    assert!(!pool.is_empty(), "run samples/build.sh first");
    pool.iter().copied().cycle().take(n).collect()
}

fn make_bundle(key: &KeyPair, input: Vec<u8>) -> Vec<u8> {
    let module = rjs_signer::wasm::empty_command(&noise(512 * 1024, 1));
    let manifest =
        br#"{"format":1,"name":"bench","entry":"bench.wasm","inputs":["data.bin"]}"#.to_vec();
    let mut b = BundleBuilder::new();
    b.add("manifest.json", manifest).unwrap();
    b.add("bench.wasm", module).unwrap();
    b.add("data.bin", input).unwrap();
    b.sign(key, "bench", 1_700_000_000).unwrap()
}

fn sha256sum_time(path: &Path, runs: usize) -> Option<Duration> {
    let run = || {
        Command::new("sha256sum")
            .arg(path)
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    run()?;
    Some(median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                let _ = run();
                t.elapsed()
            })
            .collect(),
    ))
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    let key = KeyPair::from_secret([3; 32]);
    let dir = tempfile::tempdir().unwrap();
    let mut failed = false;
    const TEN_MIB: usize = 10 * 1024 * 1024;

    println!("== verify a 10 MiB bundle vs sha256sum of the same file (median of 21) ==");
    let stored = make_bundle(&key, noise(TEN_MIB - 512 * 1024 - 2048, 9));
    // Compressible content (real wasm code) sized so that the bundle file is ~10 MiB.
    let mut compressible = make_bundle(&key, wasm_like_bytes(TEN_MIB));
    let ratio = TEN_MIB as f64 / compressible.len() as f64;
    compressible = make_bundle(&key, wasm_like_bytes((TEN_MIB as f64 * ratio) as usize));
    for (label, bundle) in [
        ("incompressible (stored)", &stored),
        ("wasm code (deflated ~2.4x)", &compressible),
    ] {
        failed |= !verify_vs_sha256sum(label, bundle, dir.path());
    }
    failed |= !pack_mandelbrot(&key, dir.path());
    if failed {
        eprintln!("a target was missed");
        std::process::exit(1);
    }
}

/// Times verifying `bundle` (written into `dir`) every way, against `sha256sum` of the file
/// and of its inflated bytes; prints the medians. False if a target is missed.
fn verify_vs_sha256sum(label: &str, bundle: &[u8], dir: &Path) -> bool {
    let limits = VerifyLimits::default();
    let mut ok = true;
    let path = dir.join("b.rjs");
    std::fs::write(&path, bundle).unwrap();
    let verify_mem = time(21, || {
        verify_bytes(bundle, &limits).unwrap();
    });
    let verify_file = time(21, || {
        rjs_signer::verify_file(&path, &limits).unwrap();
    });
    // What the web server does on upload: read + verify_signed (no extraction).
    let signed_file = time(21, || {
        let bytes = std::fs::read(&path).unwrap();
        verify_signed(&bytes, &limits).unwrap();
    });
    let hash_mem = time(21, || {
        std::hint::black_box(rjs_signer::bundle_id(bundle));
    });
    let sum = sha256sum_time(&path, 21);
    // A file of the bundle's inflated size (its entries' contents, concatenated): what
    // hashing alone costs for the bytes a full verification produces.
    let verified = verify_bytes(bundle, &limits).unwrap();
    let inflated: u64 = verified.entries().iter().map(|e| e.size).sum();
    let content_path = dir.join("content.bin");
    let mut content = verified.manifest_bytes().to_vec();
    content.extend_from_slice(verified.module());
    for (_, data) in verified.inputs() {
        content.extend_from_slice(data);
    }
    assert_eq!(content.len() as u64, inflated);
    std::fs::write(&content_path, &content).unwrap();
    drop(content);
    let sum_inflated = sha256sum_time(&content_path, 21);
    let deflated = verified
        .entries()
        .iter()
        .any(|e| e.method == rjs_signer::zipfmt::Method::Deflate && e.size > 1 << 20);
    let bundle_mib = bundle.len() as f64 / 1048576.0;
    println!(
        "{label}: bundle {bundle_mib:.2} MiB, {:.2} MiB inflated",
        inflated as f64 / 1048576.0
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "  read + verify_signed          {:>8.2} ms",
        ms(signed_file)
    );
    println!(
        "  verify_file (+ inflate all)   {:>8.2} ms",
        ms(verify_file)
    );
    println!("  verify_bytes (in memory)      {:>8.2} ms", ms(verify_mem));
    println!("  SHA-256 in process (sha2)     {:>8.2} ms", ms(hash_mem));
    match (sum, sum_inflated) {
        (Some(s), Some(si)) => {
            let r = signed_file.as_secs_f64() / s.as_secs_f64();
            let full = verify_file.as_secs_f64() / s.as_secs_f64();
            let full_inflated = verify_file.as_secs_f64() / si.as_secs_f64();
            println!("  sha256sum (process)           {:>8.2} ms", ms(s));
            println!("  sha256sum of inflated bytes   {:>8.2} ms", ms(si));
            println!("  verify_signed / sha256sum     {r:>8.2}x  (target <= 2x)");
            if deflated {
                // Inflating ~2.4x the file's bytes cannot be within 2x of hashing the
                // file: shown, not enforced; the second ratio is the fair comparison.
                println!(
                    "  full verify / sha256sum       {full:>8.2}x  (information: inflates and hashes {:.1}x the file)",
                    inflated as f64 / bundle.len() as f64
                );
                println!(
                    "  full verify / sha256sum of the inflated bytes {full_inflated:>5.2}x  (information)"
                );
            } else {
                println!("  full verify / sha256sum       {full:>8.2}x  (target <= 2x)");
                println!("  full verify / sha256sum of the inflated bytes {full_inflated:>5.2}x");
                if full > 2.0 {
                    eprintln!("{label}: full verification is {full:.2}x sha256sum (> 2x)");
                    ok = false;
                }
            }
            if r > 2.0 {
                eprintln!("{label}: verify_signed is {r:.2}x sha256sum (> 2x)");
                ok = false;
            }
        }
        _ => println!("  sha256sum not available: ratios not measured"),
    }
    ok
}

/// Times packing the Mandelbrot sample in process and, if a release `rjs-sign` is built,
/// through the CLI. False if the target is missed.
fn pack_mandelbrot(key: &KeyPair, dir: &Path) -> bool {
    println!("\n== pack the Mandelbrot sample (median of 21) ==");
    let job = paths::samples_dir().join("mandelbrot");
    if !job.join("manifest.json").is_file() {
        eprintln!("{} is missing: run samples/build.sh first", job.display());
        std::process::exit(2);
    }
    let pack = time(21, || {
        rjs_signer::pack_dir(&job, key, "bench", 1_700_000_000).unwrap();
    });
    println!(
        "  pack_dir (read, deflate, sign) {:>8.2} ms (target < 50 ms)",
        pack.as_secs_f64() * 1e3
    );
    let ok = pack <= Duration::from_millis(50);
    // The CLI, end to end (process start, key load, pack, atomic write).
    let exe = paths::target_dir().join("release/rjs-sign");
    if exe.is_file() {
        let keyfile = dir.join("k");
        let st = Command::new(&exe)
            .args(["keygen", "--name", "k", "--dir"])
            .arg(&keyfile)
            .output()
            .unwrap();
        assert!(st.status.success());
        let out = dir.join("m.rjs");
        let cli = time(11, || {
            let o = Command::new(&exe)
                .arg("pack")
                .arg(&job)
                .arg("--key")
                .arg(keyfile.join("k.key"))
                .arg("-o")
                .arg(&out)
                .output()
                .unwrap();
            assert!(o.status.success());
        });
        println!(
            "  rjs-sign pack (whole process)  {:>8.2} ms",
            cli.as_secs_f64() * 1e3
        );
    } else {
        println!("  (build target/release/rjs-sign to also time the CLI)");
    }
    ok
}
