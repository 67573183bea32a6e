//! Optional trace export (OpenTelemetry, OTLP over HTTP with protobuf).
//!
//! A command is one trace from the agent to every read model: its trace id
//! is the command's correlation id (or, without one, its command id); the
//! command service's `command` span has a span id derived from the command
//! id, and each projection that applies the command's events records a
//! `project` span as its child. Both sides know both ids from the command
//! (and from every event's metadata), so the trace continues across NATS
//! and the log without carrying any tracing context in the events. An
//! agent that sends a W3C `traceparent` header and no correlation id gets
//! its trace id as the correlation id and its span as the command's parent.
//!
//! Spans are built with their real start and end times after the fact, so
//! nothing is kept open across awaits and the hot paths pay nothing while
//! export is off (the default).

use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use uuid::Uuid;

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
#[error("trace export to {endpoint}: {reason}")]
pub struct TraceExportError {
    endpoint: String,
    reason: String,
}

/// Exports spans while it lives; dropping it sends what is still queued.
pub struct TraceExport {
    provider: SdkTracerProvider,
}

impl Drop for TraceExport {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "trace export did not shut down cleanly");
        }
    }
}

/// Starts exporting spans to `endpoint` (the collector's traces URL, for
/// example `http://collector:4318/v1/traces`) as service `service`. The
/// first call of a process wins; a later one returns `None`.
pub fn export(endpoint: &str, service: &str) -> Result<Option<TraceExport>, TraceExportError> {
    let failed = |reason: String| TraceExportError {
        endpoint: endpoint.to_string(),
        reason,
    };
    let url = url::Url::parse(endpoint).map_err(|e| failed(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(failed("the endpoint must be an http or https URL".into()));
    }
    if TRACER.get().is_some() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder_empty()
                .with_service_name(service.to_string())
                .build(),
        )
        .build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "copilot-data");
    if TRACER.set(tracer).is_err() {
        return Ok(None);
    }
    tracing::info!(endpoint, service, "exporting traces (OTLP/HTTP)");
    Ok(Some(TraceExport { provider }))
}

/// Whether spans are exported (callers skip gathering their fields if not).
pub fn exporting() -> bool {
    TRACER.get().is_some()
}

/// The trace of a command: its correlation id, else its command id.
pub fn trace_id(correlation_id: Option<Uuid>, command_id: Uuid) -> TraceId {
    TraceId::from_bytes(*correlation_id.unwrap_or(command_id).as_bytes())
}

/// The span id of a command's `command` span: the command id's last eight
/// bytes (random in a UUIDv7 or v4), never the invalid all-zero id.
pub fn command_span_id(command_id: Uuid) -> SpanId {
    let bytes = command_id.as_bytes();
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[8..]);
    if id == [0; 8] {
        id[7] = 1;
    }
    SpanId::from_bytes(id)
}

/// A W3C `traceparent` header's trace and parent span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: Uuid,
    pub span_id: [u8; 8],
}

impl TraceParent {
    /// `00-<32 hex>-<16 hex>-<2 hex>`; `None` for anything else (an
    /// invalid header is ignored, as the W3C recommendation says).
    pub fn parse(header: &str) -> Option<TraceParent> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |text: &str, len: usize| {
            text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit())
        };
        if parts.next().is_some() || version != "00" || !hex(flags, 2) {
            return None;
        }
        if !hex(trace, 32) || !hex(span, 16) {
            return None;
        }
        let trace = u128::from_str_radix(trace, 16).ok()?;
        let span = u64::from_str_radix(span, 16).ok()?;
        if trace == 0 || span == 0 {
            return None;
        }
        Some(TraceParent {
            trace_id: Uuid::from_u128(trace),
            span_id: span.to_be_bytes(),
        })
    }
}

/// One handled command, as its `command` span shows it.
pub struct CommandSpan<'a> {
    pub command_type: &'a str,
    pub command_id: Uuid,
    pub correlation_id: Option<Uuid>,
    pub aggregate_id: Uuid,
    /// The agent's span, when its `traceparent` named this trace.
    pub parent_span: Option<[u8; 8]>,
    pub status: &'a str,
    /// Where the command's events are in the log, if it appended.
    pub position: Option<&'a str>,
    pub started: SystemTime,
    pub ended: SystemTime,
}

