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
