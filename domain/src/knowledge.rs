//! An indexed piece of knowledge: a code unit or a document section, which
//! the vector projection embeds for semantic search.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::ProjectId;
use crate::values::{Embedding, Label, LongText, Name, Title};
use crate::{Aggregate, Context, DomainError};

pub struct Knowledge;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexCode {
    pub project_id: ProjectId,
    pub file_path: Name,
    pub function_name: Option<Name>,
    pub language: Label,
    pub content: LongText,
    pub embedding: Option<Embedding>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexDocument {
    pub title: Title,
    pub section: Option<Title>,
    pub url: Option<Name>,
    pub content: LongText,
    pub embedding: Option<Embedding>,
}

pub use crate::Empty;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    IndexCode(IndexCode),
    IndexDocument(IndexDocument),
    Remove(Empty),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeIndexed {
    pub project_id: ProjectId,
    pub file_path: String,
    pub function_name: Option<String>,
    pub language: String,
    pub content: String,
    pub embedding: Option<Vec<f32>>,
    /// 1 for the first indexing, then +1 for each re-indexing.
    pub revision: u32,
    pub indexed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentIndexed {
    pub title: String,
    pub section: Option<String>,
    pub url: Option<String>,
    pub content: String,
    pub embedding: Option<Vec<f32>>,
    pub revision: u32,
    pub indexed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Removed {
    /// `code` or `document`: which collection the item leaves.
    pub kind: String,
    pub at: DateTime<Utc>,
}

events! {
    /// What happens to an indexed item.
    Event {
        CodeIndexed(CodeIndexed) = "code_indexed" v 1,
        DocumentIndexed(DocumentIndexed) = "document_indexed" v 1,
        Removed(Removed) = "knowledge_removed" v 1,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Code,
    Document,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct State {
    pub kind: Option<Kind>,
    pub revision: u32,
    pub removed: bool,
}

impl Aggregate for Knowledge {
    const STREAM_TYPE: &'static str = "knowledge";
    type State = State;
    type Command = Command;
    type Event = Event;

    fn decide(state: &State, command: Command, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        ctx.actor.require_writer()?;
        if state.removed {
            return Err(DomainError::NotFound("knowledge item"));
        }
        let kind_clash = || {
            DomainError::rejected(
                "kind_mismatch",
                "this id already holds the other kind of item",
            )
        };
        match command {
            Command::IndexCode(c) => {
                if state.kind == Some(Kind::Document) {
                    return Err(kind_clash());
                }
                if let Some(e) = &c.embedding {
                    e.check_dimension("embedding", ctx.embedding_dimension)?;
                }
                Ok(vec![Event::CodeIndexed(CodeIndexed {
                    project_id: c.project_id,
                    file_path: c.file_path.into_inner(),
                    function_name: c.function_name.map(Name::into_inner),
                    language: c.language.into_inner().to_lowercase(),
                    content: c.content.into_inner(),
                    embedding: c.embedding.map(|e| e.values().to_vec()),
                    revision: state.revision + 1,
                    indexed_at: ctx.now,
                })])
            }
            Command::IndexDocument(d) => {
                if state.kind == Some(Kind::Code) {
                    return Err(kind_clash());
                }
                if let Some(e) = &d.embedding {
                    e.check_dimension("embedding", ctx.embedding_dimension)?;
                }
                Ok(vec![Event::DocumentIndexed(DocumentIndexed {
                    title: d.title.into_inner(),
                    section: d.section.map(Title::into_inner),
                    url: d.url.map(Name::into_inner),
                    content: d.content.into_inner(),
                    embedding: d.embedding.map(|e| e.values().to_vec()),
                    revision: state.revision + 1,
                    indexed_at: ctx.now,
                })])
            }
            Command::Remove(_) => {
                let kind = state.kind.ok_or(DomainError::NotFound("knowledge item"))?;
                Ok(vec![Event::Removed(Removed {
                    kind: match kind {
                        Kind::Code => "code".into(),
                        Kind::Document => "document".into(),
                    },
                    at: ctx.now,
                })])
            }
        }
    }

    fn evolve(mut state: State, event: &Event) -> State {
        match event {
            Event::CodeIndexed(e) => {
                state.kind = Some(Kind::Code);
                state.revision = e.revision;
            }
            Event::DocumentIndexed(e) => {
                state.kind = Some(Kind::Document);
                state.revision = e.revision;
            }
            Event::Removed(_) => state.removed = true,
        }
        state
    }
}
