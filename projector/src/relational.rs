//! The relational projection: the nine operational tables of the read model
//! (users, sessions, conversations, messages, workflows, executions, steps,
//! incidents, runbooks), written from the facts each event carries.

use std::collections::{HashMap, HashSet};

use domain::{conversation, execution, incident, runbook, session, user, workflow, Personal};
use eventstore::RecordedEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::changes::ChangeSet;
use crate::events::DomainEvent;
use crate::table::{RowKey, Value};
use crate::tables::{
    CONVERSATIONS, EXECUTIONS, INCIDENTS, MESSAGES, RELATIONAL, RUNBOOKS, SESSIONS, STEPS, USERS,
    WORKFLOWS,
};
use crate::ProjectionError;

/// Conversation owners remembered between batches (messages carry the
/// owner for row-level security; their events do not).
const OWNER_CACHE_LIMIT: usize = 1_000_000;

pub struct Relational {
    changes: ChangeSet,
    owners: HashMap<Uuid, Uuid>,
    /// Users forgotten so far (loaded from the users table on first use):
    /// personal data of theirs is written as NULL whenever it comes, so the
    /// result does not depend on where batches begin and end.
    forgotten: Option<HashSet<Uuid>>,
}

impl Default for Relational {
    fn default() -> Self {
        Relational {
            changes: ChangeSet::new(&RELATIONAL),
            owners: HashMap::new(),
            forgotten: None,
        }
    }
}

/// Personal values of `owner`, or NULL once the owner is forgotten.
struct Personals<'a>(&'a HashSet<Uuid>);

impl Personals<'_> {
    fn of(&self, owner: Uuid, value: &Personal<String>) -> Value {
        if self.0.contains(&owner) {
            return Value::Null;
        }
        Value::opt_text(value.as_ref().map(String::as_str))
    }

    fn opt(&self, owner: Uuid, value: Option<&Personal<String>>) -> Value {
        value.map_or(Value::Null, |v| self.of(owner, v))
    }

    fn opt_json(&self, owner: Uuid, value: Option<&Personal<serde_json::Value>>) -> Value {
        if self.0.contains(&owner) {
            return Value::Null;
        }
        Value::opt_json(value.and_then(Personal::as_ref))
    }
}

fn actor_id(event: &RecordedEvent) -> Option<Uuid> {
    event
        .metadata
        .actor
        .as_deref()
        .and_then(|a| Uuid::parse_str(a).ok())
}

impl Relational {
    /// Forgets what it remembers of the tables (after a rollback or when
    /// another writer may have changed them).
    pub fn reset(&mut self) {
        self.changes.clear();
        self.owners.clear();
        self.forgotten = None;
    }

    /// Applies `events` (already decoded) to `schema` in the caller's
    /// transaction.
    pub async fn apply(
        &mut self,
        conn: &mut PgConnection,
        schema: &str,
        events: &[(&RecordedEvent, DomainEvent)],
    ) -> Result<(), ProjectionError> {
        self.load_owners(conn, schema, events).await?;
        if self.forgotten.is_none() {
            let ids: Vec<Uuid> = sqlx::query_scalar(&format!(
                "SELECT id FROM \"{schema}\".users WHERE forgotten_at IS NOT NULL"
            ))
            .fetch_all(&mut *conn)
            .await?;
            self.forgotten = Some(ids.into_iter().collect());
        }
        let mut forgotten_now = Vec::new();
        for (index, (recorded, event)) in events.iter().enumerate() {
            if let DomainEvent::User(user::Event::Forgotten(_)) = event {
                forgotten_now.push(recorded.stream_id);
                self.forgotten
                    .get_or_insert_with(HashSet::new)
                    .insert(recorded.stream_id);
            }
            self.apply_one(recorded, event)
                .map_err(|reason| ProjectionError::Poison { index, reason })?;
        }
        self.flush(conn, schema, None).await?;
        if !forgotten_now.is_empty() {
            erase_personal_data(conn, schema, &forgotten_now).await?;
        }
        Ok(())
    }

