//! The local model's worker threads run at the lowest CPU priority
//! (niceness 19): embedding then takes only the CPU that the command
//! service, the relational and Redis projections and the query API leave.
//! Under load the vector projection falls behind (its lag and backlog are
//! gauged and alerted on) instead of slowing every other path, and it
//! catches up when the load ends. The workers are started for each call,
//! so lowering them touches no thread anything else runs on.

/// Lowers the calling thread to the lowest priority. Lowering one's own
/// priority needs no privilege; where the platform refuses, the thread
/// keeps its priority and a warning says so.
pub fn lower_this_thread() {
    if let Err(error) =
        thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
    {
        tracing::warn!(?error, "cannot lower an embedding thread's priority");
    }
}

#[cfg(test)]
mod tests {
    /// The niceness of the calling thread, from /proc (Linux).
    fn niceness() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        // After the command name (which may hold spaces): state is field
        // 3, niceness field 19.
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        after
            .split(' ')
            .nth(16)
            .and_then(|n| n.parse().ok())
            .expect("niceness")
    }

    #[test]
    fn a_lowered_thread_runs_at_the_lowest_priority_and_no_other_does() {
        assert_eq!(niceness(), 0, "the test's own thread is not lowered");
        let lowered = std::thread::spawn(|| {
            super::lower_this_thread();
            niceness()
        })
        .join()
        .expect("thread");
        assert_eq!(lowered, 19);
        assert_eq!(niceness(), 0, "only the thread that asked");
    }
}
