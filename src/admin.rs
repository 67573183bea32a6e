//! `copilot-data admin create`: the first admin, made on the machine that
//! owns the database, with no bootstrap token to hand out. The commands go
//! through the command service's own pipeline, in this process.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use command_service::{Handler, HandlerSettings, Incoming, Status};
use infra::Settings;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use uuid::Uuid;

use crate::cli::{AdminCreateArgs, AdminTokenArgs};
use crate::up;

/// What `admin create` made: the account and a session to sign in with.
pub struct Created {
    pub user_id: Uuid,
    pub email: String,
    /// Only when it was generated here (never when it was given).
    pub generated_password: Option<SecretString>,
    pub token: SecretString,
}

/// The command pipeline in this process, with a one-time admin credential
/// of its own.
struct Local {
    handler: Handler,
    bootstrap: String,
    store: eventstore::EventStore,
}

impl Local {
    async fn open(settings: &Settings) -> anyhow::Result<Local> {
        let store = up::open_store(settings, up::Role::Command).await?;
        let bootstrap = infra::auth::random_token(32);
        let handler = Handler::in_process(
            store.clone(),
            HandlerSettings {
                max_message_bytes: settings.commands.max_message_bytes,
                embedding_dimension: settings.commands.embedding_dimension,
                trusted_agents: Vec::new(),
            },
            SecretString::from(bootstrap.clone()),
        );
        Ok(Local {
            handler,
            bootstrap,
            store,
        })
    }

    async fn send(
        &self,
        command_type: &str,
        aggregate: Uuid,
        payload: serde_json::Value,
        as_admin: bool,
    ) -> anyhow::Result<command_service::CommandResult> {
        let body = serde_json::to_vec(&json!({
            "command_id": Uuid::now_v7(), "aggregate_id": aggregate, "payload": payload
        }))?;
        let authorization = as_admin.then(|| format!("Bearer {}", self.bootstrap));
        let (_, result) = self
            .handler
            .handle(Incoming {
                command_type,
                payload: &body,
                content_type: Some("application/json"),
                authorization: authorization.as_deref(),
                client_ip: None,
                user_agent: Some("copilot-data admin"),
                traceparent: None,
                answer_kept: false,
            })
            .await;
        Ok(result)
    }

    /// A new session of `email`: its token.
    async fn sign_in(&self, email: &str, password: &str) -> anyhow::Result<SecretString> {
        let started = self
            .send(
                "session.start",
                Uuid::now_v7(),
                json!({"email": email, "password": password, "device_fingerprint": "copilot-data admin"}),
                false,
            )
            .await?;
        started
            .data
            .as_ref()
            .and_then(|d| d["token"].as_str())
            .map(|t| SecretString::from(t.to_string()))
            .with_context(|| format!("cannot sign in as {email}: {}", refusal(&started)))
    }

    async fn close(self) {
        self.store.pool().close().await;
    }
}

fn refusal(result: &command_service::CommandResult) -> String {
    let Some(e) = &result.error else {
        return format!("{:?}", result.status);
    };
    match e.details.as_ref().and_then(|d| d["field"].as_str()) {
        Some(field) => format!("{field} {} ({})", e.message, e.code),
        None => format!("{} ({})", e.message, e.code),
    }
}

/// One line of standard input (prompted for on a terminal).
fn read_password(email: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    if std::io::stdin().is_terminal() {
        eprint!("password for {email}: ");
        let _ = std::io::stderr().flush();
    }
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    anyhow::ensure!(!password.is_empty(), "no password on standard input");
    Ok(password)
}

pub async fn create(args: &AdminCreateArgs, settings: &Settings) -> anyhow::Result<Created> {
    let (password, generated) = if args.password_stdin {
        (read_password(&args.email)?, false)
    } else {
        (infra::auth::random_token(24), true)
    };
    let local = Local::open(settings).await?;
    let user_id = Uuid::now_v7();
    let registered = local
        .send(
            "user.register",
            user_id,
            json!({"email": args.email, "display_name": args.display_name, "password": password, "role": "admin"}),
            true,
        )
        .await?;
    anyhow::ensure!(
        registered.status == Status::Accepted,
        "the admin was not created: {}",
        refusal(&registered)
    );
    let token = local.sign_in(&args.email, &password).await?;
    local.close().await;
    Ok(Created {
        user_id,
        email: args.email.clone(),
        generated_password: generated.then(|| SecretString::from(password)),
        token,
    })
}

/// A new session token of an existing user (password on standard input).
pub async fn token(args: &AdminTokenArgs, settings: &Settings) -> anyhow::Result<SecretString> {
    let password = read_password(&args.email)?;
    let local = Local::open(settings).await?;
    let token = local.sign_in(&args.email, &password).await;
    local.close().await;
    token
}

/// Prints what a person needs to sign in (to standard output: it is the
/// command's answer).
pub fn print(created: &Created, settings: &Settings) -> anyhow::Result<()> {
    let scheme = if settings.http.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "admin created: {} ({})",
        created.email, created.user_id
    )?;
    if let Some(password) = &created.generated_password {
        writeln!(out, "password (shown once): {}", password.expose_secret())?;
    }
    writeln!(
        out,
        "sign-in token (24 h): {}",
        created.token.expose_secret()
    )?;
    writeln!(out, "dashboard: {scheme}://{}/", settings.http.addr)?;
    Ok(())
}