    async fn flush(
        &mut self,
        conn: &mut PgConnection,
        schema: &str,
        index: Option<usize>,
    ) -> Result<(), ProjectionError> {
        if self.changes.is_empty() {
            return Ok(());
        }
        let result = self.changes.flush(conn, schema).await;
        result.map_err(|e| match index {
            Some(index) => ProjectionError::at(index, e),
            None => ProjectionError::from(e),
        })
    }

    /// Looks up, in one query, the owners of conversations that this batch
    /// appends messages to and that it has not seen yet.
    async fn load_owners(
        &mut self,
        conn: &mut PgConnection,
        schema: &str,
        events: &[(&RecordedEvent, DomainEvent)],
    ) -> Result<(), ProjectionError> {
        if self.owners.len() > OWNER_CACHE_LIMIT {
            self.owners.clear();
        }
        let mut missing: Vec<Uuid> = events
            .iter()
            .filter(|(r, e)| {
                matches!(
                    e,
                    DomainEvent::Conversation(
                        conversation::Event::MessageAppended(_)
                            | conversation::Event::MessageRated(_)
                    )
                ) && !self.owners.contains_key(&r.stream_id)
            })
            .map(|(r, _)| r.stream_id)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(&format!(
            "SELECT id, user_id FROM \"{schema}\".conversations WHERE id = ANY($1)"
        ))
        .bind(&missing)
        .fetch_all(&mut *conn)
        .await?;
        self.owners.extend(rows);
        Ok(())
    }

    fn apply_one(&mut self, recorded: &RecordedEvent, event: &DomainEvent) -> Result<(), String> {
        let id = recorded.stream_id;
        match event {
            DomainEvent::User(e) => self.user(id, e),
            DomainEvent::Session(e) => self.session(id, e),
            DomainEvent::Conversation(e) => self.conversation(id, e)?,
            DomainEvent::Workflow(e) => self.workflow(id, e, actor_id(recorded)),
            DomainEvent::Execution(e) => self.execution(id, e),
            DomainEvent::Incident(e) => self.incident(id, e),
            DomainEvent::Runbook(e) => self.runbook(id, e),
            // Indexed knowledge lives in the vector store, not in a table.
            DomainEvent::Knowledge(_) => return Ok(()),
        }
        .then_some(())
        .ok_or_else(|| {
            format!(
                "{} {} creates a row that already exists",
                recorded.event_type, id
            )
        })
    }

    /// Returns false when a creation event meets a row already pending.
    fn user(&mut self, id: Uuid, event: &user::Event) -> bool {
        use user::Event as E;
        let c = &mut self.changes;
        let p = Personals(self.forgotten.as_ref().map_or(&EMPTY, |f| f));
        let personal = |v: &Personal<String>| p.of(id, v);
        let opt_personal = |v: Option<&Personal<String>>| p.opt(id, v);
        let t = &USERS;
        match event {
            E::Registered(e) => {
                let mut row = t.new_row(id);
                row[t.index("email")] = personal(&e.email);
                row[t.index("display_name")] = personal(&e.display_name);
                row[t.index("role")] = Value::Label(e.role.as_str());
                row[t.index("created_at")] = Value::Ts(e.registered_at);
                row[t.index("updated_at")] = Value::Ts(e.registered_at);
                return c.insert(t, row);
            }
            E::ProfileUpdated(e) => {
                if let Some(name) = &e.display_name {
                    c.set(t, id, "display_name", personal(name));
                }
                if let Some(preferences) = &e.preferences {
                    c.set(t, id, "preferences", Value::json(preferences));
                }
                c.set(t, id, "updated_at", Value::Ts(e.updated_at));
            }
            E::RoleChanged(e) => {
                c.set(t, id, "role", Value::Label(e.to.as_str()));
                c.set(t, id, "updated_at", Value::Ts(e.at));
            }
            E::PasswordChanged(e) => c.set(t, id, "updated_at", Value::Ts(e.at)),
            E::MfaEnabled(e) => {
                c.set(t, id, "mfa_enabled", Value::Bool(true));
                c.set(t, id, "updated_at", Value::Ts(e.at));
            }
            E::MfaDisabled(e) => {
                c.set(t, id, "mfa_enabled", Value::Bool(false));
                c.set(t, id, "updated_at", Value::Ts(e.at));
            }
            E::ApiKeyIssued(e) => {
                c.add(t, id, "active_api_keys", 1);
                c.set(t, id, "updated_at", Value::Ts(e.issued_at));
            }
            E::ApiKeyRevoked(e) => {
                c.add(t, id, "active_api_keys", -1);
                c.set(t, id, "updated_at", Value::Ts(e.at));
            }
            E::Locked(e) => {
                c.set(t, id, "is_locked", Value::Bool(true));
                c.set(t, id, "locked_reason", Value::Text(e.reason.clone()));
                c.set(t, id, "updated_at", Value::Ts(e.at));
            }
            E::Unlocked(e) => {
                c.set(t, id, "is_locked", Value::Bool(false));
                c.set(t, id, "locked_reason", Value::Null);
                c.set(t, id, "failed_login_attempts", Value::I32(0));
                c.set(t, id, "updated_at", Value::Ts(e.at));
            }
            E::LoginFailed(e) => {
                c.set(
                    t,
                    id,
                    "failed_login_attempts",
                    Value::count(e.consecutive_failures),
                );
            }
            E::LoginSucceeded(e) => {
                c.set(t, id, "failed_login_attempts", Value::I32(0));
                c.set(t, id, "last_login_at", Value::Ts(e.at));
                c.set(t, id, "last_login_ip", opt_personal(e.ip_address.as_ref()));
            }
            E::Deleted(e) => {
                c.set(t, id, "deleted_at", Value::Ts(e.at));
                c.set(t, id, "updated_at", Value::Ts(e.at));
            }
            // Rows of other tables are erased by `erase_personal_data` once
            // this batch is written.
            E::Forgotten(e) => {
                for column in ["email", "display_name", "last_login_ip"] {
                    c.set(t, id, column, Value::Null);
                }
                c.set(t, id, "forgotten_at", Value::Ts(e.at));
                c.set(t, id, "updated_at", Value::Ts(e.at));
            }
        }
        true
    }

