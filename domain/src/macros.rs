//! Declares an aggregate's event enum with its type names, schema versions
//! and codec, so the three cannot drift apart.
macro_rules! events {
    ($(#[$doc:meta])* $enum:ident { $($variant:ident($payload:ty) = $name:literal v $version:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize)]
        #[serde(untagged)]
        pub enum $enum {
            $($variant($payload)),+
        }

        impl $enum {
            /// Every event type of this aggregate with its current schema version.
            pub const TYPES: &'static [(&'static str, i32)] = &[$(($name, $version)),+];

            /// The stored type name (past tense, snake case).
            pub fn event_type(&self) -> &'static str {
                match self { $($enum::$variant(_) => $name),+ }
            }

            /// The schema version this code writes.
            pub fn schema_version(&self) -> i32 {
                match self { $($enum::$variant(_) => $version),+ }
            }

            /// MessagePack with named fields, ids and times as text.
            pub fn encode(&self) -> Result<Vec<u8>, $crate::codec::CodecError> {
                $crate::codec::encode(self)
            }

            /// Decodes a stored event, upcasting an older schema version.
            pub fn decode(event_type: &str, schema_version: i32, payload: &[u8]) -> Result<Self, $crate::codec::CodecError> {
                match event_type {
                    $($name => Ok($enum::$variant($crate::codec::decode_payload::<$payload>($name, schema_version, $version, payload)?)),)+
                    other => Err($crate::codec::CodecError::UnknownType(other.to_string())),
                }
            }
        }

        impl $crate::codec::EventCodec for $enum {
            fn event_type(&self) -> &'static str {
                $enum::event_type(self)
            }
            fn schema_version(&self) -> i32 {
                $enum::schema_version(self)
            }
            fn encode(&self) -> Result<Vec<u8>, $crate::codec::CodecError> {
                $enum::encode(self)
            }
            fn decode(event_type: &str, schema_version: i32, payload: &[u8]) -> Result<Self, $crate::codec::CodecError> {
                $enum::decode(event_type, schema_version, payload)
            }
        }
    };
}
