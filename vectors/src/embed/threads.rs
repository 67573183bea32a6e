//! The threads the local model runs on: a pool of its own at the lowest
//! CPU priority (niceness 19), so embedding takes only the CPU the command
//! service, the relational projection and the query API leave. Under a
//! burst the vector projection falls behind (its lag and backlog are
//! gauged and alerted on) instead of slowing every other path; it catches
//! up when the burst ends.
//!
//! The model's matrix products (gemm) and element-wise kernels run on the
//! rayon pool they are called from, so running the model inside this pool
//! is enough; nothing else in the process uses it.

use std::sync::OnceLock;

use rayon::{ThreadPool, ThreadPoolBuilder};

/// The embedding pool: one thread per core (they yield to everything else).
pub fn pool() -> &'static ThreadPool {
    static POOL: OnceLock<ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let built = ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("embedder-{i}"))
            .start_handler(|_| {
                // Lowering one's own priority needs no privilege; if the
                // platform refuses, the thread runs at normal priority.
                if let Err(error) = thread_priority::set_current_thread_priority(
                    thread_priority::ThreadPriority::Min,
                ) {
                    tracing::warn!(?error, "cannot lower the embedder thread's priority");
                }
            })
            .build();
        match built {
            Ok(pool) => pool,
            Err(error) => {
                // Only if no thread can be started at all; a pool of one
                // then, as the model needs one to run.
                tracing::error!(%error, "cannot start the embedder's threads");
                ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap_or_else(|e| panic!("no thread can be started: {e}"))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    /// The niceness of the calling thread, from /proc (Linux).
    fn niceness() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        // Fields after the command name (which may hold spaces): state is
        // field 3, niceness field 19.
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        after
            .split(' ')
            .nth(16)
            .and_then(|n| n.parse().ok())
            .expect("niceness")
    }

    #[test]
    fn the_model_runs_on_threads_of_the_lowest_priority() {
        assert_eq!(niceness(), 0, "the test's own thread is not lowered");
        let (nice, name) = super::pool()
            .install(|| (niceness(), std::thread::current().name().map(str::to_owned)));
        assert_eq!(nice, 19);
        assert!(name.is_some_and(|n| n.starts_with("embedder-")));
        // Work the pool splits runs on its threads too.
        let all: Vec<i64> = super::pool().install(|| {
            use rayon::prelude::*;
            (0..64).into_par_iter().map(|_| niceness()).collect()
        });
        assert!(all.iter().all(|n| *n == 19), "{all:?}");
        assert_eq!(niceness(), 0);
    }
}
