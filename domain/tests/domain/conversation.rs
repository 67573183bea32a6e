use domain::conversation::{Command, Conversation, Event};
use domain::ids::{MessageId, UserId};
use domain::values::{ConversationStatus, Role};
use domain::Aggregate;
use serde_json::json;

use crate::{assert_code, ctx, given_when, history, json, user};

fn started(owner: UserId) -> Vec<Event> {
    history::<Conversation>(vec![(
        Command::Start(json(
            json!({"title": "Deploy failed", "model": "gpt-4o", "tags": ["ops"]}),
        )),
        ctx(user(owner, Role::Operator)),
    )])
}

fn append(id: MessageId, tokens_in: u32, cost: &str) -> Command {
    Command::AppendMessage(json(json!({
        "message_id": id, "role": "assistant", "content": "Rolled back.",
        "tokens_in": tokens_in, "tokens_out": 10, "cost_usd": cost
    })))
}

#[test]
fn start_records_owner_title_and_tags() {
    let owner = UserId::new();
    let events = started(owner);
    let Event::Started(e) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(e.owner_id, owner);
    assert_eq!(e.tags, vec!["ops".to_string()]);
    assert_eq!(
        e.title
            .as_ref()
            .and_then(|t| t.as_ref())
            .map(String::as_str),
        Some("Deploy failed")
    );
}

#[test]
fn start_twice_or_anonymously_is_refused() {
    let owner = UserId::new();
    let again = Command::Start(json(json!({})));
    assert_code(
        given_when::<Conversation>(
            &started(owner),
            again.clone(),
            &ctx(user(owner, Role::Operator)),
        ),
        "already_exists",
    );
    assert_code(
        given_when::<Conversation>(&[], again, &ctx(domain::Actor::Anonymous)),
        "forbidden",
    );
}

#[test]
fn messages_carry_sequence_and_running_totals() {
    let owner = UserId::new();
    let mut past = started(owner);
    let actor = ctx(user(owner, Role::Viewer));
    past.extend(
        given_when::<Conversation>(&past, append(MessageId::new(), 100, "0.001"), &actor)
            .expect("first"),
    );
    let second = given_when::<Conversation>(&past, append(MessageId::new(), 50, "0.0025"), &actor)
        .expect("second");
    let Event::MessageAppended(m) = &second[0] else {
        panic!("{second:?}")
    };
    assert_eq!(m.sequence, 2);
    assert_eq!(m.total_tokens, 170);
    assert_eq!(m.total_cost_usd.to_string(), "0.003500");
}

#[test]
fn message_rules() {
    let owner = UserId::new();
    let id = MessageId::new();
    let owner_ctx = ctx(user(owner, Role::Operator));
    let mut past = started(owner);
    past.extend(given_when::<Conversation>(&past, append(id, 1, "0"), &owner_ctx).expect("append"));
    assert_code(
        given_when::<Conversation>(&past, append(id, 1, "0"), &owner_ctx),
        "duplicate_message_id",
    );
    let stranger = ctx(user(UserId::new(), Role::Operator));
    assert_code(
        given_when::<Conversation>(&past, append(MessageId::new(), 1, "0"), &stranger),
        "forbidden",
    );
    let admin = ctx(user(UserId::new(), Role::Admin));
    assert!(given_when::<Conversation>(&past, append(MessageId::new(), 1, "0"), &admin).is_ok());
    let wrong_dimension = Command::AppendMessage(json(json!({
        "message_id": MessageId::new(), "role": "user", "content": "hi", "embedding": [0.1, 0.2]
    })));
    assert_code(
        given_when::<Conversation>(&past, wrong_dimension, &owner_ctx),
        "invalid",
    );
    assert_code(
        given_when::<Conversation>(&[], append(MessageId::new(), 1, "0"), &owner_ctx),
        "not_found",
    );

    let archived = {
        let mut p = past.clone();
        p.extend(
            given_when::<Conversation>(&p, Command::Archive(Default::default()), &owner_ctx)
                .expect("archive"),
        );
        p
    };
    assert_code(
        given_when::<Conversation>(&archived, append(MessageId::new(), 1, "0"), &owner_ctx),
        "conversation_archived",
    );
    assert_code(
        given_when::<Conversation>(&archived, Command::Archive(Default::default()), &owner_ctx),
        "conversation_archived",
    );
    let deleted = {
        let mut p = archived.clone();
        p.extend(
            given_when::<Conversation>(&p, Command::Delete(Default::default()), &owner_ctx)
                .expect("delete"),
        );
        p
    };
    assert_eq!(
        Conversation::replay(&deleted).status,
        Some(ConversationStatus::Deleted)
    );
    assert_code(
        given_when::<Conversation>(&deleted, append(MessageId::new(), 1, "0"), &owner_ctx),
        "conversation_deleted",
    );
    assert_code(
        given_when::<Conversation>(&deleted, Command::Delete(Default::default()), &owner_ctx),
        "conversation_deleted",
    );
}

