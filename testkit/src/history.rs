//! Synthetic but realistic histories: a simulated copilot's users, sessions,
//! conversations with real-length messages, workflow runs with retried
//! steps, incidents through their lifecycle, runbooks and indexed
//! knowledge. Every event is consistent with the ones before it (sequences,
//! running totals, allowed transitions), so projections of it are
//! meaningful. Used by the tests and by `bench replay`.

use chrono::{DateTime, Duration, Utc};
use domain::codec::CodecError;
use domain::ids::{ApiKeyId, MessageId, ProjectId, StepId, UserId, WorkflowId};
use domain::values::{
    ConversationStatus, CostTotal, CostUsd, ExecutionStatus, IncidentStatus, MessageRole, Role,
    Scope, Severity, WorkflowStatus,
};
use domain::{
    conversation, execution, incident, knowledge, runbook, session, user, workflow, Aggregate,
    Personal, Secret,
};
use eventstore::{AppendRequest, ExpectedVersion, Metadata, NewEvent};
use serde_json::json;
use uuid::Uuid;

const WORDS: &[&str] = &[
    "the",
    "deployment",
    "failed",
    "because",
    "service",
    "latency",
    "increased",
    "after",
    "rollout",
    "database",
    "connection",
    "pool",
    "was",
    "exhausted",
    "and",
    "retries",
    "queue",
    "backed",
    "up",
    "please",
    "check",
    "logs",
    "for",
    "errors",
    "in",
    "region",
    "cache",
    "invalidation",
    "workflow",
    "step",
    "timed",
    "out",
    "while",
    "waiting",
    "on",
    "upstream",
    "dependency",
    "we",
    "should",
    "scale",
    "replicas",
    "roll",
    "back",
    "to",
    "previous",
    "version",
    "metrics",
    "show",
    "cpu",
    "saturation",
    "memory",
    "pressure",
    "on",
    "nodes",
    "incident",
    "runbook",
    "suggests",
    "restarting",
    "consumer",
    "group",
    "verify",
    "alerts",
    "dashboard",
    "query",
    "returns",
    "slowly",
    "index",
    "missing",
    "add",
    "partial",
    "tests",
];

/// A tiny deterministic generator (xorshift64*), so histories repeat.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap_or(0)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn uuid(&mut self) -> Uuid {
        let hi = self.next();
        let lo = self.next();
        uuid::Builder::from_random_bytes((u128::from(hi) << 64 | u128::from(lo)).to_be_bytes())
            .into_uuid()
    }
}

struct Conv {
    id: Uuid,
    owner: Uuid,
    version: u64,
    sequence: u32,
    tokens: u64,
    cost: i64,
    messages: Vec<Uuid>,
    status: ConversationStatus,
}

struct Exec {
    id: Uuid,
    version: u64,
    started: DateTime<Utc>,
    steps_total: u32,
    succeeded: u32,
    /// The step in progress: id, attempt, whether it failed.
    step: Option<(Uuid, u32, bool)>,
}

struct Inc {
    id: Uuid,
    version: u64,
    status: IncidentStatus,
    severity: Severity,
    opened: DateTime<Utc>,
}

/// Generates appends; see the module documentation.
pub struct History {
    rng: Rng,
    now: DateTime<Utc>,
    users: Vec<(Uuid, u64, bool)>,
    sessions: Vec<(Uuid, Uuid, u64)>,
    conversations: Vec<Conv>,
    workflows: Vec<(Uuid, u64, u32, WorkflowStatus)>,
    executions: Vec<Exec>,
    incidents: Vec<Inc>,
    runbooks: Vec<(Uuid, u64, u64, u64)>,
    knowledge: Vec<(Uuid, u64, bool, bool)>,
    /// How often (in percent) a user's activity is being forgotten
    /// (erasure of personal data); 0 never.
    pub forget_percent: u64,
}

