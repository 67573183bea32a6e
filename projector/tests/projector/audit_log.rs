//! The audit log: one row per event, append-only for the application role,
//! partitions ahead of time and pruning past the retention.

use chrono::{Months, Utc};
use sqlx::PgPool;
use testkit::history::History;

use crate::support::{self, count};

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn one_row_per_event_and_immutable_for_the_app_role(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    let running = support::spawn(&store, support::config()).await;
    let events = support::append(&store, &mut History::new(11), 500).await;
    support::caught_up(&store).await;
    running.stop().await;

    let rows = count(&pool, "SELECT count(*) FROM audit.audit_logs").await;
    assert_eq!(rows as u64, events);
    let unmatched = count(
        &pool,
        "SELECT count(*) FROM events e FULL JOIN audit.audit_logs a ON a.id = e.event_id
          WHERE a.id IS NULL OR e.event_id IS NULL OR a.action <> e.event_type
             OR a.resource_id <> e.stream_id OR a.version <> e.version",
    )
    .await;
    assert_eq!(unmatched, 0, "audit rows and events pair up one to one");
    // Facts are kept, personal data is not: no message text in the log.
    let personal = count(
        &pool,
        "SELECT count(*) FROM audit.audit_logs WHERE action = 'message_appended'
            AND after->>'content' <> '[personal]'",
    )
    .await;
    assert_eq!(personal, 0);
    let with_actor = count(&pool, "SELECT count(*) FROM audit.audit_logs WHERE actor IS NOT NULL AND ip_address IS NOT NULL AND user_agent IS NOT NULL AND correlation_id IS NOT NULL").await;
    assert_eq!(with_actor, rows);
    let before = count(
        &pool,
        "SELECT count(*) FROM audit.audit_logs WHERE before ? 'tags_before'",
    )
    .await;
    assert!(before > 0, "before values are recorded");

    for statement in [
        "UPDATE audit.audit_logs SET action = 'edited'",
        "DELETE FROM audit.audit_logs",
        "TRUNCATE audit.audit_logs",
        "UPDATE audit.audit_logs_default SET action = 'edited'",
    ] {
        let mut tx = pool.begin().await.expect("begin");
        sqlx::query("SET LOCAL ROLE copilot_app")
            .execute(&mut *tx)
            .await
            .expect("set role");
        let refused = sqlx::query(statement).execute(&mut *tx).await;
        let error = refused.expect_err(statement);
        let code = error
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.to_string());
        assert_eq!(code.as_deref(), Some("42501"), "{statement}: {error}");
    }
    // Even the owner cannot change a row: the trigger refuses. The one
    // change allowed is erasing an address and program (user.forget).
    sqlx::query("UPDATE audit.audit_logs SET ip_address = NULL, user_agent = NULL")
        .execute(&pool)
        .await
        .expect("erasing addresses is allowed");
    for statement in [
        "UPDATE audit.audit_logs SET action = 'edited'",
        "UPDATE audit.audit_logs SET ip_address = '192.0.2.1'",
        "UPDATE audit.audit_logs SET ip_address = NULL, action = 'edited'",
        "DELETE FROM audit.audit_logs",
        "TRUNCATE audit.audit_logs",
    ] {
        let error = sqlx::query(statement)
            .execute(&pool)
            .await
            .expect_err(statement);
        assert!(
            error.to_string().contains("append-only"),
            "{statement}: {error}"
        );
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM audit.audit_logs").await,
        rows
    );

    // The application role is neither owner nor superuser nor RLS-exempt.
    let (superuser, bypass): (bool, bool) =
        sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'copilot_app'")
            .fetch_one(&pool)
            .await
            .expect("role");
    assert!(!superuser && !bypass);
    let owned = count(&pool, "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = 'copilot_app'").await;
    assert_eq!(owned, 0);
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn partitions_ahead_and_pruning_past_retention(pool: PgPool) {
    let now = Utc::now();
    let month = |back: u32| {
        let first = now.date_naive().with_day0(0).expect("first of month");
        first.checked_sub_months(Months::new(back)).expect("month")
    };
    use chrono::Datelike;
    // Partitions of old months, as a long-running system would have.
    for back in [14u32, 13, 12, 11, 6] {
        sqlx::query("SELECT audit_ensure_partition('audit', $1)")
            .bind(month(back))
            .execute(&pool)
            .await
            .expect("old partition");
    }
    let dropped = projector::maintain_audit(&pool, "audit", now)
        .await
        .expect("prune");
    let name = |back: u32| format!("audit_logs_{}", month(back).format("%Y_%m"));
    assert_eq!(dropped, vec![name(14), name(13), name(12)]);
    let existing: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'audit.audit_logs'::regclass ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("partitions");
    for kept in [11u32, 6, 0] {
        assert!(
            existing.contains(&name(kept)),
            "{} kept: {existing:?}",
            name(kept)
        );
    }
    // The coming three months exist ahead of time.
    for ahead in 1..=3u32 {
        let m = month(0)
            .checked_add_months(Months::new(ahead))
            .expect("month");
        let partition = format!("audit_logs_{}", m.format("%Y_%m"));
        assert!(
            existing.contains(&partition),
            "{partition} ahead: {existing:?}"
        );
    }
}
