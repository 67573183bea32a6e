use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use domain::codec::{self, CodecError};
use domain::context::Scopes;
use domain::context::{Actor, LoginFacts, NewApiKey, WorkflowFacts};
use domain::ids::{ApiKeyId, MessageId, ProjectId, StepId, UserId, WorkflowId};
use domain::user::{RecordLogin, User};
use domain::values::{Role, WorkflowStatus};
use domain::{
    conversation, execution, incident, knowledge, runbook, session, user, workflow, Aggregate,
    Context,
};
use serde_json::json;

use crate::{ctx, ctx_at, history, json, t0};

fn admin() -> Context {
    let mut c = ctx(Actor::Bootstrap);
    c.password_hash = Some("hash".into());
    c.password_verified = Some(true);
    c.new_api_key = Some(NewApiKey {
        key_id: ApiKeyId::new(),
        key_hash: "kh".into(),
        prefix: "cpk".into(),
    });
    c.workflow = Some(WorkflowFacts {
        version: 1,
        status: WorkflowStatus::Active,
        max_retries: 3,
    });
    c
}

macro_rules! check_codec {
    ($module:ident, $events:expr) => {{
        let events: Vec<$module::Event> = $events;
        let mut seen = BTreeSet::new();
        for event in &events {
            let (name, version) = (event.event_type(), event.schema_version());
            seen.insert(name);
            let bytes = event.encode().expect("encode");
            assert_eq!(
                &$module::Event::decode(name, version, &bytes).expect("decode"),
                event,
                "{name} MessagePack round trip"
            );
            let as_json = serde_json::to_value(event).expect("json");
            let via_json = codec::encode(&as_json).expect("encode json");
            assert_eq!(
                &$module::Event::decode(name, version, &via_json).expect("decode json"),
                event,
                "{name} JSON round trip"
            );
        }
        let all: BTreeSet<&str> = $module::Event::TYPES.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            seen,
            all,
            "every event type of {} is exercised",
            stringify!($module)
        );
    }};
}

