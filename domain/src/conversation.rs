//! A conversation between a user and the agent, with its messages.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{MessageId, UserId};
use crate::values::{
    ConversationStatus, CostTotal, CostUsd, Embedding, Label, MessageRole, MessageText,
    ModelConfig, Tags, Text, Title,
};
use crate::{Aggregate, Context, DomainError, Personal};

pub struct Conversation;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    pub title: Option<Title>,
    pub model: Option<Label>,
    pub model_config: Option<ModelConfig>,
    #[serde(default)]
    pub tags: Tags,
    pub context: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendMessage {
    pub message_id: MessageId,
    pub role: MessageRole,
    pub content: MessageText,
    pub tool_calls: Option<Value>,
    pub tool_results: Option<Value>,
    pub tokens_in: Option<u32>,
    pub tokens_out: Option<u32>,
    pub cost_usd: Option<CostUsd>,
    pub embedding: Option<Embedding>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateMessage {
    pub message_id: MessageId,
    pub rating: u8,
    pub comment: Option<Text>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tag {
    pub tags: Tags,
}

pub use crate::Empty;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Start(Start),
    AppendMessage(AppendMessage),
    RateMessage(RateMessage),
    Tag(Tag),
    Archive(Empty),
    Delete(Empty),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub owner_id: UserId,
    pub title: Option<Personal<String>>,
    pub model: Option<String>,
    /// Absent in events written before conversations had one.
    #[serde(default)]
    pub model_config: Option<ModelConfig>,
    pub tags: Vec<String>,
    pub context: Option<Value>,
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageAppended {
    pub message_id: MessageId,
    /// 1 for the first message of the conversation.
    pub sequence: u32,
    pub role: MessageRole,
    pub content: Personal<String>,
    pub tool_calls: Option<Value>,
    pub tool_results: Option<Value>,
    pub tokens_in: u32,
    pub tokens_out: u32,
    pub cost_usd: CostUsd,
    /// Totals of the conversation after this message.
    pub total_tokens: u64,
    pub total_cost_usd: CostTotal,
    pub embedding: Option<Vec<f32>>,
    pub appended_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRated {
    pub message_id: MessageId,
    pub rating: u8,
    pub previous_rating: Option<u8>,
    pub comment: Option<Personal<String>>,
    pub rated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tagged {
    pub added: Vec<String>,
    pub tags_before: Vec<String>,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusChanged {
    pub from: ConversationStatus,
    pub to: ConversationStatus,
    pub at: DateTime<Utc>,
}

events! {
    /// What happens to a conversation.
    Event {
        Started(Started) = "conversation_started" v 1,
        MessageAppended(MessageAppended) = "message_appended" v 2,
        MessageRated(MessageRated) = "message_rated" v 1,
        Tagged(Tagged) = "conversation_tagged" v 1,
        Archived(StatusChanged) = "conversation_archived" v 1,
        Deleted(StatusChanged) = "conversation_deleted" v 1,
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct State {
    pub exists: bool,
    pub owner_id: UserId,
    pub status: Option<ConversationStatus>,
    pub tags: Tags,
    /// Rating of each message, by id.
    pub messages: BTreeMap<MessageId, Option<u8>>,
    pub message_count: u32,
    pub total_tokens: u64,
    pub total_cost: CostTotal,
}

impl Aggregate for Conversation {
    const STREAM_TYPE: &'static str = "conversation";
    type State = State;
    type Command = Command;
    type Event = Event;

    /// A conversation's texts belong to its owner.
    fn data_subject(_aggregate_id: uuid::Uuid, state: &State, event: &Event) -> Option<uuid::Uuid> {
        match event {
            Event::Started(e) => Some(e.owner_id.0),
            _ if state.exists => Some(state.owner_id.0),
            _ => None,
        }
    }

    fn decide(state: &State, command: Command, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        if let Command::Start(start) = command {
            if state.exists {
                return Err(DomainError::rejected(
                    "already_exists",
                    "the conversation already exists",
                ));
            }
            let owner_id = ctx.actor.user_id().ok_or_else(|| {
                DomainError::Forbidden("conversations belong to a signed-in user".into())
            })?;
            ctx.actor.require_owner_or_admin(owner_id)?;
            if let Some(config) = &start.model_config {
                config.check()?;
            }
            return Ok(vec![Event::Started(Started {
                owner_id,
                title: start.title.map(|t| Personal::new(t.into_inner())),
                model: start.model.map(Label::into_inner),
                model_config: start.model_config,
                tags: start.tags.iter().map(str::to_string).collect(),
                context: start.context,
                started_at: ctx.now,
            })]);
        }
        if !state.exists {
            return Err(DomainError::NotFound("conversation"));
        }
        ctx.actor.require_owner_or_admin(state.owner_id)?;
        let status = state.status.unwrap_or(ConversationStatus::Active);
        let require_active = || match status {
            ConversationStatus::Active => Ok(()),
            ConversationStatus::Archived => Err(DomainError::rejected(
                "conversation_archived",
                "the conversation is archived",
            )),
            ConversationStatus::Deleted => Err(DomainError::rejected(
                "conversation_deleted",
                "the conversation is deleted",
            )),
        };
        match command {
            // Handled above; kept so the match stays exhaustive.
            Command::Start(_) => Err(DomainError::rejected(
                "already_exists",
                "the conversation already exists",
            )),
            Command::AppendMessage(m) => {
                require_active()?;
                if state.messages.contains_key(&m.message_id) {
                    return Err(DomainError::rejected(
                        "duplicate_message_id",
                        "a message with this id is already in the conversation",
                    ));
                }
                if let Some(embedding) = &m.embedding {
                    embedding.check_dimension("embedding", ctx.embedding_dimension)?;
                }
                let tokens_in = m.tokens_in.unwrap_or(0);
                let tokens_out = m.tokens_out.unwrap_or(0);
                let cost = m.cost_usd.unwrap_or(CostUsd::ZERO);
                let total_cost = state
                    .total_cost
                    .checked_add(cost)
                    .ok_or_else(|| DomainError::invalid("cost_usd", "total cost overflows"))?;
                Ok(vec![Event::MessageAppended(MessageAppended {
                    message_id: m.message_id,
                    sequence: state.message_count + 1,
                    role: m.role,
                    content: Personal::new(m.content.into_inner()),
                    tool_calls: m.tool_calls,
                    tool_results: m.tool_results,
                    tokens_in,
                    tokens_out,
                    cost_usd: cost,
                    total_tokens: state.total_tokens + u64::from(tokens_in) + u64::from(tokens_out),
                    total_cost_usd: total_cost,
                    embedding: m.embedding.map(|e| e.values().to_vec()),
                    appended_at: ctx.now,
                })])
            }
            Command::RateMessage(r) => {
                if status == ConversationStatus::Deleted {
                    require_active()?;
                }
                if !(1..=5).contains(&r.rating) {
                    return Err(DomainError::invalid("rating", "must be 1 to 5"));
                }
                let previous = state.messages.get(&r.message_id).ok_or_else(|| {
                    DomainError::rejected(
                        "message_not_found",
                        "no message with this id in the conversation",
                    )
                })?;
                Ok(vec![Event::MessageRated(MessageRated {
                    message_id: r.message_id,
                    rating: r.rating,
                    previous_rating: *previous,
                    comment: r.comment.map(|c| Personal::new(c.into_inner())),
                    rated_at: ctx.now,
                })])
            }
            Command::Tag(t) => {
                require_active()?;
                let tags = state
                    .tags
                    .union(&t.tags)
                    .map_err(|e| DomainError::invalid("tags", e.0))?;
                let added: Vec<String> = t
                    .tags
                    .iter()
                    .filter(|tag| !state.tags.iter().any(|old| old == *tag))
                    .map(str::to_string)
                    .collect();
                if added.is_empty() {
                    return Err(DomainError::rejected(
                        "tags_unchanged",
                        "the conversation already has these tags",
                    ));
                }
                Ok(vec![Event::Tagged(Tagged {
                    added,
                    tags_before: state.tags.iter().map(str::to_string).collect(),
                    tags: tags.iter().map(str::to_string).collect(),
                })])
            }
            Command::Archive(_) => {
                require_active()?;
                Ok(vec![Event::Archived(StatusChanged {
                    from: status,
                    to: ConversationStatus::Archived,
                    at: ctx.now,
                })])
            }
            Command::Delete(_) => {
                if status == ConversationStatus::Deleted {
                    return Err(DomainError::rejected(
                        "conversation_deleted",
                        "the conversation is already deleted",
                    ));
                }
                Ok(vec![Event::Deleted(StatusChanged {
                    from: status,
                    to: ConversationStatus::Deleted,
                    at: ctx.now,
                })])
            }
        }
    }

    fn evolve(mut state: State, event: &Event) -> State {
        match event {
            Event::Started(e) => {
                state.exists = true;
                state.owner_id = e.owner_id;
                state.status = Some(ConversationStatus::Active);
                state.tags = Tags::parse(e.tags.clone()).unwrap_or_default();
            }
            Event::MessageAppended(e) => {
                state.messages.insert(e.message_id, None);
                state.message_count = e.sequence;
                state.total_tokens = e.total_tokens;
                state.total_cost = e.total_cost_usd;
            }
            Event::MessageRated(e) => {
                state.messages.insert(e.message_id, Some(e.rating));
            }
            Event::Tagged(e) => state.tags = Tags::parse(e.tags.clone()).unwrap_or_default(),
            Event::Archived(e) | Event::Deleted(e) => state.status = Some(e.to),
        }
        state
    }
}
