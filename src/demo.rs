//! `copilot-data demo`: a simulated agent, so a fresh start shows a living
//! system and load tests have a realistic mix. It talks to a running
//! command service over NATS request/reply, in MessagePack, like an agent.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use command_service::{CommandResult, Status};
use infra::Settings;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::agent::AgentClient;
use crate::cli::DemoArgs;

struct Agent {
    inner: AgentClient,
    pace: Arc<Semaphore>,
    tally: Mutex<BTreeMap<String, u64>>,
}

impl Agent {
    /// Sends one command (waiting for the pace) and counts its outcome.
    async fn send(
        &self,
        command_type: &str,
        aggregate: Uuid,
        payload: Value,
        token: &str,
    ) -> anyhow::Result<CommandResult> {
        if let Ok(permit) = self.pace.acquire().await {
            permit.forget();
        }
        let result = self
            .inner
            .command(command_type, aggregate, payload, token)
            .await?;
        if let Ok(mut tally) = self.tally.lock() {
            *tally
                .entry(format!("{command_type} {}", result.status.as_str()))
                .or_default() += 1;
        }
        if result.status != Status::Accepted {
            tracing::debug!(command_type, status = result.status.as_str(), error = ?result.error, "demo command not accepted");
        }
        Ok(result)
    }
}

pub async fn run(
    args: DemoArgs,
    settings: &Settings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let bootstrap = settings
        .bootstrap_token
        .as_ref()
        .map(|t| t.expose_secret().to_string())
        .context("set COPILOT_BOOTSTRAP_TOKEN (the demo registers its users with it)")?;
    let client = infra::nats::NatsTarget::from(&settings.nats)
        .connect("copilot-data demo")
        .await
        .context("connecting to NATS")?;
    let agent = AgentClient {
        client,
        prefix: settings.nats.prefix.clone(),
    };
    let until = async {
        if args.seconds == 0 {
            std::future::pending::<()>().await;
        } else {
            tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        }
    };
    let tally = mix(
        agent,
        &bootstrap,
        Some(args.rate),
        args.agents,
        |admin| {
            // The admin's session token, for the dashboard's sign-in (on
            // standard output, not in the logs).
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            writeln!(out, "dashboard token (admin, 24 h): {admin}")?;
            Ok(())
        },
        async {
            tokio::select! {
                () = until => {}
                () = shutdown => {}
            }
        },
    )
    .await?;
    for (what, count) in tally {
        tracing::info!(count, "{what}");
    }
    Ok(())
}

/// The demo's mix (conversations, executions, incidents, documents) from
/// `agents` simulated agents, at `rate` commands/s in all (`None`: each
/// agent as fast as it is answered), until `until`. `ready` is given the
/// admin's token once the shared workflow exists. Returns how many
/// commands of each type ended with each status.
pub async fn mix(
    inner: AgentClient,
    bootstrap: &str,
    rate: Option<f64>,
    agents: usize,
    ready: impl FnOnce(&str) -> anyhow::Result<()>,
    until: impl Future<Output = ()>,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let agent = Arc::new(Agent {
        inner,
        pace: Arc::new(Semaphore::new(match rate {
            Some(_) => 0,
            None => Semaphore::MAX_PERMITS,
        })),
        tally: Mutex::new(BTreeMap::new()),
    });
    // The pace: `rate` permits a second, never more than one second's worth banked.
    let pacer = rate.map(|rate| {
        let rate = rate.max(0.1);
        let pace = Arc::clone(&agent.pace);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            loop {
                tick.tick().await;
                if (pace.available_permits() as f64) < rate.max(1.0) {
                    pace.add_permits(1);
                }
            }
        })
    });
    let result = async {
        let admin = sign_up(&agent, bootstrap, "admin").await?;
        let workflow = Uuid::now_v7();
        agent.send("workflow.create", workflow, json!({"name": "restart service", "definition": {"steps": ["drain", "restart", "verify"], "max_retries": 2}, "tags": ["ops"]}), &admin).await?;
        agent
            .send("workflow.activate", workflow, json!({}), &admin)
            .await?;
        tracing::info!(?rate, agents, "demo running");
        ready(&admin)?;

        let mut workers = tokio::task::JoinSet::new();
        for n in 0..agents.max(1) {
            let agent = Arc::clone(&agent);
            let bootstrap = bootstrap.to_string();
            workers.spawn(async move {
                let role = if n % 3 == 2 { "viewer" } else { "operator" };
                let token = sign_up(&agent, &bootstrap, role).await?;
                for round in 0u64.. {
                    // Viewers only talk to the agent; the others also operate.
                    let scenario = if role == "viewer" { 0 } else { round % 4 };
                    match scenario {
                        0 => conversation(&agent, &token).await?,
                        1 => execution(&agent, &token, workflow).await?,
                        2 => incident(&agent, &token).await?,
                        _ => document(&agent, &token).await?,
                    }
                }
                Ok::<(), anyhow::Error>(())
            });
        }
        tokio::select! {
            () = until => {}
            Some(Ok(Err(error))) = workers.join_next() => return Err(error),
        }
        workers.abort_all();
        Ok(())
    }
    .await;
    if let Some(pacer) = pacer {
        pacer.abort();
    }
    result?;
    let tally = agent.tally.lock().map(|t| t.clone()).unwrap_or_default();
    Ok(tally)
}