#[test]
fn every_event_type_round_trips_through_messagepack_and_json() {
    let uid = UserId::new();
    let mut user_events = Vec::new();
    let me = |c: Context| Context {
        actor: Actor::User {
            id: uid,
            role: Role::Admin,
            scopes: Scopes::SESSION,
        },
        ..c
    };
    for command in [
        user::Command::Register(json(
            json!({"email": "a@example.com", "display_name": "A", "password": "correct horse", "role": "admin"}),
        )),
        user::Command::UpdateProfile(json(json!({"display_name": "B"}))),
        user::Command::ChangeRole(json(json!({"role": "operator"}))),
        user::Command::ChangePassword(json(
            json!({"current_password": "correct horse", "new_password": "battery staple"}),
        )),
        user::Command::EnableMfa(json(json!({"secret": "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"}))),
        user::Command::DisableMfa(Default::default()),
        user::Command::IssueApiKey(json(json!({"name": "k", "scopes": ["read"]}))),
        user::Command::RecordLogin(RecordLogin {
            succeeded: false,
            ip_address: Some("192.0.2.1".into()),
        }),
        user::Command::RecordLogin(RecordLogin {
            succeeded: true,
            ip_address: None,
        }),
        user::Command::Lock(json(json!({"reason": "r"}))),
        user::Command::Unlock(Default::default()),
        user::Command::Delete(Default::default()),
        user::Command::Forget(Default::default()),
    ] {
        let c = if user_events.is_empty() {
            admin()
        } else {
            me(admin())
        };
        user_events.extend(
            User::decide(
                &User::replay(&user_events),
                command,
                &c.clone().for_aggregate(uid),
            )
            .expect("user step"),
        );
        if user_events.len() == 7 {
            let key_id = match user_events.last() {
                Some(user::Event::ApiKeyIssued(k)) => k.key_id,
                _ => panic!("issued"),
            };
            user_events.extend(
                User::decide(
                    &User::replay(&user_events),
                    user::Command::RevokeApiKey(json(json!({"key_id": key_id}))),
                    &me(admin()).for_aggregate(uid),
                )
                .expect("revoke"),
            );
        }
    }
    check_codec!(user, user_events);

    let mut login = admin();
    login.actor = Actor::Anonymous;
    login.token_hash = Some("th".into());
    login.login = Some(LoginFacts {
        user_id: uid,
        role: Role::Operator,
        locked: false,
        deleted: false,
        mfa_enabled: false,
        mfa_step: None,
        last_mfa_step: None,
    });
    check_codec!(
        session,
        history::<session::Session>(vec![
            (
                session::Command::Start(json(
                    json!({"email": "a@example.com", "password": "correct horse", "ip_address": "192.0.2.1", "user_agent": "ua"})
                )),
                login
            ),
            (
                session::Command::Touch(Default::default()),
                ctx_at(
                    Actor::User {
                        id: uid,
                        role: Role::Operator,
                        scopes: Scopes::SESSION,
                    },
                    5
                )
            ),
            (
                session::Command::End(Default::default()),
                ctx_at(
                    Actor::User {
                        id: uid,
                        role: Role::Operator,
                        scopes: Scopes::SESSION,
                    },
                    6
                )
            ),
        ])
    );

    let owner = || {
        ctx(Actor::User {
            id: uid,
            role: Role::Operator,
            scopes: Scopes::SESSION,
        })
    };
    let message = MessageId::new();
    check_codec!(
        conversation,
        history::<conversation::Conversation>(vec![
            (
                conversation::Command::Start(json(json!({"title": "t", "context": {"a": [1, 2]}}))),
                owner()
            ),
            (
                conversation::Command::AppendMessage(json(
                    json!({"message_id": message, "role": "user", "content": "hello", "cost_usd": "0.5", "embedding": vec![0.25f32; 384]})
                )),
                owner()
            ),
            (
                conversation::Command::RateMessage(json(
                    json!({"message_id": message, "rating": 5})
                )),
                owner()
            ),
            (
                conversation::Command::Tag(json(json!({"tags": ["x"]}))),
                owner()
            ),
            (conversation::Command::Archive(Default::default()), owner()),
            (conversation::Command::Delete(Default::default()), owner()),
        ])
    );

    check_codec!(
        workflow,
        history::<workflow::Workflow>(vec![
            (
                workflow::Command::Create(json(json!({"name": "w", "definition": {"steps": [1]}}))),
                admin()
            ),
            (
                workflow::Command::Update(json(json!({"tags": ["t"]}))),
                admin()
            ),
            (workflow::Command::Activate(Default::default()), admin()),
            (workflow::Command::Deactivate(Default::default()), admin()),
            (workflow::Command::Delete(Default::default()), admin()),
        ])
    );

    let (a, b) = (StepId::new(), StepId::new());
    let start = || {
        execution::Command::Start(json(
            json!({"workflow_id": WorkflowId::new(), "trigger_source": "t"}),
        ))
    };
    let mut runs = history::<execution::Execution>(vec![
        (start(), admin()),
        (
            execution::Command::StartStep(json(json!({"step_id": a, "name": "a"}))),
            admin(),
        ),
        (
            execution::Command::FailStep(json(
                json!({"step_id": a, "error": "e", "retryable": true}),
            )),
            admin(),
        ),
        (
            execution::Command::RetryStep(json(json!({"step_id": a}))),
            admin(),
        ),
        (
            execution::Command::CompleteStep(json(json!({"step_id": a}))),
            admin(),
        ),
        (execution::Command::Complete(json(json!({}))), admin()),
    ]);
    runs.extend(history::<execution::Execution>(vec![
        (start(), admin()),
        (
            execution::Command::Fail(json(json!({"error": "e"}))),
            admin(),
        ),
    ]));
    runs.extend(history::<execution::Execution>(vec![
        (start(), admin()),
        (
            execution::Command::StartStep(json(json!({"step_id": b, "name": "b"}))),
            admin(),
        ),
        (
            execution::Command::Cancel(json(json!({"reason": "r"}))),
            admin(),
        ),
    ]));
    check_codec!(execution, runs);

    check_codec!(
        incident,
        history::<incident::Incident>(vec![
            (
                incident::Command::Open(json(
                    json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["a"]})
                )),
                admin()
            ),
            (
                incident::Command::Assign(json(json!({"assignee_id": uid}))),
                admin()
            ),
            (
                incident::Command::ChangeSeverity(json(json!({"severity": "high"}))),
                admin()
            ),
            (
                incident::Command::AddNote(json(json!({"text": "n"}))),
                admin()
            ),
            (
                incident::Command::Mitigate(json(json!({"summary": "s"}))),
                admin()
            ),
            (
                incident::Command::Resolve(json(
                    json!({"root_cause": "r", "remediation_steps": ["x"]})
                )),
                admin()
            ),
            (incident::Command::Close(Default::default()), admin()),
            (
                incident::Command::Reopen(json(json!({"reason": "r"}))),
                admin()
            ),
        ])
    );

    check_codec!(
        runbook,
        history::<runbook::Runbook>(vec![
            (
                runbook::Command::Create(json(
                    json!({"name": "n", "description": "d", "trigger_conditions": {}, "steps": ["s"]})
                )),
                admin()
            ),
            (
                runbook::Command::Update(json(json!({"name": "m"}))),
                admin()
            ),
            (
                runbook::Command::RecordExecution(json(
                    json!({"succeeded": true, "duration_ms": 3})
                )),
                admin()
            ),
            (runbook::Command::Archive(Default::default()), admin()),
        ])
    );

    let mut items = history::<knowledge::Knowledge>(vec![
        (
            knowledge::Command::IndexCode(json(
                json!({"project_id": ProjectId::new(), "file_path": "a.rs", "language": "rust", "content": "x"}),
            )),
            admin(),
        ),
        (knowledge::Command::Remove(Default::default()), admin()),
    ]);
    items.extend(history::<knowledge::Knowledge>(vec![(
        knowledge::Command::IndexDocument(json(json!({"title": "t", "content": "c"}))),
        admin(),
    )]));
    check_codec!(knowledge, items);
}

