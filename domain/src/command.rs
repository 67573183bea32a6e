//! The command catalogue of the contract: `<aggregate>.<action>` and its payload.

use serde::{Deserialize, Deserializer};

use crate::{conversation, execution, incident, knowledge, runbook, session, user, workflow};

/// Any command of the catalogue.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    User(user::Command),
    Session(session::Command),
    Conversation(conversation::Command),
    Workflow(workflow::Command),
    Execution(execution::Command),
    Incident(incident::Command),
    Runbook(runbook::Command),
    Knowledge(knowledge::Command),
}

/// Why a command could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError<E> {
    #[error("unknown command type {0:?}")]
    UnknownType(String),
    #[error("{0}")]
    Payload(E),
}

macro_rules! catalogue {
    ($($name:literal => $outer:ident($inner:path) admin $admin:literal),+ $(,)?) => {
        impl Command {
            /// Every command type of the contract.
            pub const TYPES: &'static [&'static str] = &[$($name),+];

            /// Decodes the payload of `command_type` from any self-describing
            /// format (MessagePack, JSON). Unknown fields are refused.
            pub fn from_payload<'de, D: Deserializer<'de>>(
                command_type: &str,
                payload: D,
            ) -> Result<Command, ParseError<D::Error>> {
                match command_type {
                    $($name => Ok(Command::$outer($inner(Deserialize::deserialize(payload).map_err(ParseError::Payload)?))),)+
                    other => Err(ParseError::UnknownType(other.chars().take(100).collect())),
                }
            }

            /// Whether `command_type` is in the catalogue.
            pub fn is_known(command_type: &str) -> bool {
                matches!(command_type, $($name)|+)
            }

            /// Whether only an admin (or the bootstrap token) may send it.
            pub fn admin_only(command_type: &str) -> bool {
                match command_type {
                    $($name => $admin,)+
                    _ => false,
                }
            }
        }
    };
}

catalogue! {
    "user.register" => User(user::Command::Register) admin true,
    "user.update_profile" => User(user::Command::UpdateProfile) admin false,
    "user.change_role" => User(user::Command::ChangeRole) admin true,
    "user.change_password" => User(user::Command::ChangePassword) admin false,
    "user.enable_mfa" => User(user::Command::EnableMfa) admin false,
    "user.disable_mfa" => User(user::Command::DisableMfa) admin false,
    "user.issue_api_key" => User(user::Command::IssueApiKey) admin false,
    "user.revoke_api_key" => User(user::Command::RevokeApiKey) admin false,
    "user.lock" => User(user::Command::Lock) admin true,
    "user.unlock" => User(user::Command::Unlock) admin true,
    "user.delete" => User(user::Command::Delete) admin false,
    "user.forget" => User(user::Command::Forget) admin false,
    "session.start" => Session(session::Command::Start) admin false,
    "session.touch" => Session(session::Command::Touch) admin false,
    "session.end" => Session(session::Command::End) admin false,
    "conversation.start" => Conversation(conversation::Command::Start) admin false,
    "conversation.append_message" => Conversation(conversation::Command::AppendMessage) admin false,
    "conversation.rate_message" => Conversation(conversation::Command::RateMessage) admin false,
    "conversation.tag" => Conversation(conversation::Command::Tag) admin false,
    "conversation.archive" => Conversation(conversation::Command::Archive) admin false,
    "conversation.delete" => Conversation(conversation::Command::Delete) admin false,
    "workflow.create" => Workflow(workflow::Command::Create) admin false,
    "workflow.update" => Workflow(workflow::Command::Update) admin false,
    "workflow.activate" => Workflow(workflow::Command::Activate) admin false,
    "workflow.deactivate" => Workflow(workflow::Command::Deactivate) admin false,
    "workflow.delete" => Workflow(workflow::Command::Delete) admin false,
    "execution.start" => Execution(execution::Command::Start) admin false,
    "execution.start_step" => Execution(execution::Command::StartStep) admin false,
    "execution.complete_step" => Execution(execution::Command::CompleteStep) admin false,
    "execution.fail_step" => Execution(execution::Command::FailStep) admin false,
    "execution.retry_step" => Execution(execution::Command::RetryStep) admin false,
    "execution.complete" => Execution(execution::Command::Complete) admin false,
    "execution.fail" => Execution(execution::Command::Fail) admin false,
    "execution.cancel" => Execution(execution::Command::Cancel) admin false,
    "incident.open" => Incident(incident::Command::Open) admin false,
    "incident.assign" => Incident(incident::Command::Assign) admin false,
    "incident.change_severity" => Incident(incident::Command::ChangeSeverity) admin false,
    "incident.add_note" => Incident(incident::Command::AddNote) admin false,
    "incident.mitigate" => Incident(incident::Command::Mitigate) admin false,
    "incident.resolve" => Incident(incident::Command::Resolve) admin false,
    "incident.close" => Incident(incident::Command::Close) admin false,
    "incident.reopen" => Incident(incident::Command::Reopen) admin false,
    "runbook.create" => Runbook(runbook::Command::Create) admin false,
    "runbook.update" => Runbook(runbook::Command::Update) admin false,
    "runbook.record_execution" => Runbook(runbook::Command::RecordExecution) admin false,
    "runbook.archive" => Runbook(runbook::Command::Archive) admin false,
    "knowledge.index_code" => Knowledge(knowledge::Command::IndexCode) admin false,
    "knowledge.index_document" => Knowledge(knowledge::Command::IndexDocument) admin false,
    "knowledge.remove" => Knowledge(knowledge::Command::Remove) admin false,
}

impl Command {
    /// Decodes a MessagePack payload (named fields; ids and times as strings).
    pub fn from_msgpack(
        command_type: &str,
        payload: &[u8],
    ) -> Result<Command, ParseError<rmp_serde::decode::Error>> {
        let mut de = rmp_serde::Deserializer::new(payload).with_human_readable();
        Command::from_payload(command_type, &mut de)
    }

    /// Decodes a JSON payload.
    pub fn from_json(
        command_type: &str,
        payload: &[u8],
    ) -> Result<Command, ParseError<serde_json::Error>> {
        let mut de = serde_json::Deserializer::from_slice(payload);
        let command = Command::from_payload(command_type, &mut de)?;
        de.end().map_err(ParseError::Payload)?;
        Ok(command)
    }

    /// The stream type of the aggregate the command targets.
    pub fn stream_type(&self) -> &'static str {
        use crate::Aggregate;
        match self {
            Command::User(_) => user::User::STREAM_TYPE,
            Command::Session(_) => session::Session::STREAM_TYPE,
            Command::Conversation(_) => conversation::Conversation::STREAM_TYPE,
            Command::Workflow(_) => workflow::Workflow::STREAM_TYPE,
            Command::Execution(_) => execution::Execution::STREAM_TYPE,
            Command::Incident(_) => incident::Incident::STREAM_TYPE,
            Command::Runbook(_) => runbook::Runbook::STREAM_TYPE,
            Command::Knowledge(_) => knowledge::Knowledge::STREAM_TYPE,
        }
    }
}
