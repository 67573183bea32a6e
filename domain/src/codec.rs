//! Event payloads: MessagePack with named fields, versioned, upcast on read.
//!
//! An event type's payload may change shape; its schema version then goes
//! up and an upcaster here turns the previous shape into the next. Stored
//! events are never rewritten: old versions are upcast every time they are
//! read, one version at a time, through [`upcast`].

use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("event {event_type} has schema version {version}, newer than this code ({current})")]
    FutureVersion {
        event_type: &'static str,
        version: i32,
        current: i32,
    },
    #[error("no upcaster for {event_type} v{version}")]
    NoUpcaster { event_type: String, version: i32 },
    #[error("cannot encode event: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cannot decode event: {0}")]
    Decode(String),
    #[error("cannot seal personal data: {0}")]
    Sealing(String),
}

/// What generic code (the command service, projections) needs of an
/// aggregate's event type; implemented by the `events!` declaration.
pub trait EventCodec: Sized {
    fn event_type(&self) -> &'static str;
    fn schema_version(&self) -> i32;
    fn encode(&self) -> Result<Vec<u8>, CodecError>;
    fn decode(event_type: &str, schema_version: i32, payload: &[u8]) -> Result<Self, CodecError>;
}

/// MessagePack with named fields in human-readable mode: ids and times are
/// strings in their canonical text form, so any client library reads them.
pub fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::new();
    let mut serializer = rmp_serde::Serializer::new(&mut buf)
        .with_struct_map()
        .with_human_readable();
    value.serialize(&mut serializer)?;
    Ok(buf)
}

/// Reads MessagePack written by [`encode`] (or by any client).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let mut deserializer = rmp_serde::Deserializer::new(bytes).with_human_readable();
    T::deserialize(&mut deserializer).map_err(|e| CodecError::Decode(e.to_string()))
}

/// Decodes a payload stored at `stored` into the current shape `T`.
pub fn decode_payload<T: DeserializeOwned>(
    event_type: &'static str,
    stored: i32,
    current: i32,
    payload: &[u8],
) -> Result<T, CodecError> {
    if stored == current {
        return decode(payload);
    }
    if stored > current || stored < 1 {
        return Err(CodecError::FutureVersion {
            event_type,
            version: stored,
            current,
        });
    }
    let mut value: Value = decode(payload)?;
    for version in stored..current {
        value = upcast(event_type, version, value)?;
    }
    serde_json::from_value(value).map_err(|e| CodecError::Decode(e.to_string()))
}

/// The upcaster registry: turns `event_type` at `version` into `version + 1`.
pub fn upcast(event_type: &str, version: i32, mut value: Value) -> Result<Value, CodecError> {
    let no_upcaster = || CodecError::NoUpcaster {
        event_type: event_type.to_string(),
        version,
    };
    let object = value.as_object_mut().ok_or_else(no_upcaster)?;
    match (event_type, version) {
        // v1 recorded one `tokens` total; v2 splits input and output tokens.
        // The v1 total was the completion's, so it becomes tokens_out.
        ("message_appended", 1) => {
            let tokens = object.remove("tokens").unwrap_or(Value::from(0));
            object.insert("tokens_in".into(), Value::from(0));
            object.insert("tokens_out".into(), tokens);
        }
        // v1 kept affected services as one comma-separated string.
        ("incident_opened", 1) => {
            let services = match object.remove("services") {
                Some(Value::String(text)) => text
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::from(s.to_string()))
                    .collect(),
                _ => Vec::new(),
            };
            object.insert("affected_services".into(), Value::Array(services));
            object.entry("blast_radius").or_insert(Value::Null);
        }
        // v1 had no lineage of the workflow definition's retry policy.
        ("workflow_created", 1) => {
            object.entry("max_retries").or_insert(Value::from(3));
        }
        _ => return Err(no_upcaster()),
    }
    Ok(value)
}
