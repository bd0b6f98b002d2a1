//! Resident-memory readings for benchmarks (Linux `/proc`; `None` elsewhere).

/// Resets the process's peak resident set (`VmHWM`) to the current one, so the next
/// [`peak_rss_mb`] reports the peak of what follows. Returns whether the reset worked.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident set of this process in MiB (`VmHWM`).
pub fn peak_rss_mb() -> Option<f64> {
    status_kb("VmHWM:").map(|kb| kb / 1024.0)
}

/// Current resident set of this process in MiB (`VmRSS`).
pub fn rss_mb() -> Option<f64> {
    status_kb("VmRSS:").map(|kb| kb / 1024.0)
}

fn status_kb(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Bytes received and sent through this machine's network interfaces so far, loopback included
/// (the sums of `/proc/net/dev`). Socket traffic is not in `/proc/self/io` (it counts `read` and
/// `write`, and sockets go through `recv` and `send`), so this is how a bench sees what it
/// exchanged with its shard servers; on loopback every byte is counted once received and once
/// sent, and other traffic of the machine counts too.
pub fn io_bytes() -> Option<(u64, u64)> {
    let dev = std::fs::read_to_string("/proc/net/dev").ok()?;
    let (mut received, mut sent) = (0u64, 0u64);
    for line in dev.lines().skip(2) {
        let (_, counters) = line.split_once(':')?;
        let fields: Vec<u64> = counters
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        received += fields.first()?;
        sent += fields.get(8)?;
    }
    Some((received, sent))
}

/// Hands the memory the allocator holds free back to the kernel, so that resident memory falls
/// once a large session is dropped (a cancelled 1M-token prefill, a finished bench row).
///
/// The command and the examples run on mimalloc (see [`crate::cli`]). It keeps a freed page in
/// the heap of the thread that allocated it, and returns it to the kernel only when that thread
/// next allocates or frees; the chunk batches' caches are allocated on rayon's workers, which sit
/// idle after a cancel, so their memory would stay resident. Every worker and this thread collect
/// their heaps here. Under another allocator this does nothing (mimalloc's heaps are empty).
pub fn release_free_memory() {
    // SAFETY: `mi_collect` has no preconditions; it walks the calling thread's own heap.
    rayon::broadcast(|_| unsafe { libmimalloc_sys::mi_collect(true) });
    // SAFETY: as above.
    unsafe { libmimalloc_sys::mi_collect(true) };
}
