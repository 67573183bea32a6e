use std::fmt;

/// The seed's four collections. Every one uses cosine distance and the same
/// embedder, so one dimension holds for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Collection {
    /// Indexed code units.
    Code,
    /// Indexed documents and runbooks.
    Documentation,
    /// Conversation messages; searchable by their owner only.
    Conversations,
    /// Resolved incidents: what happened, why, and what fixed it.
    IncidentKnowledge,
}

impl Collection {
    pub const ALL: [Collection; 4] = [
        Collection::Code,
        Collection::Documentation,
        Collection::Conversations,
        Collection::IncidentKnowledge,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Collection::Code => "code",
            Collection::Documentation => "documentation",
            Collection::Conversations => "conversations",
            Collection::IncidentKnowledge => "incident_knowledge",
        }
    }

    pub fn parse(name: &str) -> Option<Collection> {
        Collection::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Payload fields the query service filters by, indexed as keywords.
    pub fn indexed_fields(self) -> &'static [&'static str] {
        match self {
            Collection::Code => &["project_id", "language", "kind"],
            Collection::Documentation => &["kind", "source_id"],
            Collection::Conversations => &["owner_user_id", "conversation_id", "role"],
            Collection::IncidentKnowledge => &["severity", "services"],
        }
    }
}

impl fmt::Display for Collection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Collection {
    /// Where the collection's vectors live. The seed keeps conversation
    /// history, the largest and least often searched, on disk (memory-mapped)
    /// and the other three in memory.
    pub fn on_disk(self) -> bool {
        matches!(self, Collection::Conversations)
    }
}

/// The seed's optimiser settings, converted to the units both engines take
/// (segment sizes in KB of vectors, so they depend on the dimension).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerSettings {
    /// Fraction of deleted points in a segment that triggers a vacuum.
    pub deleted_threshold: f64,
    pub max_segment_size_kb: u64,
    /// Segments smaller than this are searched exhaustively, not indexed.
    pub indexing_threshold_kb: u64,
    /// How often the server flushes to disk. Qdrant Edge has no background
    /// flusher: the projector flushes it after every batch instead.
    pub flush_interval_sec: u64,
}

/// The seed's figures, in points.
const SEED_DELETED_THRESHOLD: f64 = 0.2;
const SEED_MAX_SEGMENT_POINTS: u64 = 200_000;
const SEED_INDEXING_THRESHOLD_POINTS: u64 = 20_000;
const SEED_FLUSH_INTERVAL_SEC: u64 = 5;

impl OptimizerSettings {
    pub fn seed(dimension: usize) -> OptimizerSettings {
        // f32 components: 4 bytes each.
        let kb = |points: u64| (points * dimension as u64 * 4).div_ceil(1024);
        OptimizerSettings {
            deleted_threshold: SEED_DELETED_THRESHOLD,
            max_segment_size_kb: kb(SEED_MAX_SEGMENT_POINTS),
            indexing_threshold_kb: kb(SEED_INDEXING_THRESHOLD_POINTS),
            flush_interval_sec: SEED_FLUSH_INTERVAL_SEC,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_settings_are_the_seed_figures_in_kilobytes() {
        let s = OptimizerSettings::seed(384);
        assert_eq!(s.max_segment_size_kb, 300_000);
        assert_eq!(s.indexing_threshold_kb, 30_000);
        assert_eq!(s.deleted_threshold, 0.2);
        assert_eq!(s.flush_interval_sec, 5);
        let on_disk: Vec<_> = Collection::ALL
            .into_iter()
            .filter(|c| c.on_disk())
            .collect();
        assert_eq!(on_disk, [Collection::Conversations]);
    }
}
