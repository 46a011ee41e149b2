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

/// Returns freed memory to the system (`malloc_trim`) and restarts the peak from the memory in
/// use now (Linux: `5` into `/proc/self/clear_refs`), so that [`peak_since_reset_kib`] measures
/// what follows alone. Fails where the system cannot reset the peak.
pub fn reset_peak() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: malloc_trim only releases free memory of glibc's allocator.
        unsafe {
            libc::malloc_trim(0);
        }
        std::fs::write("/proc/self/clear_refs", "5")
    }
    #[cfg(not(target_os = "linux"))]
    Err(std::io::Error::other("resetting the peak RSS needs Linux"))
}

/// The peak resident set size since [`reset_peak`], in KiB (`VmHWM`).
pub fn peak_since_reset_kib() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no VmHWM in /proc/self/status"))
}

/// Runs this program again with `--mode <mode>`, each mode in its own process so that each peak
/// is its own, and returns what it printed.
pub fn run_mode(mode: &str) -> Result<String, String> {
    let output = std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args(["--mode", mode])
        .output()
        .map_err(|e| format!("--mode {mode} did not start: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "--mode {mode} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    String::from_utf8(output.stdout).map_err(|e| format!("--mode {mode} printed: {e}"))
}
