//! `GET /v1/series/{metric}`: the buckets sum to the totals and to what the
//! lists count; a plain user's series hold only their own rows; the bucket
//! and range are validated and bounded, each bad parameter a problem that
//! names it.

use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::Stack;

fn count_of(points: &Value) -> i64 {
    points
        .as_array()
        .expect("an array")
        .iter()
        .map(|p| p["count"].as_i64().expect("count"))
        .sum()
}

/// Each label set's points sum to its total.
fn assert_buckets_sum_to_totals(series: &Value) {
    for total in series["totals"].as_array().expect("totals") {
        let labels = &total["labels"];
        let points: Vec<&Value> = series["points"]
            .as_array()
            .expect("points")
            .iter()
            .filter(|p| &p["labels"] == labels)
            .collect();
        let count: i64 = points
            .iter()
            .map(|p| p["count"].as_i64().unwrap_or(0))
            .sum();
        assert_eq!(count, total["count"].as_i64().unwrap_or(-1), "{labels}");
        if let Some(tokens) = total["tokens"].as_i64() {
            let sum: i64 = points
                .iter()
                .map(|p| p["tokens"].as_i64().unwrap_or(0))
                .sum();
            assert_eq!(sum, tokens, "{labels} tokens");
        }
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn series_sum_to_totals_and_show_each_caller_only_theirs(pool: PgPool) {
    let stack = Stack::start(pool.clone()).await;
    let (alice_id, alice) = stack.user("operator").await;
    let (_, bob) = stack.user("operator").await;
    let (_, admin) = stack.user("admin").await;
    let mut last = String::new();
    for (token, messages) in [(&alice, 3), (&bob, 2)] {
        let conversation = Uuid::now_v7();
        stack
            .ok(
                "conversation.start",
                conversation,
                json!({"title": "t"}),
                token,
            )
            .await;
        for i in 0..messages {
            last = stack
                .ok(
                    "conversation.append_message",
                    conversation,
                    json!({"message_id": Uuid::now_v7(), "role": if i % 2 == 0 { "user" } else { "assistant" },
                           "content": format!("message {i}"), "tokens_in": 10, "tokens_out": 5, "cost_usd": 0.25}),
                    token,
                )
                .await;
        }
    }
    for severity in ["high", "high", "low"] {
        last = stack
            .ok(
                "incident.open",
                Uuid::now_v7(),
                json!({"title": "disk full", "description": "d", "severity": severity, "affected_services": ["api"]}),
                &admin,
            )
            .await;
    }
    let from = (chrono::Utc::now() - chrono::Duration::minutes(30))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to = (chrono::Utc::now() + chrono::Duration::minutes(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let query = format!(
        "bucket=1m&from={}&to={}",
        from.replace('+', "%2B"),
        to.replace('+', "%2B")
    );

    // Alice: her three messages (15 tokens each), nobody else's.
    let mine = stack
        .get_at(&format!("/v1/series/messages?{query}"), &alice, &last)
        .await;
    assert_eq!(mine.status, 200, "{:?}", mine.body);
    assert_eq!(count_of(&mine.body["points"]), 3, "{}", mine.body);
    assert_buckets_sum_to_totals(&mine.body);
    let tokens: i64 = mine.body["totals"]
        .as_array()
        .expect("totals")
        .iter()
        .map(|t| t["tokens"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(tokens, 45);
    assert_eq!(mine.body["bucket_seconds"], 60);
    // The admin: everyone's five, by role.
    let all = stack
        .get_at(&format!("/v1/series/messages?{query}"), &admin, &last)
        .await;
    assert_eq!(count_of(&all.body["points"]), 5, "{}", all.body);
    assert_buckets_sum_to_totals(&all.body);
    let roles: Vec<&str> = all.body["totals"]
        .as_array()
        .expect("totals")
        .iter()
        .filter_map(|t| t["labels"]["role"].as_str())
        .collect();
    assert_eq!(roles, ["assistant", "user"]);
    // Conversations: Alice sees hers only.
    let conversations = stack
        .get_at(&format!("/v1/series/conversations?{query}"), &alice, &last)
        .await;
    assert_eq!(count_of(&conversations.body["points"]), 1);
    // Incidents opened, by severity, as the list counts them.
    let opened = stack
        .get_at(
            &format!("/v1/series/incidents_opened?{query}"),
            &admin,
            &last,
        )
        .await;
    assert_buckets_sum_to_totals(&opened.body);
    let by_severity: Vec<(String, i64)> = opened.body["totals"]
        .as_array()
        .expect("totals")
        .iter()
        .map(|t| {
            (
                t["labels"]["severity"].as_str().unwrap_or("").to_string(),
                t["count"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        by_severity,
        [("high".to_string(), 2), ("low".to_string(), 1)]
    );
    let listed = stack.get("/v1/incidents?limit=200", &admin).await;
    assert_eq!(listed.ids().len() as i64, count_of(&opened.body["points"]));
    // Commands by outcome: Alice's own (one of them rejected), and
    // everyone's for the admin, as the log and the stored rejections hold.
    let rejected = stack
        .command(
            "conversation.append_message",
            Uuid::now_v7(),
            json!({"message_id": Uuid::now_v7(), "role": "user", "content": "to nowhere"}),
            &alice,
        )
        .await;
    assert_ne!(rejected.status, command_service::Status::Accepted);
    let by_status = |body: &Value| -> Vec<(String, i64)> {
        body["totals"]
            .as_array()
            .expect("totals")
            .iter()
            .map(|t| {
                (
                    t["labels"]["status"].as_str().unwrap_or("").to_string(),
                    t["count"].as_i64().unwrap_or(0),
                )
            })
            .collect()
    };
    let accepted_of = |actor: Option<String>| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM events WHERE command_id IS NOT NULL
                    AND ($1::text IS NULL OR metadata->>'actor' = $1)",
            )
            .bind(actor)
            .fetch_one(&pool)
            .await
            .expect("count")
        }
    };
    let own = stack
        .get(&format!("/v1/series/commands?{query}"), &alice)
        .await;
    assert_eq!(own.status, 200, "{:?}", own.body);
    assert_buckets_sum_to_totals(&own.body);
    let own_accepted = accepted_of(Some(alice_id.to_string())).await;
    assert!(own_accepted >= 4);
    assert_eq!(
        by_status(&own.body),
        [
            ("accepted".to_string(), own_accepted),
            ("rejected".to_string(), 1)
        ]
    );
    let everyone = stack
        .get(&format!("/v1/series/commands?{query}"), &admin)
        .await;
    assert_buckets_sum_to_totals(&everyone.body);
    let statuses = by_status(&everyone.body);
    assert_eq!(
        statuses[0],
        ("accepted".to_string(), accepted_of(None).await)
    );

    // Nothing resolved yet: an empty series, not an error.
    let resolved = stack
        .get_at(
            &format!("/v1/series/incidents_resolved?{query}"),
            &admin,
            &last,
        )
        .await;
    assert_eq!(resolved.status, 200);
    assert_eq!(resolved.body["points"], json!([]));
    stack.finish().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_series_parameters_are_problems_naming_them(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let (_, alice) = stack.user("operator").await;
    for (path, parameter) in [
        ("/v1/series/passwords", "metric"),
        ("/v1/series/messages?bucket=2h", "bucket"),
        ("/v1/series/messages?from=yesterday", "from"),
        ("/v1/series/messages?to=2026-13-01T00:00:00Z", "to"),
        (
            "/v1/series/messages?from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",
            "from",
        ),
        // 1-minute buckets over a month: more than the 1,000 allowed.
        (
            "/v1/series/messages?bucket=1m&from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z",
            "from",
        ),
        ("/v1/series/messages?limit=5", "query"),
    ] {
        let reply = stack.get(path, &alice).await;
        let problem = reply.problem(400);
        assert_eq!(problem["parameter"], parameter, "{path}: {problem}");
    }
    stack.finish().await;
}

/// The lag series counts every event each projection applied once, with
/// its largest and mean delay, and is the same for every caller.
#[sqlx::test(migrations = "../migrations")]
async fn projection_lag_counts_each_applied_event_once(pool: PgPool) {
    let stack = Stack::start(pool.clone()).await;
    let (_, alice) = stack.user("operator").await;
    let (_, admin) = stack.user("admin").await;
    let (_, last) = stack.conversation_with(&alice, 5).await;
    // Both SQL projections have applied everything once this answers.
    assert_eq!(
        stack
            .get_at("/v1/conversations", &alice, &last)
            .await
            .status,
        200
    );
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .expect("count");
    let applied = |body: &Value, projection: &str| -> Option<Value> {
        body["totals"]
            .as_array()?
            .iter()
            .find(|t| t["labels"]["projection"] == projection)
            .cloned()
    };
    // Figures are written every two seconds; each try asks for another
    // range so no cached answer is reused.
    let mut tries = 0;
    let series = loop {
        tries += 1;
        let from = (chrono::Utc::now() - chrono::Duration::minutes(30 + tries))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let reply = stack
            .get(
                &format!("/v1/series/projection_lag?bucket=1m&from={from}"),
                &admin,
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let done = ["relational", "audit"]
            .iter()
            .all(|p| applied(&reply.body, p).and_then(|t| t["count"].as_i64()) == Some(logged));
        if done || tries > 50 {
            break reply.body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_buckets_sum_to_totals(&series);
    for projection in ["relational", "audit"] {
        let total = applied(&series, projection).expect("a total");
        assert_eq!(total["count"].as_i64(), Some(logged), "{series}");
        let max = total["lag_max_seconds"].as_f64().expect("max");
        let mean = total["lag_mean_seconds"].as_f64().expect("mean");
        assert!((0.0..=max).contains(&mean), "{total}");
        // The largest of the points is the total's largest.
        let points_max = series["points"]
            .as_array()
            .expect("points")
            .iter()
            .filter(|p| p["labels"]["projection"] == projection)
            .filter_map(|p| p["lag_max_seconds"].as_f64())
            .fold(0.0_f64, f64::max);
        assert_eq!(points_max, max);
    }
    // Nothing personal in it: a plain user may read it, and reads the same.
    let from = series["from"].as_str().expect("from").replace('+', "%2B");
    let to = series["to"].as_str().expect("to").replace('+', "%2B");
    let mine = stack
        .get(
            &format!("/v1/series/projection_lag?bucket=1m&from={from}&to={to}"),
            &alice,
        )
        .await;
    assert_eq!(mine.status, 200, "{:?}", mine.body);
    for projection in ["relational", "audit"] {
        assert_eq!(
            applied(&mine.body, projection).map(|t| t["count"].clone()),
            Some(json!(logged))
        );
    }
    stack.finish().await;
}

/// A range with more points (buckets × label sets) than an answer may hold
/// is a problem asking for a larger bucket; the larger bucket answers.
#[sqlx::test(migrations = "../migrations")]
async fn a_series_of_too_many_points_asks_for_a_larger_bucket(pool: PgPool) {
    let stack = Stack::start(pool.clone()).await;
    let (_, admin) = stack.user("admin").await;
    // Eleven projections' figures in each of 1,000 minutes: 11,000 points
    // at one-minute buckets.
    sqlx::query(
        "INSERT INTO projection_lag (projection, minute, events, lag_ms_sum, lag_ms_max)
         SELECT 'p' || p, timestamptz '2026-01-01T00:00:00Z' + m * interval '1 minute', 2, 10, 7
           FROM generate_series(1, 11) AS p, generate_series(0, 999) AS m",
    )
    .execute(&pool)
    .await
    .expect("figures");
    let range = "from=2026-01-01T00:00:00Z&to=2026-01-01T16:40:00Z";
    let reply = stack
        .get(
            &format!("/v1/series/projection_lag?bucket=1m&{range}"),
            &admin,
        )
        .await;
    let problem = reply.problem(400);
    assert_eq!(problem["parameter"], "from", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("larger bucket")),
        "{problem}"
    );
    let hourly = stack
        .get(
            &format!("/v1/series/projection_lag?bucket=1h&{range}"),
            &admin,
        )
        .await;
    assert_eq!(hourly.status, 200, "{:?}", hourly.body);
    assert_buckets_sum_to_totals(&hourly.body);
    let totals = hourly.body["totals"].as_array().expect("totals");
    assert_eq!(totals.len(), 11);
    for total in totals {
        assert_eq!(total["count"], 2_000, "{total}");
        assert_eq!(total["lag_max_seconds"], 0.007, "{total}");
        let mean = total["lag_mean_seconds"].as_f64().expect("mean");
        assert!((mean - 0.005).abs() < 1e-12, "{total}");
    }
    stack.finish().await;
}
