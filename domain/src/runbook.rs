//! A runbook: the known remedy for a class of incidents, versioned, with
//! its execution record.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::values::{Name, Tags, Text};
use crate::{Aggregate, Context, DomainError};

pub struct Runbook;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Create {
    pub name: Name,
    pub description: Text,
    pub trigger_conditions: Value,
    pub steps: Vec<Text>,
    #[serde(default)]
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    pub name: Option<Name>,
    pub description: Option<Text>,
    pub trigger_conditions: Option<Value>,
    pub steps: Option<Vec<Text>>,
    pub tags: Option<Tags>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordExecution {
    pub succeeded: bool,
    pub duration_ms: u64,
}

pub use crate::Empty;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Create(Create),
    Update(Update),
    RecordExecution(RecordExecution),
    Archive(Empty),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Created {
    pub name: String,
    pub description: String,
    pub trigger_conditions: Value,
    pub steps: Vec<String>,
    pub tags: Vec<String>,
    pub version: u32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Updated {
    pub version: u32,
    pub name: Option<String>,
    pub description: Option<String>,
    pub trigger_conditions: Option<Value>,
    pub steps: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecorded {
    pub succeeded: bool,
    pub duration_ms: u64,
    /// Totals after this execution.
    pub execution_count: u64,
    pub success_count: u64,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Archived {
    pub at: DateTime<Utc>,
}

events! {
    /// What happens to a runbook.
    Event {
        Created(Created) = "runbook_created" v 1,
        Updated(Updated) = "runbook_updated" v 1,
        ExecutionRecorded(ExecutionRecorded) = "runbook_execution_recorded" v 1,
        Archived(Archived) = "runbook_archived" v 1,
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct State {
    pub exists: bool,
    pub archived: bool,
    pub version: u32,
    pub execution_count: u64,
    pub success_count: u64,
}

/// A runbook run longer than a day is a mistake in the report.
const MAX_DURATION_MS: u64 = 24 * 60 * 60 * 1000;

impl Aggregate for Runbook {
    const STREAM_TYPE: &'static str = "runbook";
    type State = State;
    type Command = Command;
    type Event = Event;

    fn decide(state: &State, command: Command, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        ctx.actor.require_writer()?;
        if !state.exists {
            let Command::Create(c) = command else {
                return Err(DomainError::NotFound("runbook"));
            };
            if c.steps.is_empty() {
                return Err(DomainError::invalid(
                    "steps",
                    "a runbook needs at least one step",
                ));
            }
            return Ok(vec![Event::Created(Created {
                name: c.name.into_inner(),
                description: c.description.into_inner(),
                trigger_conditions: c.trigger_conditions,
                steps: c.steps.into_iter().map(Text::into_inner).collect(),
                tags: c.tags.iter().map(str::to_string).collect(),
                version: 1,
                created_at: ctx.now,
            })]);
        }
        if state.archived {
            return Err(DomainError::rejected(
                "runbook_archived",
                "the runbook is archived",
            ));
        }
        match command {
            Command::Create(_) => Err(DomainError::rejected(
                "already_exists",
                "the runbook already exists",
            )),
            Command::Update(u) => {
                if u.name.is_none()
                    && u.description.is_none()
                    && u.trigger_conditions.is_none()
                    && u.steps.is_none()
                    && u.tags.is_none()
                {
                    return Err(DomainError::rejected(
                        "nothing_to_update",
                        "the update changes nothing",
                    ));
                }
                if u.steps.as_ref().is_some_and(Vec::is_empty) {
                    return Err(DomainError::invalid(
                        "steps",
                        "a runbook needs at least one step",
                    ));
                }
                Ok(vec![Event::Updated(Updated {
                    version: state.version + 1,
                    name: u.name.map(Name::into_inner),
                    description: u.description.map(Text::into_inner),
                    trigger_conditions: u.trigger_conditions,
                    steps: u
                        .steps
                        .map(|s| s.into_iter().map(Text::into_inner).collect()),
                    tags: u.tags.map(|t| t.iter().map(str::to_string).collect()),
                    updated_at: ctx.now,
                })])
            }
            Command::RecordExecution(r) => {
                if r.duration_ms > MAX_DURATION_MS {
                    return Err(DomainError::invalid(
                        "duration_ms",
                        "must be at most one day",
                    ));
                }
                Ok(vec![Event::ExecutionRecorded(ExecutionRecorded {
                    succeeded: r.succeeded,
                    duration_ms: r.duration_ms,
                    execution_count: state.execution_count + 1,
                    success_count: state.success_count + u64::from(r.succeeded),
                    recorded_at: ctx.now,
                })])
            }
            Command::Archive(_) => Ok(vec![Event::Archived(Archived { at: ctx.now })]),
        }
    }

    fn evolve(mut state: State, event: &Event) -> State {
        match event {
            Event::Created(e) => {
                state.exists = true;
                state.version = e.version;
            }
            Event::Updated(e) => state.version = e.version,
            Event::ExecutionRecorded(e) => {
                state.execution_count = e.execution_count;
                state.success_count = e.success_count;
            }
            Event::Archived(_) => state.archived = true,
        }
        state
    }
}
