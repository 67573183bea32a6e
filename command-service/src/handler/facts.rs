//! The facts a decision needs from outside, resolved before `decide`:
//! password hashes and checks, new tokens and keys, login facts, the
//! workflow a run belongs to; and the login record on the user's stream.

use chrono::Utc;
use domain::context::{Actor, LoginFacts, NewApiKey, WorkflowFacts};
use domain::{execution, session, user, workflow, Aggregate, Context};
use eventstore::{AppendError, AppendRequest, ExpectedVersion, Metadata, NewEvent};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{Handler, CONFLICT_RETRIES};
use crate::aggregates::{CommandRef, Handled};
use crate::envelope::Envelope;
use crate::error::CommandError;

impl Handler {
    /// Fills in what `decide` needs from outside for this command.
    pub(super) async fn resolve_facts(
        &self,
        command: CommandRef<'_>,
        ctx: &mut Context,
    ) -> Result<Facts, CommandError> {
        let mut facts = Facts::default();
        match command {
            CommandRef::User(user::Command::Register(r)) => {
                ctx.password_hash = Some(hash(r.password.as_str().to_string()).await?);
            }
            CommandRef::User(user::Command::ChangePassword(c)) => {
                let stored: Option<(String,)> =
                    sqlx::query_as("SELECT password_hash FROM auth_users WHERE user_id = $1")
                        .bind(ctx.aggregate_id)
                        .fetch_optional(self.pool())
                        .await?;
                let current = c.current_password.as_str().to_string();
                ctx.password_verified = Some(match stored {
                    Some((hash,)) => verify(current, hash).await,
                    None => false,
                });
                ctx.password_hash = Some(hash(c.new_password.as_str().to_string()).await?);
            }
            CommandRef::User(user::Command::EnableMfa(m)) if m.secret.is_none() => {
                let email: Option<String> =
                    sqlx::query_scalar("SELECT email FROM auth_users WHERE user_id = $1")
                        .bind(ctx.aggregate_id)
                        .fetch_optional(self.pool())
                        .await?;
                let secret = crate::totp::new_secret();
                let account = email.unwrap_or_else(|| ctx.aggregate_id.to_string());
                facts.data = Some(json!({
                    "secret": secret,
                    "otpauth_uri": crate::totp::otpauth_uri(&secret, &account),
                }));
                ctx.new_mfa_secret = Some(secret);
            }
            CommandRef::User(user::Command::IssueApiKey(_)) => {
                let key_id = Uuid::now_v7();
                let issued = infra::auth::with_argon2(move || infra::auth::new_api_key(key_id))
                    .await
                    .map_err(|e| CommandError::Facts(e.to_string()))?;
                facts.data = Some(
                    json!({"api_key": issued.token.expose_secret(), "key_id": key_id, "prefix": issued.prefix}),
                );
                ctx.new_api_key = Some(NewApiKey {
                    key_id: key_id.into(),
                    key_hash: issued.hash,
                    prefix: issued.prefix,
                });
            }
            CommandRef::Session(session::Command::Start(s)) => {
                let row: Option<LoginRow> = sqlx::query_as(
                    "SELECT user_id, role, password_hash, locked, deleted, mfa_secret, mfa_last_step
                       FROM auth_users WHERE email = $1",
                )
                .bind(s.email.as_str())
                .fetch_optional(self.pool())
                .await?;
                let password = s.password.as_str().to_string();
                match row {
                    // A locked account's answer does not depend on the
                    // password, so it is not checked (nor is the attempt
                    // counted: the account is locked already).
                    Some(row) if row.locked && !row.deleted => {
                        ctx.login = Some(row.facts(None)?);
                    }
                    Some(row) => {
                        let ok = verify(password, row.password_hash.clone()).await;
                        ctx.password_verified = Some(ok);
                        let mfa_step = match (&row.mfa_secret, &s.mfa_code) {
                            (Some(kept), Some(code)) if ok => {
                                let seed = match self.store.data_keys() {
                                    Some(keys) => keys
                                        .open_secret(kept)
                                        .map_err(|e| CommandError::Facts(e.to_string()))?,
                                    None => kept.clone(),
                                };
                                crate::totp::matching_step(&seed, code.as_str(), ctx.now)
                            }
                            _ => None,
                        };
                        ctx.login = Some(row.facts(mfa_step)?);
                        facts.login_user = Some(row.user_id);
                        if !row.deleted {
                            facts.failed_login_of = Some(row.user_id);
                        }
                        facts.record_success = ok;
                    }
                    None => {
                        // Same work as a real check, so timing tells nothing.
                        let _ = verify(password, DUMMY_HASH.to_string()).await;
                        ctx.password_verified = Some(false);
                    }
                }
                facts.login_ip = s.ip_address.as_ref().map(|ip| ip.as_str().to_string());
                let token = infra::auth::new_session_token();
                ctx.token_hash = Some(token.hash.clone());
                facts.data = Some(json!({
                    "token": token.token.expose_secret(),
                    "expires_at": ctx.now + domain::session::SESSION_LIFETIME,
                }));
            }
            CommandRef::Execution(execution::Command::Start(s)) => {
                let (state, _) = self
                    .load::<workflow::Workflow>(s.workflow_id.0)
                    .await
                    .unwrap_or_default();
                ctx.workflow = state.status.map(|status| WorkflowFacts {
                    version: state.version,
                    status,
                    max_retries: state.max_retries,
                });
            }
            _ => {}
        }
        Ok(facts)
    }

