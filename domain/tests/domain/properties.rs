//! Property tests: random command sequences keep the rules; random bytes
//! never make the decoders panic.

use domain::context::{Actor, Scopes, WorkflowFacts};
use domain::conversation::{self, Conversation};
use domain::execution::{self, Execution};
use domain::ids::{MessageId, StepId, UserId, WorkflowId};
use domain::incident::{self, Incident};
use domain::values::{ExecutionStatus, IncidentStatus, Role, StepStatus, WorkflowStatus};
use domain::{Aggregate, Command, Context};
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

use crate::{ctx_at, json};

/// Decides each command in turn, keeping the accepted events, and checks
/// after every step that folding all events gives the state evolved so far.
fn run<A: Aggregate>(commands: Vec<(A::Command, Context)>) -> Vec<A::Event> {
    let mut events: Vec<A::Event> = Vec::new();
    let mut state = A::State::default();
    for (command, ctx) in commands {
        if let Ok(new) = A::decide(&state, command, &ctx) {
            for event in &new {
                state = A::evolve(state, event);
            }
            events.extend(new);
            assert_eq!(
                A::replay(&events),
                state,
                "fold of stored events equals the evolved state"
            );
        }
    }
    events
}

fn message_ids() -> Vec<MessageId> {
    (1..=4u128).map(|n| MessageId(Uuid::from_u128(n))).collect()
}

fn conversation_command(
    choice: u8,
    pick: usize,
    owner: UserId,
) -> (conversation::Command, Context) {
    let ids = message_ids();
    let id = ids[pick % ids.len()];
    let who = if pick % 5 == 0 {
        UserId(Uuid::from_u128(99))
    } else {
        owner
    };
    let ctx = ctx_at(
        Actor::User {
            id: who,
            role: Role::Operator,
            scopes: Scopes::SESSION,
        },
        i64::from(choice),
    );
    let command = match choice % 7 {
        0 => conversation::Command::Start(json(json!({"tags": ["a"]}))),
        1 | 2 => conversation::Command::AppendMessage(json(
            json!({"message_id": id, "role": "user", "content": "x", "tokens_in": pick % 100, "tokens_out": 3, "cost_usd": "0.000123"}),
        )),
        3 => conversation::Command::RateMessage(json(
            json!({"message_id": id, "rating": 1 + pick % 5}),
        )),
        4 => conversation::Command::Tag(json(json!({"tags": [format!("t{}", pick % 3)]}))),
        5 => conversation::Command::Archive(Default::default()),
        _ => conversation::Command::Delete(Default::default()),
    };
    (command, ctx)
}

const SEVERITIES: [&str; 3] = ["low", "high", "critical"];

fn incident_command(choice: u8, pick: usize) -> (incident::Command, Context) {
    let role = if pick % 7 == 0 {
        Role::Viewer
    } else {
        Role::Operator
    };
    let ctx = ctx_at(
        Actor::User {
            id: UserId(Uuid::from_u128(1)),
            role,
            scopes: Scopes::SESSION,
        },
        i64::from(choice),
    );
    let command = match choice % 8 {
        0 => incident::Command::Open(json(
            json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["a"]}),
        )),
        1 => incident::Command::Assign(json(
            json!({"assignee_id": UserId(Uuid::from_u128(pick as u128 % 3 + 1))}),
        )),
        2 => incident::Command::ChangeSeverity(json(json!({"severity": SEVERITIES[pick % 3]}))),
        3 => incident::Command::AddNote(json(json!({"text": "n"}))),
        4 => incident::Command::Mitigate(json(json!({"summary": "s"}))),
        5 => incident::Command::Resolve(json(json!({"root_cause": "r", "remediation_steps": []}))),
        6 => incident::Command::Close(Default::default()),
        _ => incident::Command::Reopen(json(json!({"reason": "r"}))),
    };
    (command, ctx)
}

