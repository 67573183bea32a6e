//! The projection trait, and the SQL projections by name with their
//! schemas and DDL.

use std::future::Future;

use chrono::Utc;
use eventstore::{Position, RecordedEvent};
use sqlx::PgConnection;

use crate::audit::Audit;
use crate::batch::{Outcome, PoisonPolicy};
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

/// How a projection's writes relate to its checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written in the checkpoint's transaction: each event takes effect
    /// exactly once.
    ExactlyOnce,
    /// Written before the checkpoint's transaction begins (a sink outside
    /// PostgreSQL, keyed by event): a batch may be written again after a
    /// crash, with the same result.
    AtLeastOnce,
}

/// A read model the log is applied to, one batch at a time.
///
/// Every projection, the SQL ones and the sinks outside PostgreSQL alike,
/// is driven through [`crate::batch::run_once`] (lock the checkpoint, apply
/// the batch, save the checkpoint, commit) by [`Projection::step`]: the
/// live loop, `replay`'s catch-up and a blue/green rebuild all take that
/// one step.
pub trait Projection: Send {
    /// What the step returns on failure.
    type Error: From<ProjectionError> + std::fmt::Display + Send;

    const DELIVERY: Delivery;

    /// The name its lease, metrics and logs go by.
    fn name(&self) -> &'static str;

    /// Applies `events`. For [`Delivery::ExactlyOnce`], `conn` is in the
    /// transaction that holds the checkpoint's lock and moves it; for
    /// [`Delivery::AtLeastOnce`] it is in no transaction (the sink writes
    /// elsewhere, and a transaction held open meanwhile would hold back
    /// every subscriber of the log).
    fn apply(
        &mut self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Forgets what it remembers of what it wrote: after a batch that did
    /// not commit, or when someone else may have written.
    fn reset(&mut self) {}

    /// Applies `events` after `expected` and moves checkpoint `checkpoint`
    /// past them ([`crate::batch::run_once`]). The SQL projections also
    /// park a poison event here, by their policy.
    fn step(
        &mut self,
        conn: &mut PgConnection,
        checkpoint: &str,
        expected: Position,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<Outcome, Self::Error>> + Send
    where
        Self: Sized,
    {
        async move {
            crate::batch::run_once(conn, self, checkpoint, expected, events)
                .await
                .map(Outcome::Applied)
        }
    }
}

/// A SQL projection's writer, the schema it writes and what it remembers
/// between batches.
pub struct SqlProjection {
    kind: Kind,
    schema: String,
    policy: PoisonPolicy,
    relational: Relational,
    audit: Audit,
}

impl SqlProjection {
    /// A writer of `kind` into `schema`, parking poison events by `policy`.
    pub fn new(kind: Kind, schema: &str, policy: PoisonPolicy) -> Self {
        SqlProjection {
            kind,
            schema: schema.to_string(),
            policy,
            relational: Relational::default(),
            audit: Audit::default(),
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
}

impl Projection for SqlProjection {
    type Error = ProjectionError;

    const DELIVERY: Delivery = Delivery::ExactlyOnce;

    fn name(&self) -> &'static str {
        self.kind.name()
    }

    async fn apply(
        &mut self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let mut decoded: Vec<(&RecordedEvent, DomainEvent)> = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            let typed =
                decode(event).map_err(|reason| ProjectionError::Poison { index, reason })?;
            decoded.push((event, typed));
        }
        match self.kind {
            Kind::Relational => self.relational.apply(conn, &self.schema, &decoded).await,
            Kind::Audit => {
                self.audit
                    .apply(conn, &self.schema, &decoded, Utc::now())
                    .await
            }
        }
    }

    fn reset(&mut self) {
        self.relational.reset();
        self.audit.reset();
    }

    async fn step(
        &mut self,
        conn: &mut PgConnection,
        checkpoint: &str,
        expected: Position,
        events: &[RecordedEvent],
    ) -> Result<Outcome, ProjectionError> {
        let policy = self.policy;
        crate::batch::project(conn, self, checkpoint, expected, events, policy).await
    }
}
