//! Decoding a command message: the envelope, then the payload by type,
//! naming the field that is wrong.

use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use domain::command::ParseError;
use domain::Command;

use crate::result::Encoding;

/// The envelope of the contract; the payload stays in its wire form until
/// the command type says what it must be.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw<P> {
    command_id: Uuid,
    aggregate_id: Uuid,
    expected_version: Option<u64>,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    payload: P,
}

#[derive(Debug, Clone)]
pub struct Envelope {
    pub command_id: Uuid,
    pub aggregate_id: Uuid,
    pub expected_version: Option<u64>,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    /// Where the request came from, from the optional `Client-Ip` and
    /// `User-Agent` headers: kept in the events' metadata, as fact when a
    /// trusted agent sent the command (`client_vouched`), else as a claim.
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub client_vouched: bool,
    /// The agent's span, from a W3C `traceparent` header naming this
    /// command's trace (see `infra::traces`).
    pub parent_span: Option<[u8; 8]>,
}

/// Why a message could not be read: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
    /// The ids, when the envelope itself could be read.
    pub command_id: Option<Uuid>,
    pub aggregate_id: Option<Uuid>,
}

impl Invalid {
    pub fn details(&self) -> serde_json::Value {
        json!({ "field": self.field })
    }
}

fn path_of(path: &serde_path_to_error::Path) -> String {
    let text = path.to_string();
    if text == "." || text.is_empty() {
        "message".to_string()
    } else {
        text
    }
}

/// The field a "missing field `x`" error is about, under `parent` (the
/// path of the map it is missing from; empty for the top level): a missing
/// field is named by its own path, not by its parent's.
fn missing_field(parent: &str, message: &str) -> Option<String> {
    let name = message
        .strip_prefix("missing field `")?
        .split('`')
        .next()
        .filter(|n| !n.is_empty())?;
    Some(if parent.is_empty() || parent == "." {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    })
}

/// Reads the envelope and the command of `command_type` from a message.
pub fn decode(
    encoding: Encoding,
    command_type: &str,
    bytes: &[u8],
) -> Result<(Envelope, Command), Invalid> {
    match encoding {
        Encoding::Json => {
            let raw = match serde_json::from_slice::<Raw<serde_json::Value>>(bytes) {
                Ok(raw) => raw,
                Err(_) => json_envelope_tracked(bytes)?,
            };
            let envelope = raw.envelope();
            let command = parse_payload(command_type, raw.payload, &envelope)?;
            Ok((envelope, command))
        }
        Encoding::MessagePack => {
            let mut de = rmp_serde::Deserializer::new(bytes).with_human_readable();
            let raw = match Raw::<rmpv::Value>::deserialize(&mut de) {
                Ok(raw) if de.get_ref().is_empty() => raw,
                _ => msgpack_envelope_tracked(bytes)?,
            };
            let envelope = raw.envelope();
            let payload = to_json(raw.payload).map_err(|(field, message)| Invalid {
                field: format!("payload{field}"),
                message,
                command_id: Some(envelope.command_id),
                aggregate_id: Some(envelope.aggregate_id),
            })?;
            let command = parse_payload(command_type, payload, &envelope)?;
            Ok((envelope, command))
        }
    }
}

// The envelope is read first without tracking the path, which costs an
// allocation per field on every command; only a message that fails is read
// again with it, to name the field that is wrong.

fn json_envelope_tracked(bytes: &[u8]) -> Result<Raw<serde_json::Value>, Invalid> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let raw: Raw<serde_json::Value> =
        serde_path_to_error::deserialize(&mut de).map_err(|e| invalid_envelope(&e))?;
    de.end().map_err(|e| Invalid {
        field: "message".into(),
        message: e.to_string(),
        command_id: None,
        aggregate_id: None,
    })?;
    Ok(raw)
}

fn msgpack_envelope_tracked(bytes: &[u8]) -> Result<Raw<rmpv::Value>, Invalid> {
    let mut de = rmp_serde::Deserializer::new(bytes).with_human_readable();
    let raw: Raw<rmpv::Value> =
        serde_path_to_error::deserialize(&mut de).map_err(|e| invalid_envelope(&e))?;
    if !de.get_ref().is_empty() {
        return Err(Invalid {
            field: "message".into(),
            message: "trailing bytes after the envelope".into(),
            command_id: None,
            aggregate_id: None,
        });
    }
    Ok(raw)
}

