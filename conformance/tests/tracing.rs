//! What operators see through `tracing`, in both drivers: a span for each
//! statement (its text, never its values; rows; SQLSTATE or error; host;
//! duration) and the pool's events (wait time, opened, closed, discarded
//! and why). A recording subscriber is this binary's global default.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use duet_conformance::pools::{unreachable_url, PoolDriver};
use duet_conformance::server::TestServer;
use duet_conformance::traces::{recorder, Record};
use duet_conformance::{conformance_tests, pool_tests, Driver};
use duet_core::pool::PoolOptions;
use duet_core::{ops, Error};

/// One test at a time: pool events carry no marker of their own.
fn exclusive() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    let guard = ONE.lock().unwrap_or_else(|e| e.into_inner());
    recorder().clear();
    guard
}

fn url() -> String {
    TestServer::shared().url()
}

fn one(spans: Vec<Record>, what: &str) -> Record {
    assert_eq!(spans.len(), 1, "one span for {what}: {spans:#?}");
    spans.into_iter().next().unwrap()
}

fn a_statement_span_has_its_text_rows_host_and_duration_but_no_values<D: Driver>() {
    let _one = exclusive();
    let server = TestServer::shared();
    let mut c = D::connect(&url()).unwrap();
    let marker = format!("trace_rows_{}", D::NAME);
    let sql = format!("SELECT g FROM generate_series(1, 3) g WHERE $1::text <> '{marker}'");
    let rows = c.query(&sql, &[&"secret-value-never-traced"]).unwrap();
    assert_eq!(rows.len(), 3);

    let span = one(recorder().statements(&marker), "the query");
    assert_eq!(span.name, "statement");
    assert_eq!(span.level, tracing::Level::DEBUG);
    assert_eq!(span.field("statement"), Some(sql.as_str()));
    assert_eq!(span.field("rows"), Some("3"));
    assert_eq!(span.field("host"), Some(server.host().as_str()));
    assert_eq!(span.field("port"), Some(server.port().to_string().as_str()));
    assert_eq!(span.field("sqlstate"), None);
    assert_eq!(span.field("error"), None);
    let us: u64 = span.field("duration_us").expect("a duration").parse().unwrap();
    assert!(us < 60_000_000, "{us} µs");
    assert!(span.closed, "the span ends with the statement");
    let leaked = recorder()
        .records()
        .iter()
        .any(|r| r.fields.values().any(|v| v.contains("secret-value")));
    assert!(!leaked, "a parameter's value reached a trace");
}

fn failures_carry_their_sqlstate_or_error<D: Driver>() {
    let _one = exclusive();
    let mut c = D::connect(&url()).unwrap();
    let marker = format!("trace_fail_{}", D::NAME);
    let e = c.query(&format!("SELECT 1/0 AS {marker}"), &[]).unwrap_err();
    assert_eq!(e.code(), Some("22012"));
    let span = one(recorder().statements(&marker), "the failed query");
    assert_eq!(span.field("sqlstate"), Some("22012"));
    assert_eq!(span.field("rows"), None);

    // A time limit that ends the call: the span says so, not 57014.
    let slow = format!("SELECT pg_sleep(5) AS {marker}_slow");
    let e = c
        .run_with_timeout(ops::query(&slow, &[]).rows(), Duration::from_millis(100))
        .unwrap_err();
    assert!(matches!(e, Error::Timeout), "{e:?}");
    let span = one(recorder().statements(&format!("{marker}_slow")), "the slow query");
    assert_eq!(span.field("sqlstate"), None);
    assert!(span.field("error").is_some_and(|e| e.contains("time")), "{span:?}");
    assert!(span.closed);
}

