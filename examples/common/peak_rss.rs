//! This process's peak resident set size, for the examples that compare modes each in its own
//! process.

/// This process's peak resident set size, in KiB (`getrusage`).
pub fn max_rss_kib() -> u64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    usage.ru_maxrss.max(0) as u64
}