impl History {
    pub fn new(seed: u64) -> Self {
        History {
            rng: Rng(seed.max(1)),
            now: Utc::now() - Duration::days(30),
            users: Vec::new(),
            sessions: Vec::new(),
            conversations: Vec::new(),
            workflows: Vec::new(),
            executions: Vec::new(),
            incidents: Vec::new(),
            runbooks: Vec::new(),
            knowledge: Vec::new(),
            forget_percent: 5,
        }
    }

    /// The same history with its simulated clock starting at `at` (the
    /// default is thirty days ago).
    pub fn starting_at(mut self, at: DateTime<Utc>) -> Self {
        self.now = at;
        self
    }

    fn text(&mut self, min_words: usize, max_words: usize) -> String {
        let n = min_words + self.rng.below(max_words - min_words + 1);
        let mut text = String::with_capacity(n * 8);
        for i in 0..n {
            if i > 0 {
                text.push(' ');
            }
            text.push_str(WORDS[self.rng.below(WORDS.len())]);
        }
        text
    }

    fn tick(&mut self) -> DateTime<Utc> {
        self.now += Duration::milliseconds(1 + self.rng.below(2000) as i64);
        self.now
    }

    /// The next append of the simulated system.
    pub fn next_append(&mut self) -> Result<AppendRequest, CodecError> {
        loop {
            let roll = self.rng.below(100);
            let made = match roll {
                0..=2 => Some(self.register()),
                3..=5 => self.user_activity(),
                6..=12 => self.session_activity(),
                13..=17 => self.start_conversation(),
                18..=59 => self.append_message(),
                60..=63 => self.conversation_activity(),
                64..=66 => self.workflow_activity(),
                67..=79 => self.execution_activity(),
                80..=90 => self.incident_activity(),
                91..=94 => self.runbook_activity(),
                _ => self.knowledge_activity(),
            };
            if let Some(made) = made {
                return made;
            }
        }
    }

    fn request<A: Aggregate>(
        stream_id: Uuid,
        version: u64,
        actor: Option<Uuid>,
        events: &[A::Event],
    ) -> Result<AppendRequest, CodecError> {
        let events = events
            .iter()
            .map(|e| {
                use domain::codec::EventCodec;
                Ok(NewEvent::new(
                    e.event_type(),
                    e.schema_version(),
                    e.encode()?,
                ))
            })
            .collect::<Result<Vec<_>, CodecError>>()?;
        Ok(AppendRequest {
            stream_id,
            stream_type: A::STREAM_TYPE.to_string(),
            expected: ExpectedVersion::Exact(version),
            events,
            metadata: Metadata {
                command_id: Some(Uuid::now_v7()),
                correlation_id: Some(Uuid::now_v7()),
                actor: Some(actor.map_or_else(|| "system".to_string(), |a| a.to_string())),
                ip: Some("192.0.2.44".into()),
                user_agent: Some("copilot-agent/1.0".into()),
                ..Metadata::default()
            },
        })
    }

    fn any_user(&mut self) -> Option<Uuid> {
        let live: Vec<Uuid> = self.users.iter().filter(|u| !u.2).map(|u| u.0).collect();
        (!live.is_empty()).then(|| live[self.rng.below(live.len())])
    }