    fn session(&mut self, id: Uuid, event: &session::Event) -> bool {
        use session::Event as E;
        let c = &mut self.changes;
        let p = Personals(self.forgotten.as_ref().map_or(&EMPTY, |f| f));
        let t = &SESSIONS;
        match event {
            E::Started(e) => {
                let mut row = t.new_row(id);
                row[t.index("user_id")] = Value::Uuid(e.user_id.0);
                row[t.index("role")] = Value::Label(e.role.as_str());
                row[t.index("device_fingerprint")] =
                    Value::opt_text(e.device_fingerprint.as_deref());
                row[t.index("ip_address")] = p.opt(e.user_id.0, e.ip_address.as_ref());
                row[t.index("user_agent")] = p.opt(e.user_id.0, e.user_agent.as_ref());
                row[t.index("started_at")] = Value::Ts(e.started_at);
                row[t.index("last_seen_at")] = Value::Ts(e.started_at);
                row[t.index("expires_at")] = Value::Ts(e.expires_at);
                row[t.index("context")] = p.opt_json(e.user_id.0, e.context.as_ref());
                return c.insert(t, row);
            }
            E::Touched(e) => c.set(t, id, "last_seen_at", Value::Ts(e.at)),
            E::Ended(e) => {
                c.set(t, id, "ended_at", Value::Ts(e.at));
                c.set(t, id, "end_reason", Value::Text(e.reason.clone()));
            }
        }
        true
    }

