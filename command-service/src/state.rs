//! What an instance keeps per aggregate between commands: a turn (so
//! commands for one aggregate do not race each other) and its last state.

use uuid::Uuid;

use domain::Aggregate;

type LockMap = std::collections::HashMap<Uuid, std::sync::Arc<tokio::sync::Mutex<()>>>;

/// One async mutex per aggregate with commands in flight.
#[derive(Default)]
pub(crate) struct AggregateLocks {
    locks: std::sync::Arc<std::sync::Mutex<LockMap>>,
}

/// An aggregate's turn, held until it is dropped. It owns what it needs, so
/// a command waiting in the request/reply lane's batch can hold it.
pub(crate) struct Turn {
    id: Uuid,
    owner: std::sync::Arc<std::sync::Mutex<LockMap>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl AggregateLocks {
    fn mutex(&self, id: Uuid) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        match self.locks.lock() {
            Ok(mut map) => std::sync::Arc::clone(map.entry(id).or_default()),
            Err(poisoned) => std::sync::Arc::clone(poisoned.into_inner().entry(id).or_default()),
        }
    }

    pub(crate) async fn lock(&self, id: Uuid) -> Turn {
        let guard = self.mutex(id).lock_owned().await;
        Turn {
            id,
            owner: std::sync::Arc::clone(&self.locks),
            guard: Some(guard),
        }
    }

    /// The turn if nobody holds or waits for it now. (A mutex found held
    /// stays in the map: whoever holds it forgets it when done.)
    pub(crate) fn try_lock(&self, id: Uuid) -> Option<Turn> {
        let guard = self.mutex(id).try_lock_owned().ok()?;
        Some(Turn {
            id,
            owner: std::sync::Arc::clone(&self.locks),
            guard: Some(guard),
        })
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.guard.take());
        if let Ok(mut map) = self.owner.lock() {
            // Forget the mutex when nobody else holds or waits for it.
            if map
                .get(&self.id)
                .is_some_and(|m| std::sync::Arc::strong_count(m) == 1)
            {
                map.remove(&self.id);
            }
        }
    }
}

/// Recently used aggregate states, so a command does not re-read a long
/// stream: it reads only what was appended after the cached version. The
/// log stays the truth; the cache only saves reading it again.
type CachedState = (Box<dyn std::any::Any + Send + Sync>, u64);

#[derive(Default)]
pub(crate) struct StateCache {
    entries: std::sync::Mutex<std::collections::HashMap<Uuid, CachedState>>,
}

/// Aggregates kept; past it the cache starts again (cheap, and rare).
const CACHE_CAPACITY: usize = 50_000;

impl StateCache {
    /// Takes the cached state out (no copy of a long state per command):
    /// the caller holds the aggregate's turn and puts the next state back.
    /// A state not put back is read from the store next time.
    pub(crate) fn take<A: Aggregate>(&self, id: Uuid) -> Option<(A::State, u64)>
    where
        A::State: Send + Sync + 'static,
    {
        let mut entries = self.entries.lock().ok()?;
        let (state, version) = entries.remove(&id)?;
        state.downcast::<A::State>().ok().map(|s| (*s, version))
    }

    pub(crate) fn put<A: Aggregate>(&self, id: Uuid, state: A::State, version: u64)
    where
        A::State: Send + Sync + 'static,
    {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CACHE_CAPACITY && !entries.contains_key(&id) {
                entries.clear();
            }
            entries.insert(id, (Box::new(state), version));
        }
    }
}

/// Streams are snapshotted every this many events while they are short.
pub(crate) const SNAPSHOT_EVERY: u64 = 100;

/// Events between snapshots of a stream at `version`: [`SNAPSHOT_EVERY`]
/// up to 16 of those, then doubling each time the stream doubles (between a
/// sixteenth and an eighth of its length). A state can grow with its stream
/// (a conversation keeps every message id), and a fixed interval would
/// write (and compress) a stream of n events n/100 times in full: quadratic.
/// This keeps the bytes written per event bounded, while a load still reads
/// at most an eighth of the stream after its snapshot.
pub(crate) fn snapshot_interval(version: u64) -> u64 {
    let rounds = version / (SNAPSHOT_EVERY * 16);
    if rounds == 0 {
        SNAPSHOT_EVERY
    } else {
        // 16·E·2^k <= version < 16·E·2^(k+1) gives E·2^(k+1); each
        // boundary is a multiple of the intervals on both sides of it.
        SNAPSHOT_EVERY << (u64::BITS - rounds.leading_zeros())
    }
}

/// Whether an append that wrote versions `first..=last` is due a snapshot
/// (it reached a multiple of the interval at `last`).
pub(crate) fn snapshot_due(first: u64, last: u64) -> bool {
    let every = snapshot_interval(last);
    first != 0 && first <= last && (first - 1) / every != last / every
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshots_up_to(end: u64, per_append: u64) -> Vec<u64> {
        let mut taken = Vec::new();
        let mut first = 1;
        while first <= end {
            let last = first + per_append - 1;
            if snapshot_due(first, last) {
                taken.push(last);
            }
            first = last + 1;
        }
        taken
    }

    #[test]
    fn short_streams_are_snapshotted_every_hundred_events() {
        let taken = snapshots_up_to(1_600, 1);
        assert_eq!(taken.len(), 16);
        assert_eq!(taken[..3], [100, 200, 300]);
        assert_eq!(*taken.last().unwrap_or(&0), 1_600);
        assert!(!snapshot_due(1, 99));
        assert!(snapshot_due(95, 104));
        assert!(!snapshot_due(0, 0));
    }

    #[test]
    fn long_streams_are_snapshotted_less_often_but_never_far_behind() {
        let taken = snapshots_up_to(200_000, 1);
        // Quadratic at a fixed interval: 2,000 snapshots of up to the whole
        // stream. Here the count grows with the logarithm of the length.
        assert!(taken.len() < 150, "{} snapshots", taken.len());
        let mut previous = 0;
        for &version in &taken {
            let gap = version - previous;
            assert!(
                gap <= SNAPSHOT_EVERY.max(version / 8),
                "gap {gap} before {version}"
            );
            previous = version;
        }
        assert_eq!(snapshot_interval(1_599), 100);
        assert_eq!(snapshot_interval(1_600), 200);
        assert_eq!(snapshot_interval(3_199), 200);
        assert_eq!(snapshot_interval(3_200), 400);
        assert_eq!(snapshot_interval(6_400), 800);
    }

    #[test]
    fn appends_of_many_events_still_take_their_snapshot() {
        for per_append in [3, 7, 50, 250] {
            let taken = snapshots_up_to(10_000, per_append);
            assert!(taken.len() >= 20, "{per_append}: {taken:?}");
            for pair in taken.windows(2) {
                assert!(pair[1] - pair[0] <= snapshot_interval(pair[1]) + per_append);
            }
        }
    }
}
