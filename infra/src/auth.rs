//! Credentials: password and API-key hashing (argon2id with OWASP's
//! parameters), session tokens stored only as hashes, constant-time checks.
//!
//! Session tokens are 256 random bits, so a fast SHA-256 hash is enough to
//! store them (it is what the auth index looks them up by). API keys carry
//! their id in clear (`cpk_<key id>_<secret>`) so the key can be found
//! without a hash lookup, and their secret is verified against an argon2id
//! hash like a password.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

const SESSION_PREFIX: &str = "cps_";
const API_KEY_PREFIX: &str = "cpk_";
const SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot hash the secret: {0}")]
    Hash(String),
    #[error("the stored hash is malformed")]
    MalformedHash,
}

/// Argon2id with OWASP's recommended minimum: 19 MiB of memory, two
/// passes, one lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`) of a password or secret.
pub fn hash_secret(secret: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(secret.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Whether `secret` matches `hash` (constant time in the secret).
pub fn verify_secret(secret: &str, hash: &str) -> Result<bool, AuthError> {
    let parsed = PasswordHash::new(hash).map_err(|_| AuthError::MalformedHash)?;
    Ok(argon2().verify_password(secret.as_bytes(), &parsed).is_ok())
}

/// How many argon2id computations run at once in this process. Each takes
/// 19 MiB and tens of milliseconds of a core: unbounded, a flood of
/// concurrent sign-ins would take as many blocking threads (and their
/// memory) as requests; bounded, the rest wait their turn in a queue that
/// costs a few hundred bytes each.
fn argon2_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        tokio::sync::Semaphore::new(cores)
    })
}

/// Runs `work` (an argon2id hash or verification) on a blocking thread,
/// at most one per core at a time (see [`argon2_slots`]).
pub async fn with_argon2<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
) -> Result<T, AuthError> {
    let _slot = argon2_slots()
        .acquire()
        .await
        .map_err(|_| AuthError::Hash("the hashing slots are closed".into()))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AuthError::Hash(format!("the hashing task failed: {e}")))?
}

/// [`verify_secret`] under the bound of [`with_argon2`]; a malformed hash
/// or a failed task is a mismatch.
pub async fn verify_secret_bounded(secret: String, hash: String) -> bool {
    with_argon2(move || verify_secret(&secret, &hash))
        .await
        .unwrap_or(false)
}

/// A newly issued credential: shown to the client once, stored as `hash`.
#[derive(Debug)]
pub struct Issued {
    pub token: SecretString,
    pub hash: String,
    /// The first characters, safe to show in listings.
    pub prefix: String,
}

/// `bytes` random bytes as URL-safe base64 (a password, a one-time token).
pub fn random_token(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buffer);
    URL_SAFE_NO_PAD.encode(buffer)
}

/// `N` bytes from the operating system's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

fn random_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A new session token and the hash the auth index stores.
pub fn new_session_token() -> Issued {
    let token = format!("{SESSION_PREFIX}{}", random_secret());
    let hash = token_hash(&token);
    let prefix = token.chars().take(10).collect();
    Issued {
        token: SecretString::from(token),
        hash,
        prefix,
    }
}

/// A new API key for `key_id`: `cpk_<key id>_<secret>`, its secret hashed
/// with argon2id.
pub fn new_api_key(key_id: Uuid) -> Result<Issued, AuthError> {
    let secret = random_secret();
    let hash = hash_secret(&secret)?;
    let token = format!("{API_KEY_PREFIX}{}_{secret}", key_id.simple());
    let prefix = token.chars().take(12).collect();
    Ok(Issued {
        token: SecretString::from(token),
        hash,
        prefix,
    })
}

/// What a bearer credential claims to be, before it is checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Bearer<'a> {
    /// Look up by [`token_hash`].
    Session(&'a str),
    /// Look up by id, then [`verify_secret`] the secret.
    ApiKey { key_id: Uuid, secret: &'a str },
}

/// Splits a bearer credential by its prefix; `None` if it is neither kind.
pub fn parse_bearer(token: &str) -> Option<Bearer<'_>> {
    if token.starts_with(SESSION_PREFIX) && token.len() > SESSION_PREFIX.len() {
        return Some(Bearer::Session(token));
    }
    let rest = token.strip_prefix(API_KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let key_id = Uuid::try_parse(id).ok()?;
    (!secret.is_empty()).then_some(Bearer::ApiKey { key_id, secret })
}

/// The stored form of a session token: SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    lower_hex(&Sha256::digest(token.as_bytes()))
}

/// `bytes` as lower-case hex. Every command hashes its bearer token, so
/// this is on the hot path: one allocation, no formatter per byte.
pub fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    text
}

/// Compares two secrets without leaking where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_secret("correct horse battery").expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_secret("correct horse battery", &hash).expect("verify"));
        assert!(!verify_secret("correct horse batterz", &hash).expect("verify"));
        assert_ne!(
            hash,
            hash_secret("correct horse battery").expect("hash"),
            "salted"
        );
        assert!(matches!(
            verify_secret("x", "not a hash"),
            Err(AuthError::MalformedHash)
        ));
    }

    /// The stored form must not change: every session in `auth_sessions`
    /// is found by it.
    #[test]
    fn token_hashes_are_sha256_in_lower_hex() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(lower_hex(&[0x00, 0x0f, 0xf0, 0xff]), "000ff0ff");
        assert_eq!(lower_hex(&[]), "");
    }

    #[test]
    fn session_tokens_are_random_and_stored_as_hashes() {
        let a = new_session_token();
        let b = new_session_token();
        assert_ne!(a.token.expose_secret(), b.token.expose_secret());
        assert_eq!(a.hash, token_hash(a.token.expose_secret()));
        assert_eq!(a.hash.len(), 64);
        assert!(!a.hash.contains(a.token.expose_secret()));
        assert_eq!(
            parse_bearer(a.token.expose_secret()),
            Some(Bearer::Session(a.token.expose_secret()))
        );
        assert!(
            !format!("{a:?}").contains(a.token.expose_secret()),
            "tokens never print"
        );
    }

    #[test]
    fn api_keys_carry_their_id_and_verify_their_secret() {
        let id = Uuid::now_v7();
        let key = new_api_key(id).expect("key");
        let Some(Bearer::ApiKey { key_id, secret }) = parse_bearer(key.token.expose_secret())
        else {
            panic!("parses")
        };
        assert_eq!(key_id, id);
        assert!(verify_secret(secret, &key.hash).expect("verify"));
        assert!(!verify_secret("guess", &key.hash).expect("verify"));
        for bad in [
            "",
            "cps_",
            "cpk_",
            "cpk_nothex_secret",
            &format!("cpk_{}_", id.simple()),
            "Bearer x",
        ] {
            assert_eq!(parse_bearer(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"bootstrap", b"bootstrap"));
        assert!(!constant_time_eq(b"bootstrap", b"bootstraq"));
        assert!(!constant_time_eq(b"boot", b"bootstrap"));
    }
}