    fn register(&mut self) -> Result<AppendRequest, CodecError> {
        let id = self.rng.uuid();
        let at = self.tick();
        let role = [Role::Admin, Role::Operator, Role::Viewer][self.rng.below(3)];
        self.users.push((id, 1, false));
        Self::request::<user::User>(
            id,
            0,
            None,
            &[user::Event::Registered(user::Registered {
                email: Personal::new(format!("user-{id}@example.com")),
                display_name: Personal::new(format!("User {}", &id.to_string()[..8])),
                role,
                password_hash: Secret::new("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
                registered_at: at,
            })],
        )
    }

    fn user_activity(&mut self) -> Option<Result<AppendRequest, CodecError>> {
        let live: Vec<usize> = (0..self.users.len())
            .filter(|&i| !self.users[i].2)
            .collect();
        if live.is_empty() {
            return None;
        }
        let i = live[self.rng.below(live.len())];
        let (id, version, _) = self.users[i];
        let at = self.tick();
        let event = match self.rng.below(8) {
            0 => user::Event::ProfileUpdated(user::ProfileUpdated {
                display_name: Some(Personal::new(self.text(1, 3))),
                display_name_before: None,
                preferences: Some(json!({"theme": "dark", "digest": self.rng.chance(50)})),
                updated_at: at,
            }),
            1 => user::Event::LoginFailed(user::LoginFailed {
                consecutive_failures: 1 + self.rng.below(3) as u32,
                ip_address: Some(Personal::new("198.51.100.7".into())),
                at,
            }),
            2 => user::Event::MfaEnabled(user::MfaEnabled {
                secret: Secret::new(Personal::new("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP".into())),
                at,
            }),
            3 => user::Event::ApiKeyIssued(user::ApiKeyIssued {
                key_id: ApiKeyId(self.rng.uuid()),
                name: "ci".into(),
                scopes: vec![Scope::CommandsWrite],
                expires_at: None,
                key_hash: Secret::new("sha256:0f".into()),
                prefix: "cpk_0f".into(),
                issued_at: at,
            }),
            4 if self.rng.chance(self.forget_percent) => {
                // A forgotten user does nothing more: their conversations
                // and sessions go quiet.
                self.users[i].2 = true;
                for c in self.conversations.iter_mut().filter(|c| c.owner == id) {
                    c.status = ConversationStatus::Deleted;
                }
                self.sessions.retain(|s| s.1 != id);
                user::Event::Forgotten(user::At { at })
            }
            5 => user::Event::Locked(user::Locked {
                reason: "too many failed logins".into(),
                at,
            }),
            6 => user::Event::Unlocked(user::At { at }),
            _ => user::Event::LoginSucceeded(user::LoginSucceeded {
                ip_address: Some(Personal::new("203.0.113.9".into())),
                at,
            }),
        };
        self.users[i].1 += 1;
        Some(Self::request::<user::User>(id, version, Some(id), &[event]))
    }

    fn session_activity(&mut self) -> Option<Result<AppendRequest, CodecError>> {
        let at = self.tick();
        if self.sessions.is_empty() || self.rng.chance(40) {
            let user_id = self.any_user()?;
            let id = self.rng.uuid();
            self.sessions.push((id, user_id, 1));
            return Some(Self::request::<session::Session>(
                id,
                0,
                Some(user_id),
                &[session::Event::Started(session::Started {
                    user_id: UserId(user_id),
                    role: Role::Operator,
                    token_hash: Secret::new(format!("sha256:{}", self.rng.uuid().simple())),
                    expires_at: at + Duration::hours(24),
                    device_fingerprint: Some("fp-laptop".into()),
                    ip_address: Some(Personal::new("203.0.113.9".into())),
                    user_agent: Some(Personal::new("Mozilla/5.0".into())),
                    mfa_step: None,
                    context: None,
                    started_at: at,
                })],
            ));
        }
        let i = self.rng.below(self.sessions.len());
        let (id, user_id, version) = self.sessions[i];
        let event = if self.rng.chance(30) {
            self.sessions.swap_remove(i);
            session::Event::Ended(session::Ended {
                user_id: UserId(user_id),
                reason: "logout".into(),
                at,
            })
        } else {
            self.sessions[i].2 += 1;
            session::Event::Touched(session::Touched {
                at,
                idle_ms: self.rng.below(60_000) as u64,
            })
        };
        Some(Self::request::<session::Session>(
            id,
            version,
            Some(user_id),
            &[event],
        ))
    }

    fn start_conversation(&mut self) -> Option<Result<AppendRequest, CodecError>> {
        let owner = self.any_user()?;
        let id = self.rng.uuid();
        let at = self.tick();
        self.conversations.push(Conv {
            id,
            owner,
            version: 1,
            sequence: 0,
            tokens: 0,
            cost: 0,
            messages: Vec::new(),
            status: ConversationStatus::Active,
        });
        let title = self.text(2, 6);
        Some(Self::request::<conversation::Conversation>(
            id,
            0,
            Some(owner),
            &[conversation::Event::Started(conversation::Started {
                owner_id: UserId(owner),
                title: Some(Personal::new(title)),
                model: Some("gpt-4o".into()),
                model_config: Some(domain::values::ModelConfig {
                    temperature: Some(0.2),
                    max_tokens: Some(2048),
                    ..Default::default()
                }),
                tags: vec!["ops".into(), format!("team-{}", self.rng.below(5))],
                context: Some(json!({"repo": "copilot", "branch": "main"})),
                started_at: at,
            })],
        ))
    }

    fn pick_conversation(&mut self) -> Option<usize> {
        if self.conversations.is_empty() {
            return None;
        }
        // Recent conversations are busier.
        let n = self.conversations.len();
        let window = n.min(50);
        let i = n - 1 - self.rng.below(window);
        (self.conversations[i].status == ConversationStatus::Active).then_some(i)
    }

    fn append_message(&mut self) -> Option<Result<AppendRequest, CodecError>> {
        let i = self.pick_conversation()?;
        let at = self.tick();
        let role = [MessageRole::User, MessageRole::Assistant][self.rng.below(2)];
        let content = self.text(30, 300);
        let tokens_in = 20 + self.rng.below(800) as u32;
        let tokens_out = 50 + self.rng.below(1500) as u32;
        let cost_micros = i64::from(tokens_in + tokens_out) * 3;
        let message_id = self.rng.uuid();
        let c = &mut self.conversations[i];
        c.sequence += 1;
        c.tokens += u64::from(tokens_in + tokens_out);
        c.cost += cost_micros;
        c.messages.push(message_id);
        let (id, owner, version) = (c.id, c.owner, c.version);
        c.version += 1;
        let event = conversation::Event::MessageAppended(conversation::MessageAppended {
            message_id: MessageId(message_id),
            sequence: c.sequence,
            role,
            content: Personal::new(content),
            tool_calls: (role == MessageRole::Assistant && c.sequence % 3 == 0)
                .then(|| json!([{"name": "search_logs", "arguments": {"query": "error"}}])),
            tool_results: None,
            tokens_in,
            tokens_out,
            cost_usd: CostUsd::from_micros(cost_micros).unwrap_or(CostUsd::ZERO),
            total_tokens: c.tokens,
            total_cost_usd: CostTotal::from_micros(c.cost).unwrap_or(CostTotal::ZERO),
            embedding: None,
            appended_at: at,
        });
        Some(Self::request::<conversation::Conversation>(
            id,
            version,
            Some(owner),
            &[event],
        ))
    }

    fn conversation_activity(&mut self) -> Option<Result<AppendRequest, CodecError>> {
        let i = self.pick_conversation()?;
        let at = self.tick();
        let rating = 1 + self.rng.below(5) as u8;
        let pick = self.rng.below(10);
        let c = &mut self.conversations[i];
        let event = match pick {
            0..=5 if !c.messages.is_empty() => {
                let message = c.messages
                    [usize::try_from(u64::from(c.sequence) * 7).unwrap_or(0) % c.messages.len()];
                conversation::Event::MessageRated(conversation::MessageRated {
                    message_id: MessageId(message),
                    rating,
                    previous_rating: None,
                    comment: Some(Personal::new("helpful".into())),
                    rated_at: at,
                })
            }
            6..=7 => conversation::Event::Tagged(conversation::Tagged {
                added: vec!["reviewed".into()],
                tags_before: vec!["ops".into()],
                tags: vec!["ops".into(), "reviewed".into()],
            }),
            8 => {
                c.status = ConversationStatus::Archived;
                conversation::Event::Archived(conversation::StatusChanged {
                    from: ConversationStatus::Active,
                    to: ConversationStatus::Archived,
                    at,
                })
            }
            _ => {
                c.status = ConversationStatus::Deleted;
                conversation::Event::Deleted(conversation::StatusChanged {
                    from: ConversationStatus::Active,
                    to: ConversationStatus::Deleted,
                    at,
                })
            }
        };
        let (id, owner, version) = (c.id, c.owner, c.version);
        c.version += 1;
        Some(Self::request::<conversation::Conversation>(
            id,
            version,
            Some(owner),
            &[event],
        ))
    }

    fn workflow_activity(&mut self) -> Option<Result<AppendRequest, CodecError>> {
        let at = self.tick();
        let actor = self.any_user();
        if self.workflows.len() < 3 || self.rng.chance(30) {
            let id = self.rng.uuid();
            self.workflows.push((id, 2, 1, WorkflowStatus::Active));
            let created = workflow::Event::Created(workflow::Created {
                name: format!("deploy-{}", self.workflows.len()),
                description: Some(self.text(5, 20)),
                definition: json!({"steps": ["build", "test", "deploy"], "timeout_s": 600}),
                triggers: Some(json!({"on": "push"})),
                parameters: None,
                tags: vec!["ci".into()],
                environment: [("REGION".to_string(), "eu-west-1".to_string())].into(),
                version: 1,
                max_retries: 2,
                created_at: at,
            });
            let activated = workflow::Event::Activated(workflow::StatusChanged {
                from: WorkflowStatus::Draft,
                to: WorkflowStatus::Active,
                at,
            });
            return Some(Self::request::<workflow::Workflow>(
                id,
                0,
                actor,
                &[created, activated],
            ));
        }
        let i = self.rng.below(self.workflows.len());
        let (id, version, wf_version, _) = self.workflows[i];
        self.workflows[i].1 += 1;
        self.workflows[i].2 += 1;
        let event = workflow::Event::Updated(workflow::Updated {
            version: wf_version + 1,
            description: Some(self.text(5, 20)),
            definition: Some(json!({"steps": ["build", "test", "canary", "deploy"]})),
            triggers: None,
            parameters: None,
            tags: None,
            environment: None,
            max_retries: 3,
            updated_at: at,
        });
        Some(Self::request::<workflow::Workflow>(
            id,
            version,
            actor,
            &[event],
        ))
    }

    fn execution_activity(&mut self) -> Option<Result<AppendRequest, CodecError>> {
        let at = self.tick();
        if self.executions.len() < 5 || self.rng.chance(20) {
            if self.workflows.is_empty() {
                return None;
            }
            let (workflow_id, _, wf_version, _) =
                self.workflows[self.rng.below(self.workflows.len())];
            let id = self.rng.uuid();
            let started_by = self.any_user();
            self.executions.push(Exec {
                id,
                version: 1,
                started: at,
                steps_total: 0,
                succeeded: 0,
                step: None,
            });
            return Some(Self::request::<execution::Execution>(
                id,
                0,
                started_by,
                &[execution::Event::Started(execution::Started {
                    workflow_id: WorkflowId(workflow_id),
                    workflow_version: wf_version,
                    trigger_source: "api".into(),
                    inputs: Some(json!({"ref": "main"})),
                    priority: self.rng.below(10) as u8,
                    max_retries: 2,
                    started_by: started_by.map(UserId),
                    started_at: at,
                })],
            ));
        }
        let i = self.rng.below(self.executions.len());
        let fail = self.rng.chance(15);
        let step_name = self.text(1, 2);
        let e = &mut self.executions[i];
        let (id, version) = (e.id, e.version);
        let event = match e.step {
            None if e.steps_total >= 3 => {
                let done = self.executions.swap_remove(i);
                let duration_ms =
                    u64::try_from((at - done.started).num_milliseconds()).unwrap_or(0);
                let finished = execution::Finished {
                    status: ExecutionStatus::Succeeded,
                    outputs: Some(json!({"artifact": "build-42"})),
                    error: None,
                    duration_ms,
                    finished_at: at,
                };
                return Some(Self::request::<execution::Execution>(
                    id,
                    version,
                    None,
                    &[execution::Event::Completed(finished)],
                ));
            }
            None => {
                let step = Uuid::now_v7();
                e.step = Some((step, 1, false));
                e.steps_total += 1;
                execution::Event::StepStarted(execution::StepStarted {
                    step_id: StepId(step),
                    name: step_name,
                    input: Some(json!({"n": e.steps_total})),
                    attempt: 1,
                    started_at: at,
                })
            }
            Some((step, attempt, true)) => {
                e.step = Some((step, attempt + 1, false));
                execution::Event::StepRetried(execution::StepRetried {
                    step_id: StepId(step),
                    name: step_name,
                    attempt: attempt + 1,
                    priority: 5,
                    retried_at: at,
                })
            }
            Some((step, attempt, false)) if fail && attempt < 3 => {
                e.step = Some((step, attempt, true));
                execution::Event::StepFailed(execution::StepFailed {
                    step_id: StepId(step),
                    error: "exit status 1".into(),
                    retryable: true,
                    attempt,
                    duration_ms: 1200,
                    failed_at: at,
                })
            }
            Some((step, attempt, false)) => {
                e.step = None;
                e.succeeded += 1;
                execution::Event::StepCompleted(execution::StepCompleted {
                    step_id: StepId(step),
                    output: Some(json!({"ok": true})),
                    attempt,
                    duration_ms: 800,
                    completed_at: at,
                    steps_succeeded: e.succeeded,
                    steps_total: e.steps_total,
                })
            }
        };
        e.version += 1;
        Some(Self::request::<execution::Execution>(
            id,
            version,
            None,
            &[event],
        ))
    }

    fn incident_activity(&mut self) -> Option<Result<AppendRequest, CodecError>> {
        use IncidentStatus as S;
        let at = self.tick();
        let actor = self.any_user();
        if self.incidents.len() < 3 || self.rng.chance(25) {
            let id = self.rng.uuid();
            let severity = [
                Severity::Critical,
                Severity::High,
                Severity::Medium,
                Severity::Low,
            ][self.rng.below(4)];
            self.incidents.push(Inc {
                id,
                version: 1,
                status: S::Open,
                severity,
                opened: at,
            });
            return Some(Self::request::<incident::Incident>(
                id,
                0,
                actor,
                &[incident::Event::Opened(incident::Opened {
                    title: self.text(3, 8),
                    description: self.text(20, 80),
                    severity,
                    affected_services: vec!["api".into(), "billing".into()],
                    blast_radius: Some("eu-west".into()),
                    opened_by: actor.map(UserId),
                    opened_at: at,
                })],
            ));
        }
        let i = self.rng.below(self.incidents.len());
        let note = self.text(5, 40);
        let inc = &mut self.incidents[i];
        let (id, version, before) = (inc.id, inc.version, inc.status);
        let since = u64::try_from((at - inc.opened).num_milliseconds()).unwrap_or(0);
        let event = match (inc.status, self.rng.below(4)) {
            (S::Open, _) => {
                inc.status = S::Investigating;
                incident::Event::Assigned(incident::Assigned {
                    assignee_id: UserId(actor.unwrap_or(id)),
                    previous_assignee_id: None,
                    status_before: before,
                    status: S::Investigating,
                    at,
                })
            }
            (S::Investigating, 0) => incident::Event::NoteAdded(incident::NoteAdded {
                author: actor.map(UserId),
                text: Personal::new(note),
                at,
            }),
            (S::Investigating, 1) => {
                let to = if inc.severity == Severity::Low {
                    Severity::Medium
                } else {
                    Severity::Low
                };
                let from = inc.severity;
                inc.severity = to;
                incident::Event::SeverityChanged(incident::SeverityChanged { from, to, at })
            }
            (S::Investigating, _) => {
                inc.status = S::Mitigated;
                incident::Event::Mitigated(incident::Mitigated {
                    summary: "rolled back".into(),
                    status_before: before,
                    at,
                    time_to_mitigate_ms: since,
                })
            }
            (S::Mitigated, _) => {
                inc.status = S::Resolved;
                incident::Event::Resolved(incident::Resolved {
                    root_cause: "bad config".into(),
                    remediation_steps: vec!["add validation".into(), "add alert".into()],
                    status_before: before,
                    at,
                    time_to_resolve_ms: since,
                    title: "incident".into(),
                    description: "resolved".into(),
                    severity: inc.severity,
                    affected_services: vec!["api".into()],
                })
            }
            (S::Resolved, 0) => {
                inc.status = S::Investigating;
                incident::Event::Reopened(incident::Reopened {
                    reason: "recurred".into(),
                    status_before: before,
                    at,
                })
            }
            (S::Resolved, _) => {
                inc.status = S::Closed;
                incident::Event::Closed(incident::Closed { at })
            }
            (S::Closed, _) => return None,
        };
        inc.version += 1;
        Some(Self::request::<incident::Incident>(
            id,
            version,
            actor,
            &[event],
        ))
    }

    fn runbook_activity(&mut self) -> Option<Result<AppendRequest, CodecError>> {
        let at = self.tick();
        if self.runbooks.len() < 2 || self.rng.chance(15) {
            let id = self.rng.uuid();
            self.runbooks.push((id, 1, 0, 0));
            return Some(Self::request::<runbook::Runbook>(
                id,
                0,
                None,
                &[runbook::Event::Created(runbook::Created {
                    name: format!("runbook-{}", self.runbooks.len()),
                    description: self.text(10, 30),
                    trigger_conditions: json!({"alert": "HighLatency"}),
                    steps: vec!["check dashboards".into(), "restart consumers".into()],
                    tags: vec!["latency".into()],
                    version: 1,
                    created_at: at,
                })],
            ));
        }
        let i = self.rng.below(self.runbooks.len());
        let succeeded = self.rng.chance(80);
        let r = &mut self.runbooks[i];
        let (id, version) = (r.0, r.1);
        r.1 += 1;
        r.2 += 1;
        r.3 += u64::from(succeeded);
        let event = runbook::Event::ExecutionRecorded(runbook::ExecutionRecorded {
            succeeded,
            duration_ms: 30_000,
            execution_count: r.2,
            success_count: r.3,
            recorded_at: at,
        });
        Some(Self::request::<runbook::Runbook>(
            id,
            version,
            None,
            &[event],
        ))
    }

    fn knowledge_activity(&mut self) -> Option<Result<AppendRequest, CodecError>> {
        let at = self.tick();
        let content = self.text(50, 200);
        if self.knowledge.is_empty() || self.rng.chance(60) {
            let id = self.rng.uuid();
            let code = self.rng.chance(50);
            self.knowledge.push((id, 1, code, false));
            let event = if code {
                knowledge::Event::CodeIndexed(knowledge::CodeIndexed {
                    project_id: ProjectId(Uuid::nil()),
                    file_path: format!("src/{}.rs", self.rng.below(100)),
                    function_name: Some("handle".into()),
                    language: "rust".into(),
                    content,
                    embedding: None,
                    revision: 1,
                    indexed_at: at,
                })
            } else {
                knowledge::Event::DocumentIndexed(knowledge::DocumentIndexed {
                    title: self.text(2, 5),
                    section: None,
                    url: Some("https://docs.example.com/ops".into()),
                    content,
                    embedding: None,
                    revision: 1,
                    indexed_at: at,
                })
            };
            return Some(Self::request::<knowledge::Knowledge>(id, 0, None, &[event]));
        }
        let i = self.rng.below(self.knowledge.len());
        let (id, version, code, removed) = self.knowledge[i];
        if removed {
            return None;
        }
        self.knowledge[i].3 = true;
        self.knowledge[i].1 += 1;
        Some(Self::request::<knowledge::Knowledge>(
            id,
            version,
            None,
            &[knowledge::Event::Removed(knowledge::Removed {
                kind: if code { "code" } else { "document" }.into(),
                at,
            })],
        ))
    }
}