    fn conversation(&mut self, id: Uuid, event: &conversation::Event) -> Result<bool, String> {
        use conversation::Event as E;
        let c = &mut self.changes;
        let p = Personals(self.forgotten.as_ref().map_or(&EMPTY, |f| f));
        let owner_of = |owners: &HashMap<Uuid, Uuid>| {
            owners
                .get(&id)
                .copied()
                .ok_or_else(|| format!("conversation {id} is unknown"))
        };
        let t = &CONVERSATIONS;
        match event {
            E::Started(e) => {
                self.owners.insert(id, e.owner_id.0);
                let mut row = t.new_row(id);
                row[t.index("user_id")] = Value::Uuid(e.owner_id.0);
                row[t.index("title")] = p.opt(e.owner_id.0, e.title.as_ref());
                row[t.index("model")] = Value::opt_text(e.model.as_deref());
                row[t.index("model_config")] = e
                    .model_config
                    .as_ref()
                    .and_then(|m| serde_json::to_value(m).ok())
                    .as_ref()
                    .map_or(Value::Null, Value::json);
                row[t.index("tags")] = Value::TextArray(e.tags.clone());
                row[t.index("context")] = Value::opt_json(e.context.as_ref());
                row[t.index("created_at")] = Value::Ts(e.started_at);
                row[t.index("updated_at")] = Value::Ts(e.started_at);
                return Ok(c.insert(t, row));
            }
            E::MessageAppended(e) => {
                let owner = *self.owners.get(&id).ok_or_else(|| {
                    format!("message {} of unknown conversation {id}", e.message_id.0)
                })?;
                let m = &MESSAGES;
                let mut row = m.new_row(RowKey::child(id, e.message_id.0));
                row[m.index("user_id")] = Value::Uuid(owner);
                row[m.index("sequence")] = Value::count(e.sequence);
                row[m.index("role")] = Value::Label(e.role.as_str());
                row[m.index("content")] = p.of(owner, &e.content);
                row[m.index("tool_calls")] = Value::opt_json(e.tool_calls.as_ref());
                row[m.index("tool_results")] = Value::opt_json(e.tool_results.as_ref());
                row[m.index("tokens_in")] = Value::count(e.tokens_in);
                row[m.index("tokens_out")] = Value::count(e.tokens_out);
                row[m.index("cost_usd")] = Value::Decimal(e.cost_usd.micros());
                row[m.index("created_at")] = Value::Ts(e.appended_at);
                if !c.insert(m, row) {
                    return Ok(false);
                }
                c.set(t, id, "message_count", Value::count(e.sequence));
                c.set(t, id, "total_tokens", Value::big(e.total_tokens));
                c.set(
                    t,
                    id,
                    "total_cost_usd",
                    Value::Decimal(e.total_cost_usd.micros()),
                );
                c.set(t, id, "last_message_at", Value::Ts(e.appended_at));
                c.set(t, id, "updated_at", Value::Ts(e.appended_at));
            }
            E::MessageRated(e) => {
                let m = &MESSAGES;
                let message = RowKey::child(id, e.message_id.0);
                let owner = owner_of(&self.owners)?;
                c.set(m, message, "rating", Value::I16(i16::from(e.rating)));
                c.set(m, message, "feedback", p.opt(owner, e.comment.as_ref()));
                c.set(m, message, "rated_at", Value::Ts(e.rated_at));
            }
            E::Tagged(e) => c.set(t, id, "tags", Value::TextArray(e.tags.clone())),
            E::Archived(e) => {
                c.set(t, id, "status", Value::Label(e.to.as_str()));
                c.set(t, id, "archived_at", Value::Ts(e.at));
                c.set(t, id, "updated_at", Value::Ts(e.at));
            }
            E::Deleted(e) => {
                c.set(t, id, "status", Value::Label(e.to.as_str()));
                c.set(t, id, "deleted_at", Value::Ts(e.at));
                c.set(t, id, "updated_at", Value::Ts(e.at));
            }
        }
        Ok(true)
    }

