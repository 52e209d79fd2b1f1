//! What this process uses: resident memory, CPU time and peak memory, read
//! through `sysinfo` and `getrusage` (no `/proc` parsing, no page-size
//! assumption: right on 64 KiB-page kernels too).

/// (resident bytes, CPU seconds used) of this process (0 where unknown).
pub fn process_usage() -> (f64, f64) {
    use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};
    let Ok(pid) = sysinfo::get_current_pid() else { return (0.0, 0.0) };
    let mut sys = System::new();
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        false,
        ProcessRefreshKind::nothing().with_memory().with_cpu(),
    );
    sys.process(pid).map_or((0.0, 0.0), |p| (p.memory() as f64, p.accumulated_cpu_time() as f64 / 1000.0))
}

/// Peak resident set size of this process so far, MiB (`getrusage`), 0 if unknown.
pub fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    // Linux reports kibibytes.
    usage.ru_maxrss as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn usage_is_plausible() {
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        let (rss, cpu) = super::process_usage();
        assert!(rss > 32.0 * 1024.0 * 1024.0, "rss {rss}");
        assert!(cpu >= 0.0);
        assert!(super::peak_rss_mib() >= rss / 1024.0 / 1024.0 * 0.9, "peak below current");
    }
}
