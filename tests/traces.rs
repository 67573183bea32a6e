//! Trace export: `up` with `COPILOT_OTLP_ENDPOINT` set sends its spans to
//! an OTLP/HTTP collector (here a stand-in that decodes the exporter's
//! protobuf messages). A command is one trace from the agent's span across
//! NATS into the command service and into each projection that applies it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

mod common;

use common::system::System;

#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    service: String,
    attributes: Vec<(String, String)>,
}

impl Span {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

type Received = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP traces endpoint on a free loopback port: its URL and what
/// it received.
async fn collector() -> (String, Received, tokio::task::JoinHandle<()>) {
    let received: Received = Arc::default();
    let kept = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let kept = Arc::clone(&kept);
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP request");
                let mut spans = kept.lock().expect("lock");
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .and_then(|a| a.value.as_ref())
                        .map(|v| format!("{:?}", v.value))
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            spans.push(Span {
                                name: span.name,
                                trace_id: span.trace_id,
                                span_id: span.span_id,
                                parent_span_id: span.parent_span_id,
                                service: service.clone(),
                                attributes: span
                                    .attributes
                                    .into_iter()
                                    .map(|a| {
                                        let value = match a.value.and_then(|v| v.value) {
                                            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => s,
                                            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(i)) => i.to_string(),
                                            other => format!("{other:?}"),
                                        };
                                        (a.key, value)
                                    })
                                    .collect(),
                            });
                        }
                    }
                }
                // An empty ExportTraceServiceResponse.
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!(
        "http://{}/v1/traces",
        listener.local_addr().expect("address")
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, received, task)
}

/// Sends `incident.open` over request/reply until the service answers.
async fn open_incident(
    client: &async_nats::Client,
    system: &System,
    body: serde_json::Value,
    traceparent: Option<&str>,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        headers.insert(
            "Authorization",
            format!("Bearer {}", system.bootstrap).as_str(),
        );
        if let Some(traceparent) = traceparent {
            headers.insert("traceparent", traceparent);
        }
        let sent = tokio::time::timeout(
            Duration::from_secs(5),
            client.request_with_headers(
                format!("{}.rpc.incident.open", system.prefix),
                headers,
                serde_json::to_vec(&body).expect("json").into(),
            ),
        )
        .await;
        if let Ok(Ok(reply)) = sent {
            return serde_json::from_slice(&reply.payload).expect("a JSON result");
        }
        assert!(Instant::now() < deadline, "up never answered");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn a_command_is_one_trace_from_the_agent_to_every_projection(pool: PgPool) {
    let (endpoint, received, collector_task) = collector().await;
    let system = System::start_with(
        &pool,
        &[
            ("COPILOT_OTLP_ENDPOINT", endpoint.as_str()),
            ("COPILOT_PROJECTOR_REDIS", "true"),
        ],
        None,
    )
    .await;
    let client = async_nats::connect("nats://127.0.0.1:4222")
        .await
        .expect("NATS");
    let incident = |title: &str| json!({"title": title, "description": "d", "severity": "low", "affected_services": ["api"]});

    // With a correlation id: the trace is the correlation id.
    let (with_correlation, correlation) = (Uuid::now_v7(), Uuid::new_v4());
    let answer = open_incident(
        &client,
        &system,
        json!({"command_id": with_correlation, "aggregate_id": Uuid::now_v7(),
               "correlation_id": correlation, "payload": incident("one")}),
        None,
    )
    .await;
    assert_eq!(answer["status"], "accepted", "{answer}");
    // With the agent's traceparent and no correlation id: the agent's trace
    // becomes the correlation id, its span the command's parent.
    let agent_trace = Uuid::new_v4();
    let agent_span = [7u8, 6, 5, 4, 3, 2, 1, 9];
    let traceparent = format!(
        "00-{}-{}-01",
        agent_trace.simple(),
        agent_span
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let from_agent = Uuid::now_v7();
    let answer = open_incident(
        &client,
        &system,
        json!({"command_id": from_agent, "aggregate_id": Uuid::now_v7(), "payload": incident("two")}),
        Some(&traceparent),
    )
    .await;
    assert_eq!(answer["status"], "accepted", "{answer}");
    let stored: Option<String> =
        sqlx::query_scalar("SELECT metadata->>'correlation_id' FROM events WHERE command_id = $1")
            .bind(from_agent)
            .fetch_one(&pool)
            .await
            .expect("the event");
    assert_eq!(stored, Some(agent_trace.to_string()));

    // The spans arrive in the exporter's batches (every few seconds).
    let wanted = |command: Uuid, trace: Uuid| {
        let spans = received.lock().expect("lock").clone();
        let trace = trace.as_bytes().to_vec();
        let of_command: Vec<Span> = spans
            .into_iter()
            .filter(|s| s.attribute("copilot.command_id") == Some(&command.to_string()))
            .collect();
        let names: Vec<&str> = of_command.iter().map(|s| s.name.as_str()).collect();
        let complete = [
            "command incident.open",
            "project relational",
            "project audit",
            "project redis",
        ]
        .iter()
        .all(|n| names.contains(n));
        (complete, of_command, trace)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    for (command, trace, parent) in [
        (with_correlation, correlation, None),
        (from_agent, agent_trace, Some(agent_span.to_vec())),
    ] {
        let (spans, trace) = loop {
            let (complete, spans, trace) = wanted(command, trace);
            if complete {
                break (spans, trace);
            }
            assert!(
                Instant::now() < deadline,
                "spans of {command} never all arrived: {spans:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let root = spans
            .iter()
            .find(|s| s.name == "command incident.open")
            .expect("the command's span");
        assert_eq!(root.trace_id, trace, "{root:?}");
        assert_eq!(root.span_id, command.as_bytes()[8..].to_vec());
        assert_eq!(
            root.parent_span_id,
            parent.clone().unwrap_or_default(),
            "{root:?}"
        );
        assert_eq!(root.attribute("copilot.status"), Some("accepted"));
        assert!(root.service.contains("copilot-data"), "{root:?}");
        for projection in ["relational", "audit", "redis"] {
            let applied = spans
                .iter()
                .find(|s| s.name == format!("project {projection}"))
                .expect("the projection's span");
            assert_eq!(applied.trace_id, trace, "{applied:?}");
            assert_eq!(applied.parent_span_id, root.span_id, "{applied:?}");
            assert_eq!(applied.attribute("copilot.events"), Some("1"));
        }
    }
    // Each command's spans once per projection: no batch reported twice.
    let spans = received.lock().expect("lock").clone();
    for command in [with_correlation, from_agent] {
        let mut names: Vec<String> = spans
            .iter()
            .filter(|s| s.attribute("copilot.command_id") == Some(&command.to_string()))
            .map(|s| s.name.clone())
            .collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "{names:?}");
    }
    system.finish().await;
    collector_task.abort();
}
