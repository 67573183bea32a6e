//! The auth index, kept by an inline projection: the same transaction that
//! appends a command's events applies them here.

use chrono::{DateTime, Utc};
use domain::{session, user, DomainError};
use eventstore::data_keys::DataKeys;
use sqlx::PgConnection;
use uuid::Uuid;

/// Why an inline projection did not apply a command's events; the
/// transaction with them is rolled back either way.
#[derive(Debug, thiserror::Error)]
pub enum InlineError {
    #[error("auth index: {0}")]
    Db(#[from] sqlx::Error),
    /// The index refuses what a concurrent command made impossible since
    /// the decision (an e-mail taken, an MFA code used meanwhile): the
    /// command is refused as if decided now.
    #[error("{0}")]
    Refused(DomainError),
}

/// The constraint that keeps e-mails unique among accounts not forgotten.
const EMAIL_KEY: &str = "auth_users_email_key";

/// `keys` (when a master key is configured) seal the TOTP seed the index
/// keeps: it is read back only to check a sign-in's code.
pub async fn apply_user(
    conn: &mut PgConnection,
    keys: Option<&DataKeys>,
    user_id: Uuid,
    events: &[user::Event],
) -> Result<(), InlineError> {
    for event in events {
        match event {
            user::Event::Registered(e) => {
                let inserted = sqlx::query(
                    "INSERT INTO auth_users (user_id, email, role, password_hash) VALUES ($1, $2, $3, $4)",
                )
                .bind(user_id)
                .bind(e.email.as_ref().map(String::as_str).unwrap_or_default())
                .bind(e.role.as_str())
                .bind(e.password_hash.expose())
                .execute(&mut *conn)
                .await;
                match inserted {
                    Err(sqlx::Error::Database(db)) if db.constraint() == Some(EMAIL_KEY) => {
                        return Err(InlineError::Refused(email_taken()));
                    }
                    other => {
                        other?;
                    }
                }
            }
            user::Event::RoleChanged(e) => set(conn, user_id, "role = $2", e.to.as_str()).await?,
            user::Event::PasswordChanged(e) => {
                set(
                    conn,
                    user_id,
                    "password_hash = $2",
                    e.password_hash.expose(),
                )
                .await?
            }
            user::Event::MfaEnabled(e) => {
                let seed = e.secret.expose().as_ref().map(String::as_str);
                let kept = match (keys, seed) {
                    (Some(keys), Some(seed)) => keys.seal_secret(seed),
                    (_, seed) => seed.unwrap_or_default().to_owned(),
                };
                set(conn, user_id, "mfa_secret = $2", &kept).await?
            }
            user::Event::MfaDisabled(_) => flag(conn, user_id, "mfa_secret = NULL").await?,
            user::Event::Locked(_) => flag(conn, user_id, "locked = true").await?,
            user::Event::Unlocked(_) => flag(conn, user_id, "locked = false").await?,
            user::Event::Deleted(_) => flag(conn, user_id, "deleted = true").await?,
            user::Event::Forgotten(_) => {
                // Nothing of the person stays in the index.
                sqlx::query("DELETE FROM auth_sessions WHERE user_id = $1")
                    .bind(user_id)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("DELETE FROM auth_api_keys WHERE user_id = $1")
                    .bind(user_id)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("DELETE FROM auth_users WHERE user_id = $1")
                    .bind(user_id)
                    .execute(&mut *conn)
                    .await?;
            }
            user::Event::ApiKeyIssued(e) => {
                let scopes: Vec<&str> = e.scopes.iter().map(|s| s.as_str()).collect();
                sqlx::query(
                    "INSERT INTO auth_api_keys (key_id, user_id, key_hash, scopes, expires_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(e.key_id.0)
                .bind(user_id)
                .bind(e.key_hash.expose())
                .bind(&scopes)
                .bind(e.expires_at)
                .execute(&mut *conn)
                .await?;
            }
            user::Event::ApiKeyRevoked(e) => {
                sqlx::query("UPDATE auth_api_keys SET revoked = true WHERE key_id = $1")
                    .bind(e.key_id.0)
                    .execute(&mut *conn)
                    .await?;
            }
            user::Event::ProfileUpdated(_)
            | user::Event::LoginFailed(_)
            | user::Event::LoginSucceeded(_) => {}
        }
    }
    Ok(())
}

async fn set(
    conn: &mut PgConnection,
    user_id: Uuid,
    assignment: &str,
    value: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE auth_users SET {assignment}, updated_at = now() WHERE user_id = $1"
    ))
    .bind(user_id)
    .bind(value)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn flag(conn: &mut PgConnection, user_id: Uuid, assignment: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE auth_users SET {assignment}, updated_at = now() WHERE user_id = $1"
    ))
    .bind(user_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The refusal of a registration whose e-mail another account has.
pub fn email_taken() -> DomainError {
    DomainError::rejected("email_taken", "another account has this e-mail address")
}

pub async fn apply_session(
    conn: &mut PgConnection,
    session_id: Uuid,
    events: &[session::Event],
) -> Result<(), InlineError> {
    for event in events {
        match event {
            session::Event::Started(e) => {
                if let Some(step) = e.mfa_step {
                    // A concurrent sign-in that took this code's step first
                    // holds the row until it commits; then no row matches.
                    let taken = sqlx::query(
                        "UPDATE auth_users SET mfa_last_step = $2
                          WHERE user_id = $1 AND coalesce(mfa_last_step, -1) < $2",
                    )
                    .bind(e.user_id.0)
                    .bind(step)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                    if taken == 0 {
                        return Err(InlineError::Refused(DomainError::rejected(
                            "invalid_mfa_code",
                            "the MFA code is wrong or was used before",
                        )));
                    }
                }
                sqlx::query(
                    "INSERT INTO auth_sessions (token_hash, session_id, user_id, expires_at, last_seen)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(e.token_hash.expose())
                .bind(session_id)
                .bind(e.user_id.0)
                .bind(e.expires_at)
                .bind(e.started_at)
                .execute(&mut *conn)
                .await?;
            }
            session::Event::Touched(e) => touch(conn, session_id, e.at).await?,
            session::Event::Ended(_) => {
                sqlx::query("UPDATE auth_sessions SET ended = true WHERE session_id = $1")
                    .bind(session_id)
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    Ok(())
}

async fn touch(
    conn: &mut PgConnection,
    session_id: Uuid,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE auth_sessions SET last_seen = $2 WHERE session_id = $1")
        .bind(session_id)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
