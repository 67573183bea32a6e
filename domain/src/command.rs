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
    ($($name:literal => $outer:ident($inner:path)),+ $(,)?) => {
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

        }
    };
}

catalogue! {
    "user.register" => User(user::Command::Register),
    "user.update_profile" => User(user::Command::UpdateProfile),
    "user.change_role" => User(user::Command::ChangeRole),
    "user.change_password" => User(user::Command::ChangePassword),
    "user.enable_mfa" => User(user::Command::EnableMfa),
    "user.disable_mfa" => User(user::Command::DisableMfa),
    "user.issue_api_key" => User(user::Command::IssueApiKey),
    "user.revoke_api_key" => User(user::Command::RevokeApiKey),
    "user.lock" => User(user::Command::Lock),
    "user.unlock" => User(user::Command::Unlock),
    "user.delete" => User(user::Command::Delete),
    "user.forget" => User(user::Command::Forget),
    "session.start" => Session(session::Command::Start),
    "session.touch" => Session(session::Command::Touch),
    "session.end" => Session(session::Command::End),
    "conversation.start" => Conversation(conversation::Command::Start),
    "conversation.append_message" => Conversation(conversation::Command::AppendMessage),
    "conversation.rate_message" => Conversation(conversation::Command::RateMessage),
    "conversation.tag" => Conversation(conversation::Command::Tag),
    "conversation.archive" => Conversation(conversation::Command::Archive),
    "conversation.delete" => Conversation(conversation::Command::Delete),
    "workflow.create" => Workflow(workflow::Command::Create),
    "workflow.update" => Workflow(workflow::Command::Update),
    "workflow.activate" => Workflow(workflow::Command::Activate),
    "workflow.deactivate" => Workflow(workflow::Command::Deactivate),
    "workflow.delete" => Workflow(workflow::Command::Delete),
    "execution.start" => Execution(execution::Command::Start),
    "execution.start_step" => Execution(execution::Command::StartStep),
    "execution.complete_step" => Execution(execution::Command::CompleteStep),
    "execution.fail_step" => Execution(execution::Command::FailStep),
    "execution.retry_step" => Execution(execution::Command::RetryStep),
    "execution.complete" => Execution(execution::Command::Complete),
    "execution.fail" => Execution(execution::Command::Fail),
    "execution.cancel" => Execution(execution::Command::Cancel),
    "incident.open" => Incident(incident::Command::Open),
    "incident.assign" => Incident(incident::Command::Assign),
    "incident.change_severity" => Incident(incident::Command::ChangeSeverity),
    "incident.add_note" => Incident(incident::Command::AddNote),
    "incident.mitigate" => Incident(incident::Command::Mitigate),
    "incident.resolve" => Incident(incident::Command::Resolve),
    "incident.close" => Incident(incident::Command::Close),
    "incident.reopen" => Incident(incident::Command::Reopen),
    "runbook.create" => Runbook(runbook::Command::Create),
    "runbook.update" => Runbook(runbook::Command::Update),
    "runbook.record_execution" => Runbook(runbook::Command::RecordExecution),
    "runbook.archive" => Runbook(runbook::Command::Archive),
    "knowledge.index_code" => Knowledge(knowledge::Command::IndexCode),
    "knowledge.index_document" => Knowledge(knowledge::Command::IndexDocument),
    "knowledge.remove" => Knowledge(knowledge::Command::Remove),
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