fn a_transaction_traces_each_statement_including_its_control<D: Driver>() {
    let _one = exclusive();
    let mut c = D::connect(&url()).unwrap();
    c.batch_execute("CREATE TEMP TABLE traced (i int)").unwrap();
    let marker = format!("INSERT INTO traced SELECT 1 /* {} */", D::NAME);
    let n = c.run(ops::atomic(ops::query(&marker, &[]).affected())).unwrap();
    assert_eq!(n, 1);
    let statements: Vec<String> = recorder()
        .records()
        .iter()
        .filter(|r| r.span && r.target == "duet::statement")
        .filter_map(|r| r.field("statement").map(str::to_string))
        .collect();
    let at = statements
        .iter()
        .position(|s| *s == marker)
        .expect("the insert is traced");
    assert!(statements[..at].iter().any(|s| s == "BEGIN"), "{statements:?}");
    assert!(statements[at..].iter().any(|s| s == "COMMIT"), "{statements:?}");
    let insert = one(recorder().statements(&marker), "the insert");
    assert_eq!(insert.field("rows"), Some("1"));
}

conformance_tests!(
    a_statement_span_has_its_text_rows_host_and_duration_but_no_values,
    failures_carry_their_sqlstate_or_error,
    a_transaction_traces_each_statement_including_its_control,
);

fn options() -> PoolOptions {
    PoolOptions {
        max_size: 1,
        acquire_timeout: Some(Duration::from_secs(20)),
        ..Default::default()
    }
}

/// Waits (for a background thread or task) until `message` was recorded.
fn pool_event(message: &str) -> Record {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(e) = recorder().pool_events(message).pop() {
            return e;
        }
        assert!(
            std::time::Instant::now() < until,
            "no `{message}` event: {:#?}",
            recorder().records()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn the_pool_reports_opening_lending_and_waiting<P: PoolDriver>() {
    let _one = exclusive();
    let pool = P::pool(&url(), options(), None);
    assert!(P::query(&pool, "SELECT 1").is_ok());
    assert_eq!(pool_event("connection opened").field("size"), Some("1"));
    let lent = pool_event("connection lent");
    assert!(
        lent.field("wait_us").is_some_and(|w| w.parse::<u64>().is_ok()),
        "{lent:?}"
    );
}

fn the_pool_reports_why_it_discards_and_closes_connections<P: PoolDriver>() {
    let _one = exclusive();
    let pool = P::pool(
        &url(),
        PoolOptions {
            max_lifetime: Some(Duration::from_millis(1500)),
            ..options()
        },
        None,
    );
    // Killed while idle: the check before lending finds it dead.
    let pid = P::query(&pool, "SELECT pg_backend_pid()").unwrap().unwrap();
    let mut admin = duet_sync::Client::connect(&url()).unwrap();
    admin
        .batch_execute(&format!("SELECT pg_terminate_backend({pid})"))
        .unwrap();
    assert!(P::query(&pool, "SELECT 1").is_ok());
    let discarded = pool_event("connection discarded");
    assert_eq!(discarded.level, tracing::Level::INFO);
    assert!(
        discarded.field("reason").is_some_and(|r| r.contains("dead while idle")),
        "{discarded:?}"
    );
    // Past max_lifetime: closed, and the reason named.
    let closed = pool_event("connection closed");
    assert_eq!(closed.field("reason"), Some("max_lifetime"));
}

fn the_pool_warns_of_failed_acquires_and_connects<P: PoolDriver>() {
    let _one = exclusive();
    let url = unreachable_url();
    let pool = P::pool(&url, options(), None);
    assert!(P::query(&pool, "SELECT 1").is_err());
    let connect = pool_event("connect failed");
    let port = url.rsplit_once(':').and_then(|(_, p)| p.split('/').next()).unwrap();
    assert_eq!(connect.level, tracing::Level::WARN);
    assert!(connect.field("error").is_some_and(|e| e.contains(port)), "{connect:?}");
    let failed = pool_event("acquire failed");
    assert_eq!(failed.level, tracing::Level::WARN);
}

pool_tests!(
    the_pool_reports_opening_lending_and_waiting,
    the_pool_reports_why_it_discards_and_closes_connections,
    the_pool_warns_of_failed_acquires_and_connects,
);