/// A MessagePack payload as the JSON data model, so both encodings go
/// through one decoder. A 16-byte binary is a UUID (the contract accepts
/// raw UUIDs) and becomes its text form; other binaries and extension
/// types have no place in a payload.
fn to_json(value: rmpv::Value) -> Result<serde_json::Value, (String, String)> {
    use rmpv::Value as M;
    use serde_json::Value as J;
    Ok(match value {
        M::Nil => J::Null,
        M::Boolean(b) => J::Bool(b),
        M::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => J::from(u),
            (None, Some(n)) => J::from(n),
            _ => return Err((String::new(), "integer out of range".into())),
        },
        M::F32(f) => serde_json::Number::from_f64(f64::from(f))
            .map(J::Number)
            .ok_or((String::new(), "not a finite number".into()))?,
        M::F64(f) => serde_json::Number::from_f64(f)
            .map(J::Number)
            .ok_or((String::new(), "not a finite number".into()))?,
        M::String(s) => J::String(
            s.into_str()
                .ok_or((String::new(), "not valid UTF-8".into()))?,
        ),
        M::Binary(bytes) => match uuid::Uuid::from_slice(&bytes) {
            Ok(id) => J::String(id.to_string()),
            Err(_) => {
                return Err((
                    String::new(),
                    "binary values are only accepted as 16-byte UUIDs".into(),
                ))
            }
        },
        M::Array(items) => J::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| to_json(v).map_err(|(f, m)| (format!("[{i}]{f}"), m)))
                .collect::<Result<_, _>>()?,
        ),
        M::Map(entries) => {
            let mut object = serde_json::Map::new();
            for (key, v) in entries {
                let M::String(key) = key else {
                    return Err((String::new(), "map keys must be strings".into()));
                };
                let key = key
                    .into_str()
                    .ok_or((String::new(), "map key is not valid UTF-8".into()))?;
                let v = to_json(v).map_err(|(f, m)| (format!(".{key}{f}"), m))?;
                object.insert(key, v);
            }
            J::Object(object)
        }
        M::Ext(..) => return Err((String::new(), "extension types are not accepted".into())),
    })
}

impl<P> Raw<P> {
    fn envelope(&self) -> Envelope {
        Envelope {
            command_id: self.command_id,
            aggregate_id: self.aggregate_id,
            expected_version: self.expected_version,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            client_ip: None,
            user_agent: None,
            client_vouched: false,
            parent_span: None,
        }
    }
}

fn invalid_envelope<E: std::fmt::Display>(e: &serde_path_to_error::Error<E>) -> Invalid {
    let message = e.inner().to_string();
    Invalid {
        field: missing_field(&e.path().to_string(), &message).unwrap_or_else(|| path_of(e.path())),
        message,
        command_id: None,
        aggregate_id: None,
    }
}

/// The path of the first string or key in `value` holding a NUL character.
///
/// PostgreSQL can store NUL in neither `text` nor `jsonb`, so a payload
/// carrying one (in free JSON such as `context` or `tool_calls`, which no
/// domain type checks) would be appended and then stop every projection
/// that writes it. It is refused here instead, before anything is stored.
fn nul_at(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value as J;
    match value {
        J::String(s) if s.contains('\0') => Some(String::new()),
        J::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_at(v).map(|path| format!("[{i}]{path}"))),
        J::Object(entries) => entries.iter().find_map(|(key, v)| {
            if key.contains('\0') {
                Some(format!(".{}", key.replace('\0', "\\0")))
            } else {
                nul_at(v).map(|path| format!(".{key}{path}"))
            }
        }),
        _ => None,
    }
}

/// How deep arrays and maps may nest in a payload, whatever its encoding.
/// JSON kept in the read model (`definition`, `context`, `tool_calls`, ...)
/// is read back by serde_json, which stops at 128 levels, and PostgreSQL
/// at its stack depth; a payload within this limit is safe everywhere.
pub const MAX_DEPTH: usize = 32;

/// The path of the first array or map in `value` (itself at `depth`)
/// nested deeper than [`MAX_DEPTH`].
fn too_deep_at(value: &serde_json::Value, depth: usize) -> Option<String> {
    use serde_json::Value as J;
    let children: Box<dyn Iterator<Item = (String, &J)>> = match value {
        J::Array(items) => Box::new(items.iter().enumerate().map(|(i, v)| (format!("[{i}]"), v))),
        J::Object(entries) => Box::new(entries.iter().map(|(k, v)| (format!(".{k}"), v))),
        _ => return None,
    };
    if depth > MAX_DEPTH {
        return Some(String::new());
    }
    let mut children = children;
    children.find_map(|(step, child)| too_deep_at(child, depth + 1).map(|path| step + &path))
}

