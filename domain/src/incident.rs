//! An incident and its lifecycle: open → investigating → mitigated →
//! resolved → closed, reopened from resolved or closed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::UserId;
use crate::values::{IncidentStatus, Label, LongText, Severity, Text, Title};
use crate::{millis_between, Aggregate, Context, DomainError, Personal};

pub struct Incident;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Open {
    pub title: Title,
    pub description: Text,
    pub severity: Severity,
    pub affected_services: Vec<Label>,
    pub blast_radius: Option<Text>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assign {
    pub assignee_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeSeverity {
    pub severity: Severity,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddNote {
    pub text: Text,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mitigate {
    pub summary: Text,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolve {
    pub root_cause: LongText,
    pub remediation_steps: Vec<Text>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reopen {
    pub reason: Text,
}

pub use crate::Empty;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Open(Open),
    Assign(Assign),
    ChangeSeverity(ChangeSeverity),
    AddNote(AddNote),
    Mitigate(Mitigate),
    Resolve(Resolve),
    Close(Empty),
    Reopen(Reopen),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opened {
    pub title: String,
    pub description: String,
    pub severity: Severity,
    pub affected_services: Vec<String>,
    pub blast_radius: Option<String>,
    pub opened_by: Option<UserId>,
    pub opened_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assigned {
    pub assignee_id: UserId,
    pub previous_assignee_id: Option<UserId>,
    pub status_before: IncidentStatus,
    pub status: IncidentStatus,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeverityChanged {
    pub from: Severity,
    pub to: Severity,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoteAdded {
    pub author: Option<UserId>,
    pub text: Personal<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mitigated {
    pub summary: String,
    pub status_before: IncidentStatus,
    pub at: DateTime<Utc>,
    pub time_to_mitigate_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolved {
    pub root_cause: String,
    pub remediation_steps: Vec<String>,
    pub status_before: IncidentStatus,
    pub at: DateTime<Utc>,
    pub time_to_resolve_ms: u64,
    /// Copied so the knowledge projection needs nothing else.
    pub title: String,
    pub description: String,
    pub severity: Severity,
    pub affected_services: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Closed {
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reopened {
    pub reason: String,
    pub status_before: IncidentStatus,
    pub at: DateTime<Utc>,
}

events! {
    /// What happens to an incident.
    Event {
        Opened(Opened) = "incident_opened" v 2,
        Assigned(Assigned) = "incident_assigned" v 1,
        SeverityChanged(SeverityChanged) = "incident_severity_changed" v 1,
        NoteAdded(NoteAdded) = "incident_note_added" v 1,
        Mitigated(Mitigated) = "incident_mitigated" v 1,
        Resolved(Resolved) = "incident_resolved" v 1,
        Closed(Closed) = "incident_closed" v 1,
        Reopened(Reopened) = "incident_reopened" v 1,
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct State {
    pub status: Option<IncidentStatus>,
    pub opened: Option<Opened>,
    pub severity: Option<Severity>,
    pub assignee: Option<UserId>,
    pub note_count: u32,
}

impl Aggregate for Incident {
    const STREAM_TYPE: &'static str = "incident";
    type State = State;
    type Command = Command;
    type Event = Event;

    /// A note's text belongs to whoever wrote it.
    fn data_subject(
        _aggregate_id: uuid::Uuid,
        _state: &State,
        event: &Event,
    ) -> Option<uuid::Uuid> {
        match event {
            Event::NoteAdded(e) => e.author.map(|a| a.0),
            _ => None,
        }
    }

    fn decide(state: &State, command: Command, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        ctx.actor.require_writer()?;
        use IncidentStatus as S;
        let Some(status) = state.status else {
            let Command::Open(open) = command else {
                return Err(DomainError::NotFound("incident"));
            };
            if open.affected_services.is_empty() || open.affected_services.len() > 50 {
                return Err(DomainError::invalid(
                    "affected_services",
                    "name 1 to 50 services",
                ));
            }
            return Ok(vec![Event::Opened(Opened {
                title: open.title.into_inner(),
                description: open.description.into_inner(),
                severity: open.severity,
                affected_services: open
                    .affected_services
                    .into_iter()
                    .map(Label::into_inner)
                    .collect(),
                blast_radius: open.blast_radius.map(Text::into_inner),
                opened_by: ctx.actor.user_id(),
                opened_at: ctx.now,
            })]);
        };
        let opened_at = state.opened.as_ref().map_or(ctx.now, |o| o.opened_at);
        let finished = || {
            DomainError::rejected(
                "incident_already_resolved",
                "the incident is already resolved",
            )
        };
        match command {
            Command::Open(_) => Err(DomainError::rejected(
                "already_exists",
                "the incident already exists",
            )),
            Command::Assign(a) => {
                if matches!(status, S::Resolved | S::Closed) {
                    return Err(finished());
                }
                if state.assignee == Some(a.assignee_id) {
                    return Err(DomainError::rejected(
                        "already_assigned",
                        "the incident is already assigned to this user",
                    ));
                }
                let next = if status == S::Open {
                    S::Investigating
                } else {
                    status
                };
                Ok(vec![Event::Assigned(Assigned {
                    assignee_id: a.assignee_id,
                    previous_assignee_id: state.assignee,
                    status_before: status,
                    status: next,
                    at: ctx.now,
                })])
            }
            Command::ChangeSeverity(c) => {
                if status == S::Closed {
                    return Err(DomainError::rejected(
                        "incident_closed",
                        "the incident is closed",
                    ));
                }
                let from = state.severity.unwrap_or(c.severity);
                if from == c.severity {
                    return Err(DomainError::rejected(
                        "severity_unchanged",
                        "the incident already has this severity",
                    ));
                }
                Ok(vec![Event::SeverityChanged(SeverityChanged {
                    from,
                    to: c.severity,
                    at: ctx.now,
                })])
            }
            Command::AddNote(n) => {
                if status == S::Closed {
                    return Err(DomainError::rejected(
                        "incident_closed",
                        "the incident is closed",
                    ));
                }
                Ok(vec![Event::NoteAdded(NoteAdded {
                    author: ctx.actor.user_id(),
                    text: Personal::new(n.text.into_inner()),
                    at: ctx.now,
                })])
            }
            Command::Mitigate(m) => match status {
                S::Investigating => Ok(vec![Event::Mitigated(Mitigated {
                    summary: m.summary.into_inner(),
                    status_before: status,
                    at: ctx.now,
                    time_to_mitigate_ms: millis_between(opened_at, ctx.now),
                })]),
                S::Open => Err(DomainError::rejected(
                    "incident_not_investigating",
                    "assign the incident before mitigating it",
                )),
                S::Mitigated => Err(DomainError::rejected(
                    "incident_already_mitigated",
                    "the incident is already mitigated",
                )),
                S::Resolved | S::Closed => Err(finished()),
            },
            Command::Resolve(r) => match status {
                S::Investigating | S::Mitigated => {
                    let opened = state
                        .opened
                        .clone()
                        .ok_or(DomainError::NotFound("incident"))?;
                    Ok(vec![Event::Resolved(Resolved {
                        root_cause: r.root_cause.into_inner(),
                        remediation_steps: r
                            .remediation_steps
                            .into_iter()
                            .map(Text::into_inner)
                            .collect(),
                        status_before: status,
                        at: ctx.now,
                        time_to_resolve_ms: millis_between(opened_at, ctx.now),
                        title: opened.title,
                        description: opened.description,
                        severity: state.severity.unwrap_or(opened.severity),
                        affected_services: opened.affected_services,
                    })])
                }
                S::Open => Err(DomainError::rejected(
                    "incident_not_investigating",
                    "assign the incident before resolving it",
                )),
                S::Resolved | S::Closed => Err(finished()),
            },
            Command::Close(_) => match status {
                S::Resolved => Ok(vec![Event::Closed(Closed { at: ctx.now })]),
                S::Closed => Err(DomainError::rejected(
                    "incident_already_closed",
                    "the incident is already closed",
                )),
                _ => Err(DomainError::rejected(
                    "incident_not_resolved",
                    "only a resolved incident can be closed",
                )),
            },
            Command::Reopen(r) => match status {
                S::Resolved | S::Closed => Ok(vec![Event::Reopened(Reopened {
                    reason: r.reason.into_inner(),
                    status_before: status,
                    at: ctx.now,
                })]),
                _ => Err(DomainError::rejected(
                    "incident_not_resolved",
                    "only a resolved or closed incident can be reopened",
                )),
            },
        }
    }

    fn evolve(mut state: State, event: &Event) -> State {
        use IncidentStatus as S;
        match event {
            Event::Opened(e) => {
                state.status = Some(S::Open);
                state.severity = Some(e.severity);
                state.opened = Some(e.clone());
            }
            Event::Assigned(e) => {
                state.assignee = Some(e.assignee_id);
                state.status = Some(e.status);
            }
            Event::SeverityChanged(e) => state.severity = Some(e.to),
            Event::NoteAdded(_) => state.note_count += 1,
            Event::Mitigated(_) => state.status = Some(S::Mitigated),
            Event::Resolved(_) => state.status = Some(S::Resolved),
            Event::Closed(_) => state.status = Some(S::Closed),
            Event::Reopened(_) => state.status = Some(S::Investigating),
        }
        state
    }
}
