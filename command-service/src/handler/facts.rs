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

use super::{HandleError, Handler, CONFLICT_RETRIES};
use crate::aggregates::{CommandRef, Handled};
use crate::envelope::Envelope;

impl Handler {
    /// Fills in what `decide` needs from outside for this command.
    pub(super) async fn resolve_facts(
        &self,
        command: CommandRef<'_>,
        ctx: &mut Context,
    ) -> Result<Facts, HandleError> {
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
            CommandRef::User(user::Command::IssueApiKey(_)) => {
                let key_id = Uuid::now_v7();
                let issued = tokio::task::spawn_blocking(move || infra::auth::new_api_key(key_id))
                    .await
                    .map_err(|e| HandleError::Store(e.to_string()))?
                    .map_err(|e| HandleError::Store(e.to_string()))?;
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
                let row: Option<(Uuid, String, String, bool, bool, Option<String>)> = sqlx::query_as(
                    "SELECT user_id, role, password_hash, locked, deleted, mfa_secret FROM auth_users WHERE email = $1",
                )
                .bind(s.email.as_str())
                .fetch_optional(self.pool())
                .await?;
                let password = s.password.as_str().to_string();
                match row {
                    Some((user_id, role, password_hash, locked, deleted, mfa_secret)) => {
                        let ok = verify(password, password_hash).await;
                        ctx.password_verified = Some(ok);
                        let role = role
                            .parse()
                            .map_err(|_| HandleError::Store(format!("bad role {role}")))?;
                        ctx.login = Some(LoginFacts {
                            user_id: user_id.into(),
                            role,
                            locked,
                            deleted,
                            mfa_enabled: mfa_secret.is_some(),
                            mfa_code_valid: match (&mfa_secret, &s.mfa_code) {
                                (Some(secret), Some(code)) => {
                                    Some(crate::totp::verify(secret, code.as_str(), ctx.now))
                                }
                                _ => None,
                            },
                        });
                        facts.login_user = Some(user_id);
                        if !ok && !deleted {
                            facts.failed_login_of = Some(user_id);
                        }
                        facts.reset_failed_logins = ok && self.failed_logins(user_id).await? > 0;
                    }
                    None => {
                        // Same work as a real check, so timing tells nothing.
                        let _ = verify(password, DUMMY_HASH.to_string()).await;
                        ctx.password_verified = Some(false);
                    }
                }
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

    async fn failed_logins(&self, user_id: Uuid) -> Result<u32, HandleError> {
        let (state, _) = self.load::<user::User>(user_id).await?;
        Ok(state.failed_logins)
    }

    /// Records a login attempt on the user's stream (five failures lock it).
    pub(super) async fn record_login(&self, user_id: Uuid, succeeded: bool, envelope: &Envelope) {
        for _ in 0..CONFLICT_RETRIES {
            let Ok((state, version)) = self.load::<user::User>(user_id).await else {
                return;
            };
            let ctx = Context::new(Utc::now(), Actor::System).for_aggregate(user_id);
            let Ok(events) = user::User::decide(
                &state,
                user::Command::RecordLogin(user::RecordLogin {
                    succeeded,
                    ip_address: None,
                }),
                &ctx,
            ) else {
                return;
            };
            let mut encoded = Vec::new();
            for event in &events {
                let Ok(payload) = event.encode() else { return };
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
                    if user::User::project(tx.conn(), user_id, &events)
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
    pub(super) failed_login_of: Option<Uuid>,
    pub(super) login_user: Option<Uuid>,
    pub(super) reset_failed_logins: bool,
}

async fn hash(secret: String) -> Result<String, HandleError> {
    tokio::task::spawn_blocking(move || infra::auth::hash_secret(&secret))
        .await
        .map_err(|e| HandleError::Store(e.to_string()))?
        .map_err(|e| HandleError::Store(e.to_string()))
}

async fn verify(secret: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || infra::auth::verify_secret(&secret, &hash).unwrap_or(false))
        .await
        .unwrap_or(false)
}