    fn workflow(&mut self, id: Uuid, event: &workflow::Event, actor: Option<Uuid>) -> bool {
        use workflow::Event as E;
        let c = &mut self.changes;
        let t = &WORKFLOWS;
        match event {
            E::Created(e) => {
                let mut row = t.new_row(id);
                row[t.index("name")] = Value::Text(e.name.clone());
                row[t.index("description")] = Value::opt_text(e.description.as_deref());
                row[t.index("definition")] = Value::json(&e.definition);
                row[t.index("triggers")] = Value::opt_json(e.triggers.as_ref());
                row[t.index("parameters")] = Value::opt_json(e.parameters.as_ref());
                row[t.index("tags")] = Value::TextArray(e.tags.clone());
                row[t.index("environment")] = Value::json(&serde_json::json!(e.environment));
                row[t.index("version")] = Value::count(e.version);
                row[t.index("max_retries")] = Value::count(e.max_retries);
                row[t.index("created_by")] = Value::opt_uuid(actor);
                row[t.index("created_at")] = Value::Ts(e.created_at);
                row[t.index("updated_at")] = Value::Ts(e.created_at);
                return c.insert(t, row);
            }
            E::Updated(e) => {
                c.set(t, id, "version", Value::count(e.version));
                if let Some(description) = &e.description {
                    c.set(t, id, "description", Value::Text(description.clone()));
                }
                if let Some(definition) = &e.definition {
                    c.set(t, id, "definition", Value::json(definition));
                }
                if let Some(triggers) = &e.triggers {
                    c.set(t, id, "triggers", Value::json(triggers));
                }
                if let Some(parameters) = &e.parameters {
                    c.set(t, id, "parameters", Value::json(parameters));
                }
                if let Some(tags) = &e.tags {
                    c.set(t, id, "tags", Value::TextArray(tags.clone()));
                }
                if let Some(environment) = &e.environment {
                    c.set(
                        t,
                        id,
                        "environment",
                        Value::json(&serde_json::json!(environment)),
                    );
                }
                c.set(t, id, "max_retries", Value::count(e.max_retries));
                c.set(t, id, "updated_at", Value::Ts(e.updated_at));
            }
            E::Activated(e) | E::Deactivated(e) | E::Deleted(e) => {
                c.set(t, id, "status", Value::Label(e.to.as_str()));
                c.set(t, id, "updated_at", Value::Ts(e.at));
                if matches!(event, E::Deleted(_)) {
                    c.set(t, id, "deleted_at", Value::Ts(e.at));
                }
            }
        }
        true
    }

    fn execution(&mut self, id: Uuid, event: &execution::Event) -> bool {
        use execution::Event as E;
        let c = &mut self.changes;
        let t = &EXECUTIONS;
        let s = &STEPS;
        match event {
            E::Started(e) => {
                let mut row = t.new_row(id);
                row[t.index("workflow_id")] = Value::Uuid(e.workflow_id.0);
                row[t.index("workflow_version")] = Value::count(e.workflow_version);
                row[t.index("status")] = Value::Label("running");
                row[t.index("trigger_source")] = Value::Text(e.trigger_source.clone());
                row[t.index("inputs")] = Value::opt_json(e.inputs.as_ref());
                row[t.index("priority")] = Value::I16(i16::from(e.priority));
                row[t.index("max_retries")] = Value::count(e.max_retries);
                row[t.index("started_by")] = Value::opt_uuid(e.started_by.map(|u| u.0));
                row[t.index("started_at")] = Value::Ts(e.started_at);
                return c.insert(t, row);
            }
            E::StepStarted(e) => {
                let mut row = s.new_row(RowKey::child(id, e.step_id.0));
                row[s.index("name")] = Value::Text(e.name.clone());
                row[s.index("status")] = Value::Label("running");
                row[s.index("attempt")] = Value::count(e.attempt);
                row[s.index("input")] = Value::opt_json(e.input.as_ref());
                row[s.index("started_at")] = Value::Ts(e.started_at);
                c.add(t, id, "steps_total", 1);
                return c.insert(s, row);
            }
            E::StepCompleted(e) => {
                let step = RowKey::child(id, e.step_id.0);
                c.set(s, step, "status", Value::Label("succeeded"));
                c.set(s, step, "output", Value::opt_json(e.output.as_ref()));
                c.set(s, step, "attempt", Value::count(e.attempt));
                c.set(s, step, "duration_ms", Value::big(e.duration_ms));
                c.set(s, step, "finished_at", Value::Ts(e.completed_at));
                c.set(t, id, "steps_succeeded", Value::count(e.steps_succeeded));
                c.set(t, id, "steps_total", Value::count(e.steps_total));
            }
            E::StepFailed(e) => {
                let step = RowKey::child(id, e.step_id.0);
                c.set(s, step, "status", Value::Label("failed"));
                c.set(s, step, "error", Value::Text(e.error.clone()));
                c.set(s, step, "retryable", Value::Bool(e.retryable));
                c.set(s, step, "attempt", Value::count(e.attempt));
                c.set(s, step, "duration_ms", Value::big(e.duration_ms));
                c.set(s, step, "finished_at", Value::Ts(e.failed_at));
                c.add(t, id, "steps_failed", 1);
            }
            E::StepRetried(e) => {
                // Only a failed step is retried: it is running again, not
                // failed, and the retry is counted on its own.
                c.add(t, id, "steps_failed", -1);
                c.add(t, id, "step_retries", 1);
                let step = RowKey::child(id, e.step_id.0);
                c.set(s, step, "status", Value::Label("running"));
                c.set(s, step, "attempt", Value::count(e.attempt));
                c.set(s, step, "started_at", Value::Ts(e.retried_at));
                c.set(s, step, "retryable", Value::Null);
                c.set(s, step, "error", Value::Null);
                c.set(s, step, "finished_at", Value::Null);
                c.set(s, step, "duration_ms", Value::Null);
            }
            E::Completed(e) | E::Failed(e) | E::Cancelled(e) => {
                c.set(t, id, "status", Value::Label(e.status.as_str()));
                c.set(t, id, "outputs", Value::opt_json(e.outputs.as_ref()));
                c.set(t, id, "error", Value::opt_text(e.error.as_deref()));
                c.set(t, id, "duration_ms", Value::big(e.duration_ms));
                c.set(t, id, "finished_at", Value::Ts(e.finished_at));
            }
        }
        true
    }