/// Records a handled command's span (a no-op while export is off).
pub fn command(span: CommandSpan<'_>) {
    let Some(tracer) = TRACER.get() else { return };
    let trace = trace_id(span.correlation_id, span.command_id);
    let parent = match span.parent_span {
        Some(parent) => remote(trace, SpanId::from_bytes(parent)),
        None => Context::new(),
    };
    let mut attributes = vec![
        KeyValue::new("copilot.command_type", span.command_type.to_string()),
        KeyValue::new("copilot.command_id", span.command_id.to_string()),
        KeyValue::new("copilot.aggregate_id", span.aggregate_id.to_string()),
        KeyValue::new("copilot.status", span.status.to_string()),
    ];
    if let Some(position) = span.position {
        attributes.push(KeyValue::new("copilot.position", position.to_string()));
    }
    let built = tracer
        .span_builder(format!("command {}", span.command_type))
        .with_kind(SpanKind::Server)
        .with_trace_id(trace)
        .with_span_id(command_span_id(span.command_id))
        .with_start_time(span.started)
        .with_end_time(span.ended)
        .with_attributes(attributes);
    let mut recorded = tracer.build_with_context(built, &parent);
    opentelemetry::trace::Span::end_with_timestamp(&mut recorded, span.ended);
}

/// One command's events applied by a projection, as its `project` span
/// (a child of the command's span) shows them.
pub struct ProjectSpan<'a> {
    pub projection: &'a str,
    pub command_id: Uuid,
    pub correlation_id: Option<Uuid>,
    pub events: usize,
    /// The batch the events were applied in: its start and commit.
    pub started: SystemTime,
    pub ended: SystemTime,
}

/// Records a projection's span for one command (a no-op while export is off).
pub fn project(span: ProjectSpan<'_>) {
    let Some(tracer) = TRACER.get() else { return };
    let trace = trace_id(span.correlation_id, span.command_id);
    let parent = remote(trace, command_span_id(span.command_id));
    let built = tracer
        .span_builder(format!("project {}", span.projection))
        .with_kind(SpanKind::Consumer)
        .with_start_time(span.started)
        .with_end_time(span.ended)
        .with_attributes([
            KeyValue::new("copilot.projection", span.projection.to_string()),
            KeyValue::new("copilot.command_id", span.command_id.to_string()),
            KeyValue::new("copilot.events", span.events as i64),
        ]);
    let mut recorded = tracer.build_with_context(built, &parent);
    opentelemetry::trace::Span::end_with_timestamp(&mut recorded, span.ended);
}

fn remote(trace: TraceId, span: SpanId) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        trace,
        span,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_headers_parse_or_are_ignored() {
        let parsed = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("the W3C example");
        assert_eq!(
            parsed.trace_id,
            Uuid::parse_str("4bf92f35-77b3-4da6-a3ce-929d0e0e4736").expect("uuid")
        );
        assert_eq!(parsed.span_id, 0x00f0_67aa_0ba9_02b7_u64.to_be_bytes());
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_wrong_endpoint_is_refused_naming_it_and_nothing_is_exported() {
        for (endpoint, reason) in [
            ("not a url", "relative URL without a base"),
            // A host and port alone read as a URL of scheme "collector".
            ("collector:4318", "must be an http or https URL"),
            ("ftp://collector/v1/traces", "must be an http or https URL"),
        ] {
            let error = export(endpoint, "test").err().expect("refused");
            let text = error.to_string();
            assert!(text.contains(endpoint) && text.contains(reason), "{text}");
        }
        assert!(!exporting());
    }

    #[test]
    fn a_commands_trace_is_its_correlation_and_its_span_its_id() {
        let command = Uuid::now_v7();
        let correlation = Uuid::new_v4();
        assert_eq!(
            trace_id(Some(correlation), command).to_bytes(),
            *correlation.as_bytes()
        );
        assert_eq!(trace_id(None, command).to_bytes(), *command.as_bytes());
        assert_eq!(command_span_id(command).to_bytes(), command.as_bytes()[8..]);
        assert_ne!(command_span_id(Uuid::nil()), SpanId::INVALID);
    }
}