/// What earlier code wrote, kept here as the old shapes.
#[derive(serde::Serialize)]
struct MessageAppendedV1 {
    message_id: MessageId,
    sequence: u32,
    role: &'static str,
    content: &'static str,
    tool_calls: Option<()>,
    tool_results: Option<()>,
    tokens: u32,
    cost_usd: &'static str,
    total_tokens: u64,
    total_cost_usd: &'static str,
    embedding: Option<Vec<f32>>,
    appended_at: DateTime<Utc>,
}

#[derive(serde::Serialize)]
struct IncidentOpenedV1 {
    title: &'static str,
    description: &'static str,
    severity: &'static str,
    services: &'static str,
    opened_by: Option<UserId>,
    opened_at: DateTime<Utc>,
}

#[derive(serde::Serialize)]
struct WorkflowCreatedV1 {
    name: &'static str,
    description: Option<String>,
    definition: serde_json::Value,
    triggers: Option<()>,
    parameters: Option<()>,
    tags: Vec<String>,
    version: u32,
    created_at: DateTime<Utc>,
}

/// `message_appended` v1 as it was stored (hex of its MessagePack): a
/// literal, so a change to the v1 encoder above cannot hide a broken upcast.
const MESSAGE_APPENDED_V1_HEX: &str = "8caa6d6573736167655f6964d92430316132316639302d303030302d373030302d383030302d303030303030303030303031a873657175656e636501a4726f6c65a9617373697374616e74a7636f6e74656e74a25f6faa746f6f6c5f63616c6c73c0ac746f6f6c5f726573756c7473c0a6746f6b656e732aa8636f73745f757364a5302e303031ac746f74616c5f746f6b656e732aae746f74616c5f636f73745f757364a5302e303031a9656d62656464696e67c0ab617070656e6465645f6174b4323032362d31312d32375431323a30303a30305a";

fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).expect("ascii"), 16).expect("hex"))
        .collect()
}

#[test]
fn old_schema_versions_are_upcast_on_read() {
    let message_id: MessageId = "01a21f90-0000-7000-8000-000000000001"
        .parse::<uuid::Uuid>()
        .expect("uuid")
        .into();
    let v1 = MessageAppendedV1 {
        message_id,
        sequence: 1,
        role: "assistant",
        content: "_o",
        tool_calls: None,
        tool_results: None,
        tokens: 42,
        cost_usd: "0.001",
        total_tokens: 42,
        total_cost_usd: "0.001",
        embedding: None,
        appended_at: t0(),
    };
    let written = codec::encode(&v1).expect("encode v1");
    assert_eq!(
        written,
        unhex(MESSAGE_APPENDED_V1_HEX),
        "the stored fixture is what v1 wrote"
    );
    let conversation::Event::MessageAppended(m) =
        conversation::Event::decode("message_appended", 1, &written).expect("upcast")
    else {
        panic!()
    };
    assert_eq!((m.tokens_in, m.tokens_out, m.total_tokens), (0, 42, 42));
    assert_eq!(m.content.as_ref().map(String::as_str), Some("_o"));

    let opened = codec::encode(&IncidentOpenedV1 {
        title: "t",
        description: "d",
        severity: "high",
        services: "api, db ,",
        opened_by: None,
        opened_at: t0(),
    })
    .expect("encode");
    let incident::Event::Opened(o) =
        incident::Event::decode("incident_opened", 1, &opened).expect("upcast")
    else {
        panic!()
    };
    assert_eq!(
        (o.affected_services, o.blast_radius),
        (vec!["api".to_string(), "db".to_string()], None)
    );

    let created = codec::encode(&WorkflowCreatedV1 {
        name: "w",
        description: None,
        definition: json!({}),
        triggers: None,
        parameters: None,
        tags: vec![],
        version: 1,
        created_at: t0(),
    })
    .expect("encode");
    let workflow::Event::Created(c) =
        workflow::Event::decode("workflow_created", 1, &created).expect("upcast")
    else {
        panic!()
    };
    assert_eq!(c.max_retries, workflow::DEFAULT_MAX_RETRIES);

    // Every event type whose current version is above 1 has an upcaster from each older version.
    let versioned = conversation::Event::TYPES
        .iter()
        .chain(incident::Event::TYPES)
        .chain(workflow::Event::TYPES)
        .chain(user::Event::TYPES)
        .chain(session::Event::TYPES)
        .chain(execution::Event::TYPES)
        .chain(runbook::Event::TYPES)
        .chain(knowledge::Event::TYPES);
    for (name, current) in versioned {
        for version in 1..*current {
            assert!(
                codec::upcast(name, version, json!({})).is_ok(),
                "{name} v{version} has an upcaster"
            );
        }
    }
}