    fn incident(&mut self, id: Uuid, event: &incident::Event) -> bool {
        use incident::Event as E;
        let c = &mut self.changes;
        let t = &INCIDENTS;
        match event {
            E::Opened(e) => {
                let mut row = t.new_row(id);
                row[t.index("title")] = Value::Text(e.title.clone());
                row[t.index("description")] = Value::Text(e.description.clone());
                row[t.index("severity")] = Value::Label(e.severity.as_str());
                row[t.index("affected_services")] = Value::TextArray(e.affected_services.clone());
                row[t.index("blast_radius")] = Value::opt_text(e.blast_radius.as_deref());
                row[t.index("opened_by")] = Value::opt_uuid(e.opened_by.map(|u| u.0));
                row[t.index("opened_at")] = Value::Ts(e.opened_at);
                row[t.index("updated_at")] = Value::Ts(e.opened_at);
                return c.insert(t, row);
            }
            E::Assigned(e) => {
                c.set(t, id, "assignee_id", Value::Uuid(e.assignee_id.0));
                c.set(t, id, "status", Value::Label(e.status.as_str()));
                c.set(t, id, "updated_at", Value::Ts(e.at));
            }
            E::SeverityChanged(e) => {
                c.set(t, id, "severity", Value::Label(e.to.as_str()));
                c.set(t, id, "updated_at", Value::Ts(e.at));
            }
            E::NoteAdded(e) => {
                c.add(t, id, "note_count", 1);
                c.set(t, id, "updated_at", Value::Ts(e.at));
            }
            E::Mitigated(e) => {
                c.set(t, id, "status", Value::Label("mitigated"));
                c.set(t, id, "mitigation_summary", Value::Text(e.summary.clone()));
                c.set(t, id, "mitigated_at", Value::Ts(e.at));
                c.set(
                    t,
                    id,
                    "time_to_mitigate_ms",
                    Value::big(e.time_to_mitigate_ms),
                );
                c.set(t, id, "updated_at", Value::Ts(e.at));
            }
            E::Resolved(e) => {
                c.set(t, id, "status", Value::Label("resolved"));
                c.set(t, id, "root_cause", Value::Text(e.root_cause.clone()));
                c.set(
                    t,
                    id,
                    "remediation_steps",
                    Value::TextArray(e.remediation_steps.clone()),
                );
                c.set(t, id, "resolved_at", Value::Ts(e.at));
                c.set(
                    t,
                    id,
                    "time_to_resolve_ms",
                    Value::big(e.time_to_resolve_ms),
                );
                c.set(t, id, "updated_at", Value::Ts(e.at));
            }
            E::Closed(e) => {
                c.set(t, id, "status", Value::Label("closed"));
                c.set(t, id, "closed_at", Value::Ts(e.at));
                c.set(t, id, "updated_at", Value::Ts(e.at));
            }
            E::Reopened(e) => {
                // Open again: no longer resolved or closed (the resolution
                // stays in the timeline; a new one sets these again).
                c.set(t, id, "status", Value::Label("investigating"));
                c.set(t, id, "resolved_at", Value::Null);
                c.set(t, id, "time_to_resolve_ms", Value::Null);
                c.set(t, id, "closed_at", Value::Null);
                c.add(t, id, "reopen_count", 1);
                c.set(t, id, "updated_at", Value::Ts(e.at));
            }
        }
        true
    }

