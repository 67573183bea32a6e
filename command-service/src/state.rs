//! What an instance keeps per aggregate between commands: a turn (so
//! commands for one aggregate do not race each other) and its last state.

use uuid::Uuid;

use domain::Aggregate;

/// One async mutex per aggregate with commands in flight.
#[derive(Default)]
pub(crate) struct AggregateLocks {
    locks:
        std::sync::Mutex<std::collections::HashMap<Uuid, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

pub(crate) struct Turn<'a> {
    id: Uuid,
    owner: &'a AggregateLocks,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl AggregateLocks {
    pub(crate) async fn lock(&self, id: Uuid) -> Turn<'_> {
        let lock = match self.locks.lock() {
            Ok(mut map) => std::sync::Arc::clone(map.entry(id).or_default()),
            Err(poisoned) => std::sync::Arc::clone(poisoned.into_inner().entry(id).or_default()),
        };
        Turn {
            id,
            owner: self,
            guard: Some(lock.lock_owned().await),
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        if let Ok(mut map) = self.owner.locks.lock() {
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