/// Signs up through the pace, so the demo's rate holds from the start.
async fn sign_up(agent: &Agent, bootstrap: &str, role: &str) -> anyhow::Result<String> {
    if let Ok(permit) = agent.pace.acquire_many(2).await {
        permit.forget();
    }
    agent.inner.sign_up(bootstrap, role).await
}

const QUESTIONS: &[&str] = &[
    "Why did last night's deploy of the checkout service fail?",
    "Summarise the open incidents for the payments team.",
    "Which runbook covers a primary database failover?",
    "Draft a postmortem for the cache stampede on Tuesday.",
];

async fn conversation(agent: &Agent, token: &str) -> anyhow::Result<()> {
    let id = Uuid::now_v7();
    agent
        .send(
            "conversation.start",
            id,
            json!({"title": "Ops questions", "model": "gpt-4o", "tags": ["ops"]}),
            token,
        )
        .await?;
    for (i, question) in QUESTIONS.iter().enumerate() {
        agent.send("conversation.append_message", id, json!({"message_id": Uuid::now_v7(), "role": "user", "content": question, "tokens_in": 40 + i * 7}), token).await?;
        agent
            .send("conversation.append_message", id, json!({"message_id": Uuid::now_v7(), "role": "assistant",
                "content": format!("Here is what I found about: {question} The logs show a migration holding a lock for 40 s; rolling back restored service."),
                "tokens_in": 900 + i * 31, "tokens_out": 180 + i * 13, "cost_usd": "0.0041"}), token)
            .await?;
    }
    agent
        .send("conversation.archive", id, json!({}), token)
        .await?;
    Ok(())
}

async fn execution(agent: &Agent, token: &str, workflow: Uuid) -> anyhow::Result<()> {
    let id = Uuid::now_v7();
    agent
        .send(
            "execution.start",
            id,
            json!({"workflow_id": workflow, "trigger_source": "demo", "priority": 5}),
            token,
        )
        .await?;
    for (n, name) in ["drain", "restart", "verify"].iter().enumerate() {
        let step = Uuid::now_v7();
        agent
            .send(
                "execution.start_step",
                id,
                json!({"step_id": step, "name": name}),
                token,
            )
            .await?;
        if n == 1 {
            agent.send("execution.fail_step", id, json!({"step_id": step, "error": "pod not ready after 30 s", "retryable": true}), token).await?;
            agent
                .send("execution.retry_step", id, json!({"step_id": step}), token)
                .await?;
        }
        agent
            .send(
                "execution.complete_step",
                id,
                json!({"step_id": step, "output": {"ok": true}}),
                token,
            )
            .await?;
    }
    agent
        .send(
            "execution.complete",
            id,
            json!({"outputs": {"restarted": true}}),
            token,
        )
        .await?;
    Ok(())
}

async fn incident(agent: &Agent, token: &str) -> anyhow::Result<()> {
    let id = Uuid::now_v7();
    agent.send("incident.open", id, json!({"title": "Elevated 5xx on checkout", "description": "Error rate above 5% since the last deploy", "severity": "high", "affected_services": ["checkout", "payments"]}), token).await?;
    let me = Uuid::now_v7();
    agent
        .send("incident.assign", id, json!({"assignee_id": me}), token)
        .await?;
    agent
        .send(
            "incident.add_note",
            id,
            json!({"text": "Rolling back the deploy."}),
            token,
        )
        .await?;
    agent
        .send(
            "incident.mitigate",
            id,
            json!({"summary": "Rolled back; error rate normal."}),
            token,
        )
        .await?;
    agent.send("incident.resolve", id, json!({"root_cause": "A migration locked the orders table.", "remediation_steps": ["Add the index concurrently", "Gate migrations on lock time"]}), token).await?;
    agent.send("incident.close", id, json!({}), token).await?;
    Ok(())
}

async fn document(agent: &Agent, token: &str) -> anyhow::Result<()> {
    agent
        .send("knowledge.index_document", Uuid::now_v7(), json!({"title": "Runbook: database failover", "section": "Promote",
            "content": "Promote the replica with the least lag, repoint the service, verify writes."}), token)
        .await?;
    Ok(())
}