    fn runbook(&mut self, id: Uuid, event: &runbook::Event) -> bool {
        use runbook::Event as E;
        let c = &mut self.changes;
        let t = &RUNBOOKS;
        match event {
            E::Created(e) => {
                let mut row = t.new_row(id);
                row[t.index("name")] = Value::Text(e.name.clone());
                row[t.index("description")] = Value::Text(e.description.clone());
                row[t.index("trigger_conditions")] = Value::json(&e.trigger_conditions);
                row[t.index("steps")] = Value::TextArray(e.steps.clone());
                row[t.index("tags")] = Value::TextArray(e.tags.clone());
                row[t.index("version")] = Value::count(e.version);
                row[t.index("created_at")] = Value::Ts(e.created_at);
                row[t.index("updated_at")] = Value::Ts(e.created_at);
                return c.insert(t, row);
            }
            E::Updated(e) => {
                c.set(t, id, "version", Value::count(e.version));
                if let Some(name) = &e.name {
                    c.set(t, id, "name", Value::Text(name.clone()));
                }
                if let Some(description) = &e.description {
                    c.set(t, id, "description", Value::Text(description.clone()));
                }
                if let Some(conditions) = &e.trigger_conditions {
                    c.set(t, id, "trigger_conditions", Value::json(conditions));
                }
                if let Some(steps) = &e.steps {
                    c.set(t, id, "steps", Value::TextArray(steps.clone()));
                }
                if let Some(tags) = &e.tags {
                    c.set(t, id, "tags", Value::TextArray(tags.clone()));
                }
                c.set(t, id, "updated_at", Value::Ts(e.updated_at));
            }
            E::ExecutionRecorded(e) => {
                c.set(t, id, "execution_count", Value::big(e.execution_count));
                c.set(t, id, "success_count", Value::big(e.success_count));
                c.set(t, id, "success_rate", Value::Decimal(success_rate(e)));
                c.add(
                    t,
                    id,
                    "total_duration_ms",
                    i64::try_from(e.duration_ms).unwrap_or(i64::MAX),
                );
                c.set(t, id, "last_executed_at", Value::Ts(e.recorded_at));
            }
            E::Archived(e) => {
                c.set(t, id, "archived_at", Value::Ts(e.at));
                c.set(t, id, "updated_at", Value::Ts(e.at));
            }
        }
        true
    }
}

/// Percent with two decimals (as hundredths), rounded half up.
fn success_rate(e: &runbook::ExecutionRecorded) -> i64 {
    if e.execution_count == 0 {
        return 0;
    }
    let hundredths = (u128::from(e.success_count) * 10_000 * 2 + u128::from(e.execution_count))
        / (2 * u128::from(e.execution_count));
    i64::try_from(hundredths).unwrap_or(0)
}

static EMPTY: std::sync::LazyLock<HashSet<Uuid>> = std::sync::LazyLock::new(HashSet::new);

/// The personal data of forgotten users in rows written before they were
/// forgotten, as the read model shows it: gone.
async fn erase_personal_data(
    conn: &mut PgConnection,
    schema: &str,
    users: &[Uuid],
) -> Result<(), sqlx::Error> {
    for statement in [
        "UPDATE \"{s}\".sessions SET ip_address = NULL, user_agent = NULL, context = NULL
          WHERE user_id = ANY($1)
            AND (ip_address IS NOT NULL OR user_agent IS NOT NULL OR context IS NOT NULL)",
        "UPDATE \"{s}\".conversations SET title = NULL WHERE user_id = ANY($1) AND title IS NOT NULL",
        "UPDATE \"{s}\".messages SET content = NULL, feedback = NULL
          WHERE user_id = ANY($1) AND (content IS NOT NULL OR feedback IS NOT NULL)",
    ] {
        sqlx::query(&statement.replace("{s}", schema))
            .bind(users)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