fn parse_payload(
    command_type: &str,
    payload: serde_json::Value,
    envelope: &Envelope,
) -> Result<Command, Invalid> {
    if let Some(path) = nul_at(&payload) {
        return Err(Invalid {
            field: format!("payload{path}"),
            message: "must not contain NUL (U+0000) characters".into(),
            command_id: Some(envelope.command_id),
            aggregate_id: Some(envelope.aggregate_id),
        });
    }
    if let Some(path) = too_deep_at(&payload, 1) {
        return Err(Invalid {
            field: format!("payload{path}"),
            message: format!("is nested deeper than {MAX_DEPTH} levels"),
            command_id: Some(envelope.command_id),
            aggregate_id: Some(envelope.aggregate_id),
        });
    }
    // As the envelope: untracked first, tracked only to explain a failure.
    match Command::from_payload(command_type, &payload) {
        Ok(command) => return Ok(command),
        Err(ParseError::UnknownType(t)) => {
            return Err(Invalid {
                field: "type".to_string(),
                message: format!("unknown command type {t:?}"),
                command_id: Some(envelope.command_id),
                aggregate_id: Some(envelope.aggregate_id),
            })
        }
        Err(ParseError::Payload(_)) => {}
    }
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(payload, &mut track);
    Command::from_payload(command_type, tracked).map_err(|e| {
        let (field, message) = match e {
            ParseError::UnknownType(t) => {
                ("type".to_string(), format!("unknown command type {t:?}"))
            }
            ParseError::Payload(inner) => {
                let path = track.path().to_string();
                let message = inner.to_string();
                let field = if path == "." || path.is_empty() {
                    "payload".to_string()
                } else {
                    format!("payload.{path}")
                };
                let field = missing_field(&field, &message).unwrap_or(field);
                (field, message)
            }
        };
        Invalid {
            field,
            message,
            command_id: Some(envelope.command_id),
            aggregate_id: Some(envelope.aggregate_id),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_msgpack_envelopes_name_the_bad_field() {
        let good = json!({"command_id": Uuid::now_v7(), "aggregate_id": Uuid::now_v7(), "payload": {"title": "t", "description": "d", "severity": "low", "affected_services": ["a"]}});
        assert!(decode(
            Encoding::Json,
            "incident.open",
            &serde_json::to_vec(&good).expect("json")
        )
        .is_ok());
        let packed = domain::codec::encode(&good).expect("msgpack");
        let decoded = decode(Encoding::MessagePack, "incident.open", &packed);
        assert!(decoded.is_ok(), "{decoded:?}");

        let mut bad = good.clone();
        bad["payload"]["severity"] = json!("urgent");
        let err = decode(
            Encoding::Json,
            "incident.open",
            &serde_json::to_vec(&bad).expect("json"),
        )
        .expect_err("bad severity");
        assert_eq!(err.field, "payload.severity");
        let err = decode(
            Encoding::MessagePack,
            "incident.open",
            &domain::codec::encode(&bad).expect("msgpack"),
        )
        .expect_err("bad severity");
        assert_eq!(err.field, "payload.severity");

        let mut bad = good.clone();
        bad["command_id"] = json!("nope");
        assert_eq!(
            decode(
                Encoding::Json,
                "incident.open",
                &serde_json::to_vec(&bad).expect("json")
            )
            .expect_err("id")
            .field,
            "command_id"
        );
        let mut bad = good.clone();
        bad["extra"] = json!(1);
        assert!(decode(
            Encoding::Json,
            "incident.open",
            &serde_json::to_vec(&bad).expect("json")
        )
        .is_err());
        assert_eq!(
            decode(
                Encoding::Json,
                "incident.explode",
                &serde_json::to_vec(&good).expect("json")
            )
            .expect_err("type")
            .field,
            "type"
        );
        assert_eq!(
            decode(Encoding::MessagePack, "incident.open", b"\xc1\xc1")
                .expect_err("garbage")
                .command_id,
            None
        );
    }

    #[test]
    fn a_nul_anywhere_in_the_payload_is_refused_by_path() {
        let message = |payload: serde_json::Value| json!({"command_id": Uuid::now_v7(), "aggregate_id": Uuid::now_v7(), "payload": payload});
        let append = |tool_calls: serde_json::Value| {
            message(
                json!({"message_id": Uuid::now_v7(), "role": "assistant", "content": "c", "tool_calls": tool_calls}),
            )
        };
        let cases = [
            (
                append(json!([{"name": "grep", "args": {"pattern": "a\u{0}b"}}])),
                "payload.tool_calls[0].args.pattern",
            ),
            (append(json!({"k\u{0}ey": 1})), "payload.tool_calls.k\\0ey"),
            (
                message(json!({"message_id": Uuid::now_v7(), "role": "user", "content": "\u{0}"})),
                "payload.content",
            ),
        ];
        for (bad, field) in cases {
            for (encoding, bytes) in [
                (Encoding::Json, serde_json::to_vec(&bad).expect("json")),
                (
                    Encoding::MessagePack,
                    domain::codec::encode(&bad).expect("msgpack"),
                ),
            ] {
                let err = decode(encoding, "conversation.append_message", &bytes)
                    .expect_err("a NUL is refused");
                assert_eq!(err.field, field, "{encoding:?}");
                assert!(err.message.contains("NUL"), "{}", err.message);
                assert_eq!(
                    err.command_id,
                    bad["command_id"].as_str().and_then(|s| s.parse().ok())
                );
            }
        }
        let fine = append(json!([{"name": "grep", "args": {"pattern": "a\\0b"}}]));
        assert!(decode(
            Encoding::Json,
            "conversation.append_message",
            &serde_json::to_vec(&fine).expect("json")
        )
        .is_ok());
    }
}
