//! A process's CPU time and memory, read from `/proc` (Linux), for tests and benchmarks.

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// User + system CPU time of process `pid` so far, in seconds; None once it is gone.
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): field n is f[n - 3]; utime and stime are fields 14 and 15.
    let n = |i: usize| f.get(i - 3).and_then(|s| s.parse::<u64>().ok());
    Some((n(14)? + n(15)?) as f64 / ticks_per_second())
}

/// Resident memory of process `pid` (`VmRSS`), in bytes; None once it is gone.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    kib_field(pid, "status", "VmRSS").map(|kb| kb * 1024)
}

/// Proportional memory of process `pid` (`Pss` of `smaps_rollup`: shared pages divided among
/// the processes sharing them), in bytes; None once it is gone.
pub fn pss_bytes(pid: i32) -> Option<u64> {
    kib_field(pid, "smaps_rollup", "Pss").map(|kb| kb * 1024)
}

/// A `Name:   123 kB` line of `/proc/<pid>/<file>`.
fn kib_field(pid: i32, file: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(':')?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process() {
        let me = std::process::id() as i32;
        assert!(cpu_seconds(me).is_some());
        assert!(rss_bytes(me).is_some_and(|b| b > 1 << 20));
        assert!(pss_bytes(me).is_some_and(|b| b > 0));
        assert_eq!(cpu_seconds(i32::MAX), None);
    }
}