fn execution_command(choice: u8, pick: usize) -> (execution::Command, Context) {
    let mut ctx = ctx_at(
        Actor::User {
            id: UserId(Uuid::from_u128(1)),
            role: Role::Operator,
            scopes: Scopes::SESSION,
        },
        i64::from(choice),
    );
    ctx.workflow = Some(WorkflowFacts {
        version: 1,
        status: WorkflowStatus::Active,
        max_retries: 2,
    });
    let step = StepId(Uuid::from_u128(pick as u128 % 3 + 1));
    let command = match choice % 9 {
        0 => execution::Command::Start(json(
            json!({"workflow_id": WorkflowId(Uuid::from_u128(7)), "trigger_source": "t"}),
        )),
        1 => execution::Command::StartStep(json(json!({"step_id": step, "name": "s"}))),
        2 => execution::Command::CompleteStep(json(json!({"step_id": step}))),
        3 | 4 => execution::Command::FailStep(json(
            json!({"step_id": step, "error": "e", "retryable": pick % 4 != 0}),
        )),
        5 | 6 => execution::Command::RetryStep(json(json!({"step_id": step}))),
        7 => execution::Command::Complete(json(json!({}))),
        _ => {
            if pick % 2 == 0 {
                execution::Command::Fail(json(json!({"error": "e"})))
            } else {
                execution::Command::Cancel(json(json!({"reason": "r"})))
            }
        }
    };
    (command, ctx)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn conversations_keep_their_rules(steps in proptest::collection::vec((any::<u8>(), any::<usize>()), 1..60)) {
        let owner = UserId(Uuid::from_u128(1));
        let mut commands = vec![(conversation::Command::Start(json(json!({}))), ctx_at(Actor::User { id: owner, role: Role::Operator, scopes: Scopes::SESSION }, 0))];
        commands.extend(steps.into_iter().map(|(c, p)| conversation_command(c, p, owner)));
        let events = run::<Conversation>(commands);
        let mut sequence = 0;
        let mut tokens = 0u64;
        let mut seen = std::collections::BTreeSet::new();
        let mut status = ConversationState::Active;
        for event in &events {
            match event {
                conversation::Event::MessageAppended(m) => {
                    prop_assert_eq!(status, ConversationState::Active, "no message after archive or delete");
                    sequence += 1;
                    tokens += u64::from(m.tokens_in + m.tokens_out);
                    prop_assert_eq!(m.sequence, sequence);
                    prop_assert_eq!(m.total_tokens, tokens);
                    prop_assert!(seen.insert(m.message_id), "message ids are unique");
                }
                conversation::Event::Archived(_) => status = ConversationState::Archived,
                conversation::Event::Deleted(_) => status = ConversationState::Deleted,
                conversation::Event::Started(_) => {}
                other => prop_assert!(status != ConversationState::Deleted, "{other:?} after delete"),
            }
        }
    }

    #[test]
    fn incidents_move_only_along_the_state_machine(steps in proptest::collection::vec((any::<u8>(), any::<usize>()), 1..60)) {
        let events = run::<Incident>(steps.into_iter().map(|(c, p)| incident_command(c, p)).collect());
        let mut status: Option<IncidentStatus> = None;
        for event in &events {
            let before = status;
            status = match event {
                incident::Event::Opened(_) => { prop_assert!(before.is_none()); Some(IncidentStatus::Open) }
                incident::Event::Assigned(a) => Some(a.status),
                incident::Event::Mitigated(_) => { prop_assert_eq!(before, Some(IncidentStatus::Investigating)); Some(IncidentStatus::Mitigated) }
                incident::Event::Resolved(_) => { prop_assert!(matches!(before, Some(IncidentStatus::Investigating | IncidentStatus::Mitigated))); Some(IncidentStatus::Resolved) }
                incident::Event::Closed(_) => { prop_assert_eq!(before, Some(IncidentStatus::Resolved)); Some(IncidentStatus::Closed) }
                incident::Event::Reopened(_) => { prop_assert!(matches!(before, Some(IncidentStatus::Resolved | IncidentStatus::Closed))); Some(IncidentStatus::Investigating) }
                _ => before,
            };
        }
        prop_assert_eq!(Incident::replay(&events).status, status);
    }

    #[test]
    fn executions_finish_once_and_bound_retries(steps in proptest::collection::vec((any::<u8>(), any::<usize>()), 1..80)) {
        let mut commands = vec![execution_command(0, 0)];
        commands.extend(steps.into_iter().map(|(c, p)| execution_command(c, p)));
        let events = run::<Execution>(commands);
        let mut finished = false;
        for event in &events {
            prop_assert!(!finished, "nothing after the run finished: {:?}", event);
            match event {
                execution::Event::Completed(_) | execution::Event::Failed(_) | execution::Event::Cancelled(_) => finished = true,
                execution::Event::StepRetried(r) => prop_assert!(r.attempt <= 3, "at most max_retries (2) retries"),
                _ => {}
            }
        }
        let state = Execution::replay(&events);
        if state.status == Some(ExecutionStatus::Succeeded) {
            prop_assert!(state.steps.values().all(|s| s.status == StepStatus::Succeeded));
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(index in 0usize..64, bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let command_type = Command::TYPES[index % Command::TYPES.len()];
        let _ = Command::from_msgpack(command_type, &bytes);
        let _ = Command::from_json(command_type, &bytes);
        let _ = domain::incident::Event::decode("incident_opened", 1, &bytes);
        let _ = domain::conversation::Event::decode("message_appended", 2, &bytes);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConversationState {
    Active,
    Archived,
    Deleted,
}