    /// Records a login attempt on the user's stream (five failures lock it).
    pub(super) async fn record_login(
        &self,
        user_id: Uuid,
        succeeded: bool,
        ip_address: Option<String>,
        envelope: &Envelope,
    ) {
        for _ in 0..CONFLICT_RETRIES {
            let Ok((state, version)) = self.load::<user::User>(user_id).await else {
                return;
            };
            let ctx = Context::new(Utc::now(), Actor::System).for_aggregate(user_id);
            let Ok(events) = user::User::decide(
                &state,
                user::Command::RecordLogin(user::RecordLogin {
                    succeeded,
                    ip_address: ip_address.clone(),
                }),
                &ctx,
            ) else {
                return;
            };
            let Ok(sealers) =
                super::sealing::Sealers::make(self.store.data_keys().map(|k| &**k), vec![user_id])
                    .await
            else {
                return;
            };
            let mut encoded = Vec::new();
            for event in &events {
                let Ok(payload) = sealers.encode(Some(user_id), event) else {
                    return;
                };
                encoded.push(NewEvent::new(
                    event.event_type(),
                    event.schema_version(),
                    payload,
                ));
            }
            let request = AppendRequest {
                stream_id: user_id,
                stream_type: "user".into(),
                expected: ExpectedVersion::Exact(version),
                events: encoded,
                metadata: Metadata {
                    causation_id: Some(envelope.command_id),
                    correlation_id: envelope.correlation_id,
                    actor: Some("system".into()),
                    ..Metadata::default()
                },
            };
            // An automatic lock outdates cached credentials like a lock
            // command does; best effort here (a password guesser holds no
            // token, and the lock matters more than the cache).
            let locks = <user::User as Handled>::auth_subject(user_id, &events);
            self.bump_epoch(locks).await;
            let Ok(mut tx) = self.store.begin().await else {
                return;
            };
            match tx.append(&request).await {
                Ok(_) => {
                    if user::User::project(
                        tx.conn(),
                        self.store.data_keys().map(|k| &**k),
                        user_id,
                        &events,
                    )
                    .await
                    .is_ok()
                        && tx.commit().await.is_ok()
                    {
                        self.bump_epoch(locks).await;
                    }
                    return;
                }
                Err(AppendError::Conflict { .. } | AppendError::StaleTransaction { .. }) => {
                    continue
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot record a login attempt");
                    return;
                }
            }
        }
    }
}

/// A hash with the same parameters as real ones, for unknown e-mails.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$mR8YoRYoV3Jp3Wsv2bJbCq7bRZfGjY1Hq0kzJ1bqJxM";

#[derive(Default)]
pub(super) struct Facts {
    /// Returned to the client once, never stored.
    pub(super) data: Option<Value>,
    /// session.start: the user a refused attempt counts against (a wrong
    /// password or MFA code; not a locked, deleted or unknown account).
    pub(super) failed_login_of: Option<Uuid>,
    pub(super) login_user: Option<Uuid>,
    /// session.start: the password was right; the sign-in is recorded on
    /// the user's stream if it is accepted.
    pub(super) record_success: bool,
    /// session.start: the address the client gave, for the login record.
    pub(super) login_ip: Option<String>,
}

/// A user of the auth index, as a sign-in reads it.
#[derive(sqlx::FromRow)]
struct LoginRow {
    user_id: Uuid,
    role: String,
    password_hash: String,
    locked: bool,
    deleted: bool,
    mfa_secret: Option<String>,
    mfa_last_step: Option<i64>,
}

impl LoginRow {
    fn facts(&self, mfa_step: Option<i64>) -> Result<LoginFacts, CommandError> {
        Ok(LoginFacts {
            user_id: self.user_id.into(),
            role: self
                .role
                .parse()
                .map_err(|_| CommandError::Facts(format!("bad role {}", self.role)))?,
            locked: self.locked,
            deleted: self.deleted,
            mfa_enabled: self.mfa_secret.is_some(),
            mfa_step,
            last_mfa_step: self.mfa_last_step,
        })
    }
}

async fn hash(secret: String) -> Result<String, CommandError> {
    infra::auth::with_argon2(move || infra::auth::hash_secret(&secret))
        .await
        .map_err(|e| CommandError::Facts(e.to_string()))
}

async fn verify(secret: String, hash: String) -> bool {
    infra::auth::verify_secret_bounded(secret, hash).await
}
