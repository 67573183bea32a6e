//! A run of a workflow, with its steps.
//!
//! Steps: pending → running → succeeded | failed; a failed, retryable step
//! may be retried (back to running) while its attempts stay within the
//! workflow's `max_retries`. A finished run (succeeded, failed, cancelled)
//! accepts nothing more.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{StepId, WorkflowId};
use crate::values::{ExecutionStatus, Label, Name, StepStatus, Text, WorkflowStatus};
use crate::{millis_between, Aggregate, Context, DomainError};

pub struct Execution;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    pub workflow_id: WorkflowId,
    pub trigger_source: Label,
    pub inputs: Option<Value>,
    pub priority: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartStep {
    pub step_id: StepId,
    pub name: Name,
    pub input: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteStep {
    pub step_id: StepId,
    pub output: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailStep {
    pub step_id: StepId,
    pub error: Text,
    pub retryable: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryStep {
    pub step_id: StepId,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Complete {
    pub outputs: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fail {
    pub error: Text,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    pub reason: Text,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Start(Start),
    StartStep(StartStep),
    CompleteStep(CompleteStep),
    FailStep(FailStep),
    RetryStep(RetryStep),
    Complete(Complete),
    Fail(Fail),
    Cancel(Cancel),
}

/// Default and bounds of a run's priority (higher runs first).
pub const DEFAULT_PRIORITY: u8 = 5;
const MAX_PRIORITY: u8 = 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub workflow_id: WorkflowId,
    pub workflow_version: u32,
    pub trigger_source: String,
    pub inputs: Option<Value>,
    pub priority: u8,
    pub max_retries: u32,
    pub started_by: Option<crate::ids::UserId>,
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStarted {
    pub step_id: StepId,
    pub name: String,
    pub input: Option<Value>,
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepCompleted {
    pub step_id: StepId,
    pub output: Option<Value>,
    pub attempt: u32,
    pub duration_ms: u64,
    pub completed_at: DateTime<Utc>,
    /// Steps of the run that have succeeded, this one included.
    pub steps_succeeded: u32,
    pub steps_total: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepFailed {
    pub step_id: StepId,
    pub error: String,
    pub retryable: bool,
    pub attempt: u32,
    pub duration_ms: u64,
    pub failed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRetried {
    pub step_id: StepId,
    pub name: String,
    /// The attempt now starting (2 for the first retry).
    pub attempt: u32,
    pub priority: u8,
    pub retried_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finished {
    pub status: ExecutionStatus,
    pub outputs: Option<Value>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub finished_at: DateTime<Utc>,
}

events! {
    /// What happens to a workflow run.
    Event {
        Started(Started) = "execution_started" v 1,
        StepStarted(StepStarted) = "step_started" v 1,
        StepCompleted(StepCompleted) = "step_completed" v 1,
        StepFailed(StepFailed) = "step_failed" v 1,
        StepRetried(StepRetried) = "step_retried" v 1,
        Completed(Finished) = "execution_completed" v 1,
        Failed(Finished) = "execution_failed" v 1,
        Cancelled(Finished) = "execution_cancelled" v 1,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub name: String,
    pub status: StepStatus,
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub retryable: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct State {
    pub status: Option<ExecutionStatus>,
    pub started_at: Option<DateTime<Utc>>,
    pub max_retries: u32,
    pub priority: u8,
    pub steps: BTreeMap<StepId, StepState>,
}

impl Aggregate for Execution {
    const STREAM_TYPE: &'static str = "execution";
    type State = State;
    type Command = Command;
    type Event = Event;

    fn decide(state: &State, command: Command, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        ctx.actor.require_writer()?;
        use ExecutionStatus as X;
        let Some(status) = state.status else {
            let Command::Start(start) = command else {
                return Err(DomainError::NotFound("execution"));
            };
            let workflow = ctx
                .workflow
                .as_ref()
                .ok_or(DomainError::NotFound("workflow"))?;
            if workflow.status != WorkflowStatus::Active {
                return Err(DomainError::rejected(
                    "workflow_not_active",
                    "only an active workflow can run",
                ));
            }
            let priority = start.priority.unwrap_or(DEFAULT_PRIORITY);
            if priority > MAX_PRIORITY {
                return Err(DomainError::invalid(
                    "priority",
                    format!("must be 0 to {MAX_PRIORITY}"),
                ));
            }
            return Ok(vec![Event::Started(Started {
                workflow_id: start.workflow_id,
                workflow_version: workflow.version,
                trigger_source: start.trigger_source.into_inner(),
                inputs: start.inputs,
                priority,
                max_retries: workflow.max_retries,
                started_by: ctx.actor.user_id(),
                started_at: ctx.now,
            })]);
        };
        if matches!(command, Command::Start(_)) {
            return Err(DomainError::rejected(
                "already_exists",
                "the execution already exists",
            ));
        }
        if status != X::Running {
            return Err(DomainError::rejected(
                "execution_finished",
                format!("the execution is {status}"),
            ));
        }
        let started_at = state.started_at.unwrap_or(ctx.now);
        let step = |id: &StepId| {
            state.steps.get(id).ok_or_else(|| {
                DomainError::rejected("step_not_found", "no step with this id in the execution")
            })
        };
        let finished =
            |status: ExecutionStatus, outputs: Option<Value>, error: Option<String>| Finished {
                status,
                outputs,
                error,
                duration_ms: millis_between(started_at, ctx.now),
                finished_at: ctx.now,
            };
        match command {
            Command::Start(_) => Err(DomainError::rejected(
                "already_exists",
                "the execution already exists",
            )),
            Command::StartStep(s) => {
                if state.steps.contains_key(&s.step_id) {
                    return Err(DomainError::rejected(
                        "step_already_started",
                        "this step has already started",
                    ));
                }
                Ok(vec![Event::StepStarted(StepStarted {
                    step_id: s.step_id,
                    name: s.name.into_inner(),
                    input: s.input,
                    attempt: 1,
                    started_at: ctx.now,
                })])
            }
            Command::CompleteStep(c) => {
                let current = step(&c.step_id)?;
                if current.status != StepStatus::Running {
                    return Err(DomainError::rejected(
                        "step_not_running",
                        format!("the step is {}", current.status),
                    ));
                }
                let succeeded = state
                    .steps
                    .values()
                    .filter(|s| s.status == StepStatus::Succeeded)
                    .count() as u32
                    + 1;
                Ok(vec![Event::StepCompleted(StepCompleted {
                    step_id: c.step_id,
                    output: c.output,
                    attempt: current.attempt,
                    duration_ms: millis_between(current.started_at, ctx.now),
                    completed_at: ctx.now,
                    steps_succeeded: succeeded,
                    steps_total: state.steps.len() as u32,
                })])
            }
            Command::FailStep(f) => {
                let current = step(&f.step_id)?;
                if current.status != StepStatus::Running {
                    return Err(DomainError::rejected(
                        "step_not_running",
                        format!("the step is {}", current.status),
                    ));
                }
                Ok(vec![Event::StepFailed(StepFailed {
                    step_id: f.step_id,
                    error: f.error.into_inner(),
                    retryable: f.retryable,
                    attempt: current.attempt,
                    duration_ms: millis_between(current.started_at, ctx.now),
                    failed_at: ctx.now,
                })])
            }
            Command::RetryStep(r) => {
                let current = step(&r.step_id)?;
                if current.status != StepStatus::Failed {
                    return Err(DomainError::rejected(
                        "step_not_failed",
                        format!(
                            "only a failed step can be retried; the step is {}",
                            current.status
                        ),
                    ));
                }
                if !current.retryable {
                    return Err(DomainError::rejected(
                        "step_not_retryable",
                        "the step failed with a non-retryable error",
                    ));
                }
                // attempt 1 is the first run; max_retries more are allowed.
                if current.attempt > state.max_retries {
                    return Err(DomainError::rejected(
                        "retries_exhausted",
                        format!("the workflow allows {} retries", state.max_retries),
                    ));
                }
                Ok(vec![Event::StepRetried(StepRetried {
                    step_id: r.step_id,
                    name: current.name.clone(),
                    attempt: current.attempt + 1,
                    priority: state.priority,
                    retried_at: ctx.now,
                })])
            }
            Command::Complete(c) => {
                if state
                    .steps
                    .values()
                    .any(|s| s.status == StepStatus::Running)
                {
                    return Err(DomainError::rejected(
                        "steps_still_running",
                        "a step is still running",
                    ));
                }
                if state.steps.values().any(|s| s.status == StepStatus::Failed) {
                    return Err(DomainError::rejected(
                        "steps_failed",
                        "a step has failed; retry it or fail the execution",
                    ));
                }
                Ok(vec![Event::Completed(finished(
                    X::Succeeded,
                    c.outputs,
                    None,
                ))])
            }
            Command::Fail(f) => Ok(vec![Event::Failed(finished(
                X::Failed,
                None,
                Some(f.error.into_inner()),
            ))]),
            Command::Cancel(c) => Ok(vec![Event::Cancelled(finished(
                X::Cancelled,
                None,
                Some(c.reason.into_inner()),
            ))]),
        }
    }

    fn evolve(mut state: State, event: &Event) -> State {
        match event {
            Event::Started(e) => {
                state.status = Some(ExecutionStatus::Running);
                state.started_at = Some(e.started_at);
                state.max_retries = e.max_retries;
                state.priority = e.priority;
            }
            Event::StepStarted(e) => {
                state.steps.insert(
                    e.step_id,
                    StepState {
                        name: e.name.clone(),
                        status: StepStatus::Running,
                        attempt: e.attempt,
                        started_at: e.started_at,
                        retryable: false,
                    },
                );
            }
            Event::StepCompleted(e) => {
                if let Some(step) = state.steps.get_mut(&e.step_id) {
                    step.status = StepStatus::Succeeded;
                }
            }
            Event::StepFailed(e) => {
                if let Some(step) = state.steps.get_mut(&e.step_id) {
                    step.status = StepStatus::Failed;
                    step.retryable = e.retryable;
                }
            }
            Event::StepRetried(e) => {
                if let Some(step) = state.steps.get_mut(&e.step_id) {
                    step.status = StepStatus::Running;
                    step.attempt = e.attempt;
                    step.started_at = e.retried_at;
                    step.retryable = false;
                }
            }
            Event::Completed(e) | Event::Failed(e) | Event::Cancelled(e) => {
                state.status = Some(e.status)
            }
        }
        state
    }
}
