//! A workflow definition: versioned, activated before it can run.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::values::{Environment, Name, Tags, Text, WorkflowStatus};
use crate::{Aggregate, Context, DomainError};

pub struct Workflow;

/// Retries of a failed step when the definition does not say (`max_retries`).
pub const DEFAULT_MAX_RETRIES: u32 = 3;
const MAX_RETRIES_LIMIT: u32 = 10;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Create {
    pub name: Name,
    pub description: Option<Text>,
    pub definition: Value,
    pub triggers: Option<Value>,
    pub parameters: Option<Value>,
    #[serde(default)]
    pub tags: Tags,
    pub environment: Option<Environment>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    pub description: Option<Text>,
    pub definition: Option<Value>,
    pub triggers: Option<Value>,
    pub parameters: Option<Value>,
    pub tags: Option<Tags>,
    pub environment: Option<Environment>,
}

pub use crate::Empty;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Create(Create),
    Update(Update),
    Activate(Empty),
    Deactivate(Empty),
    Delete(Empty),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Created {
    pub name: String,
    pub description: Option<String>,
    pub definition: Value,
    pub triggers: Option<Value>,
    pub parameters: Option<Value>,
    pub tags: Vec<String>,
    /// Absent in events written before workflows had environments.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    pub version: u32,
    pub max_retries: u32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Updated {
    pub version: u32,
    pub description: Option<String>,
    pub definition: Option<Value>,
    pub triggers: Option<Value>,
    pub parameters: Option<Value>,
    pub tags: Option<Vec<String>>,
    /// The whole new environment, when the update sets it.
    #[serde(default)]
    pub environment: Option<BTreeMap<String, String>>,
    pub max_retries: u32,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusChanged {
    pub from: WorkflowStatus,
    pub to: WorkflowStatus,
    pub at: DateTime<Utc>,
}

events! {
    /// What happens to a workflow definition.
    Event {
        Created(Created) = "workflow_created" v 2,
        Updated(Updated) = "workflow_updated" v 1,
        Activated(StatusChanged) = "workflow_activated" v 1,
        Deactivated(StatusChanged) = "workflow_deactivated" v 1,
        Deleted(StatusChanged) = "workflow_deleted" v 1,
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct State {
    pub status: Option<WorkflowStatus>,
    pub version: u32,
    pub max_retries: u32,
}

/// A definition is a JSON object; its optional `max_retries` bounds step retries.
fn retries_of(definition: &Value) -> Result<u32, DomainError> {
    let object = definition
        .as_object()
        .ok_or_else(|| DomainError::invalid("definition", "must be an object"))?;
    match object.get("max_retries") {
        None => Ok(DEFAULT_MAX_RETRIES),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n <= MAX_RETRIES_LIMIT)
            .ok_or_else(|| {
                DomainError::invalid(
                    "definition.max_retries",
                    format!("must be an integer from 0 to {MAX_RETRIES_LIMIT}"),
                )
            }),
    }
}

impl Aggregate for Workflow {
    const STREAM_TYPE: &'static str = "workflow";
    type State = State;
    type Command = Command;
    type Event = Event;

    fn decide(state: &State, command: Command, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        ctx.actor.require_writer()?;
        use WorkflowStatus as S;
        let Some(status) = state.status else {
            let Command::Create(c) = command else {
                return Err(DomainError::NotFound("workflow"));
            };
            let max_retries = retries_of(&c.definition)?;
            return Ok(vec![Event::Created(Created {
                name: c.name.into_inner(),
                description: c.description.map(Text::into_inner),
                definition: c.definition,
                triggers: c.triggers,
                parameters: c.parameters,
                tags: c.tags.iter().map(str::to_string).collect(),
                environment: c
                    .environment
                    .map(Environment::into_inner)
                    .unwrap_or_default(),
                version: 1,
                max_retries,
                created_at: ctx.now,
            })]);
        };
        if status == S::Deleted {
            return Err(DomainError::rejected(
                "workflow_deleted",
                "the workflow is deleted",
            ));
        }
        let change = |to: WorkflowStatus| StatusChanged {
            from: status,
            to,
            at: ctx.now,
        };
        match command {
            Command::Create(_) => Err(DomainError::rejected(
                "already_exists",
                "the workflow already exists",
            )),
            Command::Update(u) => {
                if u.description.is_none()
                    && u.definition.is_none()
                    && u.triggers.is_none()
                    && u.parameters.is_none()
                    && u.tags.is_none()
                    && u.environment.is_none()
                {
                    return Err(DomainError::rejected(
                        "nothing_to_update",
                        "the update changes nothing",
                    ));
                }
                let max_retries = match &u.definition {
                    Some(d) => retries_of(d)?,
                    None => state.max_retries,
                };
                Ok(vec![Event::Updated(Updated {
                    version: state.version + 1,
                    description: u.description.map(Text::into_inner),
                    definition: u.definition,
                    triggers: u.triggers,
                    parameters: u.parameters,
                    tags: u.tags.map(|t| t.iter().map(str::to_string).collect()),
                    environment: u.environment.map(Environment::into_inner),
                    max_retries,
                    updated_at: ctx.now,
                })])
            }
            Command::Activate(_) => match status {
                S::Active => Err(DomainError::rejected(
                    "workflow_already_active",
                    "the workflow is already active",
                )),
                _ => Ok(vec![Event::Activated(change(S::Active))]),
            },
            Command::Deactivate(_) => match status {
                S::Active => Ok(vec![Event::Deactivated(change(S::Inactive))]),
                _ => Err(DomainError::rejected(
                    "workflow_not_active",
                    "the workflow is not active",
                )),
            },
            Command::Delete(_) => Ok(vec![Event::Deleted(change(S::Deleted))]),
        }
    }

    fn evolve(mut state: State, event: &Event) -> State {
        match event {
            Event::Created(e) => {
                state.status = Some(WorkflowStatus::Draft);
                state.version = e.version;
                state.max_retries = e.max_retries;
            }
            Event::Updated(e) => {
                state.version = e.version;
                state.max_retries = e.max_retries;
            }
            Event::Activated(e) | Event::Deactivated(e) | Event::Deleted(e) => {
                state.status = Some(e.to)
            }
        }
        state
    }
}
