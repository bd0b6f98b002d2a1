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

/// How long mimalloc keeps freed memory before handing it back to the kernel, unless
/// `MIMALLOC_PURGE_DELAY` says otherwise: a minute rather than its default second.
///
/// A prefill frees and allocates the same large buffers layer after layer (a chunk batch's
/// activations, tens of MiB). With a second's delay, the buffers free at each purge went back to
/// the kernel and came back as fresh pages, which the kernel clears: 5-7% of a FocusLLM prefill's
/// cycles with bf16 products. [`release_free_memory`] still hands everything back at once (a
/// forced collection ignores the delay).
pub const PURGE_DELAY_MS: std::ffi::c_long = 60_000;

/// Sets mimalloc's purge delay to [`PURGE_DELAY_MS`] unless the environment sets it. Call it
/// first thing in `main`, before other threads allocate.
pub fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option has no preconditions; the option is read at each purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

/// `mi_option_purge_delay` in the mimalloc (v3) that `libmimalloc-sys` builds: the crate's own
/// constants follow v2's numbering, where this index is another option.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[cfg(test)]
mod tests {
    /// [`super::MI_OPTION_PURGE_DELAY`] is mimalloc's purge delay: unset (no test here sets it),
    /// it reads the environment's value or the option's default, 1000 ms (no neighbouring option
    /// defaults to that).
    #[test]
    fn the_purge_delay_index_names_the_purge_delay() {
        let want: std::ffi::c_long = std::env::var("MIMALLOC_PURGE_DELAY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        // SAFETY: reading an option has no preconditions.
        let got = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(got, want);
    }
}