#[test]
fn unknown_types_future_versions_and_garbage_are_errors() {
    assert!(matches!(
        incident::Event::decode("incident_exploded", 1, &[]),
        Err(CodecError::UnknownType(_))
    ));
    assert!(matches!(
        incident::Event::decode("incident_closed", 9, &[0x80]),
        Err(CodecError::FutureVersion { .. })
    ));
    assert!(matches!(
        incident::Event::decode("incident_closed", 1, &[0xc1, 0xff]),
        Err(CodecError::Decode(_))
    ));
    assert!(matches!(
        codec::upcast("incident_closed", 1, json!({})),
        Err(CodecError::NoUpcaster { .. })
    ));
}

/// Snapshots: every aggregate's state survives encoding (so a long stream
/// can be loaded from one).
#[test]
fn states_round_trip_as_snapshots() {
    fn check<A: Aggregate>(events: &[A::Event]) {
        let state = A::replay(events);
        let bytes = codec::encode(&state).expect("encode state");
        let back: A::State = codec::decode(&bytes).expect("decode state");
        assert_eq!(back, state, "{}", A::STREAM_TYPE);
    }
    let uid = UserId::new();
    let owner = || {
        ctx(Actor::User {
            id: uid,
            role: Role::Operator,
            scopes: Scopes::SESSION,
        })
    };
    let message = MessageId::new();
    check::<conversation::Conversation>(&history::<conversation::Conversation>(vec![
        (
            conversation::Command::Start(json(json!({"tags": ["a", "b"]}))),
            owner(),
        ),
        (
            conversation::Command::AppendMessage(json(
                json!({"message_id": message, "role": "user", "content": "x", "cost_usd": "0.25"}),
            )),
            owner(),
        ),
        (
            conversation::Command::RateMessage(json(json!({"message_id": message, "rating": 3}))),
            owner(),
        ),
    ]));
    let step = StepId::new();
    check::<execution::Execution>(&history::<execution::Execution>(vec![
        (
            execution::Command::Start(json(
                json!({"workflow_id": WorkflowId::new(), "trigger_source": "t"}),
            )),
            admin(),
        ),
        (
            execution::Command::StartStep(json(json!({"step_id": step, "name": "s"}))),
            admin(),
        ),
        (
            execution::Command::FailStep(json(
                json!({"step_id": step, "error": "e", "retryable": true}),
            )),
            admin(),
        ),
    ]));
    check::<incident::Incident>(&history::<incident::Incident>(vec![(
        incident::Command::Open(json(
            json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["a"]}),
        )),
        admin(),
    )]));
    let mut registered = admin();
    registered.aggregate_id = uid.0;
    check::<User>(&history::<User>(vec![
        (
            user::Command::Register(json(
                json!({"email": "a@example.com", "display_name": "A", "password": "correct horse", "role": "admin"}),
            )),
            registered.clone(),
        ),
        (
            user::Command::IssueApiKey(json(json!({"name": "k", "scopes": ["read"]}))),
            registered,
        ),
    ]));
    check::<session::Session>(&[]);
    check::<workflow::Workflow>(&[]);
    check::<runbook::Runbook>(&[]);
    check::<knowledge::Knowledge>(&[]);
}
