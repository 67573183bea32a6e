//! A NATS message as the command pipeline reads it.

use async_nats::{HeaderMap, Message};

use crate::handler::Incoming;

/// The value of header `name`, if the message has it.
pub(crate) fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers.and_then(|h| h.get(name)).map(|v| v.as_str())
}

/// A message as the handler reads it: its command type is the subject
/// after `prefix`; `answer_kept` for JetStream, whose results are kept.
pub(crate) fn incoming<'a>(message: &'a Message, prefix: &str, answer_kept: bool) -> Incoming<'a> {
    let headers = message.headers.as_ref();
    Incoming {
        command_type: message
            .subject
            .as_str()
            .strip_prefix(prefix)
            .unwrap_or_default(),
        payload: &message.payload,
        content_type: header(headers, "Content-Type"),
        authorization: header(headers, "Authorization"),
        client_ip: header(headers, "Client-Ip"),
        user_agent: header(headers, "User-Agent"),
        traceparent: header(headers, "traceparent"),
        answer_kept,
    }
}