#[test]
fn rating_and_tagging() {
    let owner = UserId::new();
    let id = MessageId::new();
    let owner_ctx = ctx(user(owner, Role::Operator));
    let mut past = started(owner);
    past.extend(given_when::<Conversation>(&past, append(id, 1, "0"), &owner_ctx).expect("append"));
    let rate = |rating: u8, message: MessageId| {
        Command::RateMessage(json(
            json!({"message_id": message, "rating": rating, "comment": "good"}),
        ))
    };
    let rated = given_when::<Conversation>(&past, rate(5, id), &owner_ctx).expect("rate");
    past.extend(rated);
    let again = given_when::<Conversation>(&past, rate(3, id), &owner_ctx).expect("re-rate");
    let Event::MessageRated(r) = &again[0] else {
        panic!()
    };
    assert_eq!((r.rating, r.previous_rating), (3, Some(5)));
    assert_code(
        given_when::<Conversation>(&past, rate(6, id), &owner_ctx),
        "invalid",
    );
    assert_code(
        given_when::<Conversation>(&past, rate(4, MessageId::new()), &owner_ctx),
        "message_not_found",
    );

    let tag = |tags: serde_json::Value| Command::Tag(json(json!({ "tags": tags })));
    let tagged =
        given_when::<Conversation>(&past, tag(json!(["db", "ops"])), &owner_ctx).expect("tag");
    let Event::Tagged(t) = &tagged[0] else {
        panic!()
    };
    assert_eq!(
        (t.added.clone(), t.tags.clone()),
        (
            vec!["db".to_string()],
            vec!["db".to_string(), "ops".to_string()]
        )
    );
    assert_code(
        given_when::<Conversation>(&past, tag(json!(["ops"])), &owner_ctx),
        "tags_unchanged",
    );
}

/// A conversation's total may grow past the largest single cost, and the
/// event saying so reads back (it once failed to decode, stopping every
/// projection that read it and the conversation itself).
#[test]
fn totals_beyond_the_largest_single_cost_read_back() {
    let owner = UserId::new();
    let mut events = started(owner);
    for _ in 0..3 {
        let state = Conversation::replay(&events);
        let mut new = Conversation::decide(
            &state,
            append(MessageId::new(), 1, "1000000"),
            &ctx(user(owner, Role::Operator)),
        )
        .expect("appended");
        events.append(&mut new);
    }
    let Event::MessageAppended(last) = events.last().expect("event") else {
        panic!("{events:?}")
    };
    assert_eq!(last.total_cost_usd.to_string(), "3000000.000000");
    let bytes = events.last().expect("event").encode().expect("encodes");
    let decoded = Event::decode("message_appended", 2, &bytes).expect("reads back");
    assert_eq!(&decoded, events.last().expect("event"));
}
