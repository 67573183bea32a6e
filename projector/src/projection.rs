//! The SQL projections by name, with their schemas and DDL.

use chrono::{DateTime, Utc};
use eventstore::RecordedEvent;
use sqlx::PgConnection;

use crate::audit::Audit;
use crate::events::{decode, DomainEvent};
use crate::relational::Relational;
use crate::tables::{AUDIT_LOGS, RELATIONAL};
use crate::ProjectionError;

/// The schemas the projector builds, one file per version (see the file's
/// header); only the current version is kept.
const RELATIONAL_DDL: &str = include_str!("../schema/relational_v4.sql");
const AUDIT_DDL: &str = include_str!("../schema/audit_v1.sql");
const DEFERRED_INDEXES: &str = "-- @deferred-indexes";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Relational,
    Audit,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Relational, Kind::Audit];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Relational => "relational",
            Kind::Audit => "audit",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The schema the live projection writes and dashboards read.
    pub fn live_schema(self) -> &'static str {
        match self {
            Kind::Relational => "read_model",
            Kind::Audit => "audit",
        }
    }

    /// The version of the schema this code writes; a live schema of an
    /// older version is rebuilt blue/green before it is written to.
    pub fn schema_version(self) -> i32 {
        match self {
            Kind::Relational => 4,
            Kind::Audit => 1,
        }
    }

    /// The schema-relative DDL, without the secondary indexes.
    pub fn ddl_tables(self) -> &'static str {
        let ddl = self.ddl();
        ddl.split_once(DEFERRED_INDEXES)
            .map_or(ddl, |(tables, _)| tables)
    }

    /// The secondary indexes, created after a rebuild has loaded its rows.
    pub fn ddl_indexes(self) -> &'static str {
        self.ddl()
            .split_once(DEFERRED_INDEXES)
            .map_or("", |(_, indexes)| indexes)
    }

    fn ddl(self) -> &'static str {
        match self {
            Kind::Relational => RELATIONAL_DDL,
            Kind::Audit => AUDIT_DDL,
        }
    }

    /// The tables `verify` compares.
    pub fn tables(self) -> Vec<&'static str> {
        match self {
            Kind::Relational => RELATIONAL.iter().map(|t| t.name).collect(),
            Kind::Audit => vec![AUDIT_LOGS.name],
        }
    }
}

/// One projection's writer and what it remembers between batches.
pub struct Projection {
    kind: Kind,
    relational: Relational,
    audit: Audit,
}

impl Projection {
    pub fn new(kind: Kind) -> Self {
        Projection {
            kind,
            relational: Relational::default(),
            audit: Audit::default(),
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Forgets what it remembers of its tables: after a rollback, or when
    /// someone else may have written them.
    pub fn reset(&mut self) {
        self.relational.reset();
        self.audit.reset();
    }

    /// Applies `events` to the tables in `schema`, in the caller's
    /// transaction.
    pub async fn apply(
        &mut self,
        conn: &mut PgConnection,
        schema: &str,
        events: &[RecordedEvent],
        now: DateTime<Utc>,
    ) -> Result<(), ProjectionError> {
        let mut decoded: Vec<(&RecordedEvent, DomainEvent)> = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            let typed =
                decode(event).map_err(|reason| ProjectionError::Poison { index, reason })?;
            decoded.push((event, typed));
        }
        match self.kind {
            Kind::Relational => self.relational.apply(conn, schema, &decoded).await,
            Kind::Audit => self.audit.apply(conn, schema, &decoded, now).await,
        }
    }
}
