//! A small client of the command protocol, as an agent would write it:
//! MessagePack envelopes over NATS request/reply. Used by `demo` and `bench`.

use std::time::Duration;

use anyhow::Context as _;
use command_service::{CommandResult, Status};
use serde_json::{json, Value};
use uuid::Uuid;

#[derive(Clone)]
pub struct AgentClient {
    pub client: async_nats::Client,
    pub prefix: String,
}

impl AgentClient {
    /// Sends a command for `aggregate` with `payload`, signed with `token`.
    pub async fn command(
        &self,
        command_type: &str,
        aggregate: Uuid,
        payload: Value,
        token: &str,
    ) -> anyhow::Result<CommandResult> {
        let body = json!({"command_id": Uuid::now_v7(), "aggregate_id": aggregate, "correlation_id": aggregate, "payload": payload});
        self.send(command_type, &body, token).await
    }

    /// Sends a whole envelope.
    pub async fn send(
        &self,
        command_type: &str,
        envelope: &Value,
        token: &str,
    ) -> anyhow::Result<CommandResult> {
        let mut headers = async_nats::HeaderMap::new();
        if !token.is_empty() {
            headers.insert("Authorization", format!("Bearer {token}").as_str());
        }
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            self.client.request_with_headers(
                format!("{}.rpc.{command_type}", self.prefix),
                headers,
                domain::codec::encode(envelope)?.into(),
            ),
        )
        .await
        .context("the command service did not answer in 10 s")?
        .context("no command service answers (is `copilot-data up` running?)")?;
        Ok(domain::codec::decode(&reply.payload)?)
    }

    /// Registers a user with `role` (with the bootstrap token) and signs in.
    pub async fn sign_up(&self, bootstrap: &str, role: &str) -> anyhow::Result<String> {
        let email = format!("agent-{}@example.com", Uuid::new_v4().simple());
        let password = format!("pw-{}", Uuid::new_v4().simple());
        let registered = self
            .command("user.register", Uuid::now_v7(), json!({"email": email, "display_name": format!("Agent {role}"), "password": password, "role": role}), bootstrap)
            .await?;
        anyhow::ensure!(
            registered.status == Status::Accepted,
            "cannot register a user: {:?}",
            registered.error
        );
        let started = self
            .command(
                "session.start",
                Uuid::now_v7(),
                json!({"email": email, "password": password, "user_agent": "copilot-data"}),
                "",
            )
            .await?;
        started
            .data
            .as_ref()
            .and_then(|d| d["token"].as_str())
            .map(str::to_string)
            .context("session.start gave no token")
    }

    /// Waits until a command service answers on the prefix.
    pub async fn wait_until_answering(&self) -> anyhow::Result<()> {
        let probe = json!({});
        for _ in 0..100 {
            let answer = self.send("session.touch", &probe, "");
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), answer).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("no command service answered")
    }
}
