//! A representative set of behaviours through PgBouncer (Debian's 1.18) in
//! transaction mode, with `statement_cache_capacity=0` (it cannot keep named
//! statements before 1.21): queries with parameters, pipelines, transactions
//! and their rollback, the ORM, cancels, and a pool in front of it.

use std::sync::OnceLock;

use duet_conformance::pgbouncer::PgBouncer;
use duet_conformance::pools::PoolDriver;
use duet_conformance::server::TestServer;
use duet_conformance::{assert_usable, conformance_tests, pool_tests, Driver, TxStep};
use duet_core::ops::{atomic, pipeline, query};
use duet_core::pool::PoolOptions;

/// One PgBouncer for the whole test binary, in front of the shared server;
/// `None` (the tests then say so and return) with `DATABASE_URL`, whose
/// server may want a password PgBouncer does not have.
fn bouncer() -> Option<&'static PgBouncer> {
    static B: OnceLock<Option<PgBouncer>> = OnceLock::new();
    B.get_or_init(|| {
        if std::env::var("DATABASE_URL").is_ok_and(|u| !u.trim().is_empty()) {
            eprintln!("DATABASE_URL is set: no PgBouncer tests");
            return None;
        }
        Some(PgBouncer::start(TestServer::shared()).expect("PgBouncer starts (scripts/test installs it)"))
    })
    .as_ref()
}

fn queries_pipelines_and_transactions_through_pgbouncer<D: Driver>() {
    let Some(b) = bouncer() else { return };
    let mut c = D::connect(&b.url()).unwrap();
    assert_eq!(c.cached_statements(), 0);
    let row = c.query_one("SELECT $1::int4 * 2, $2::text", &[&21i32, &"x"]).unwrap();
    assert_eq!((row.get::<i32>(0), row.get::<String>(1)), (42, "x".to_string()));
    let (a, b2) = c
        .run(pipeline((
            query("SELECT 1::int4", &[]).one(),
            query("SELECT 2::int4", &[]).one(),
        )))
        .unwrap();
    assert_eq!((a.get::<i32>(0), b2.get::<i32>(0)), (1, 2));
    let t = format!("bouncer_{}", D::NAME);
    c.batch_execute(&format!("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (v int)"))
        .unwrap();
    let insert = format!("INSERT INTO {t} VALUES (1)");
    c.run(atomic(query(insert.as_str(), &[]).affected())).unwrap();
    // A failing transaction rolls back as a whole, through the pooler too.
    let log = c
        .atomic_script(&[TxStep::Execute(insert.clone()), TxStep::Fail("no".into())])
        .unwrap_err();
    assert!(log.to_string().contains("no"), "{log}");
    let n: i64 = c.query_one(&format!("SELECT count(*) FROM {t}"), &[]).unwrap().get(0);
    assert_eq!(n, 1);
    assert_usable(&mut c);
}

fn types_not_built_in_are_looked_up_through_pgbouncer<D: Driver>() {
    let Some(b) = bouncer() else { return };
    let mut admin = duet_sync::Client::connect(&TestServer::shared().url()).unwrap();
    let t = format!("bouncer_mood_{}", D::NAME);
    admin
        .batch_execute(&format!(
            "DROP TYPE IF EXISTS {t}; CREATE TYPE {t} AS ENUM ('low', 'high')"
        ))
        .unwrap();
    let mut c = D::connect(&b.url()).unwrap();
    // Results and arrays of a type the session meets first, with unnamed
    // statements only: the lookup is one more statement through the pooler.
    let row = c
        .query_one(&format!("SELECT 'high'::{t}, ARRAY['low', 'high']::{t}[]"), &[])
        .unwrap();
    let ty = &row.columns()[0].type_;
    assert_eq!(
        ty.kind(),
        &duet_core::types::Kind::Enum(vec!["low".into(), "high".into()])
    );
    assert!(matches!(row.columns()[1].type_.kind(), duet_core::types::Kind::Array(e) if e == ty));
    assert_usable(&mut c);
}

fn a_cancel_reaches_the_statement_through_pgbouncer<D: Driver>() {
    let Some(b) = bouncer() else { return };
    let mut c = D::connect(&b.url()).unwrap();
    let cancel = c.canceller();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        cancel()
    });
    let e = c.execute("SELECT pg_sleep(30)", &[]).expect_err("cancelled");
    assert_eq!(e.code(), Some("57014"), "{e}");
    t.join().unwrap().unwrap();
    assert_usable(&mut c);
}

fn a_pool_in_front_of_pgbouncer<P: PoolDriver>() {
    let Some(b) = bouncer() else { return };
    let pool = P::pool(
        &b.url(),
        PoolOptions {
            max_size: 4,
            ..Default::default()
        },
        None,
    );
    let results = P::concurrently(&pool, 100, "SELECT 1");
    assert!(
        results.iter().all(|r| matches!(r, Ok(Some(v)) if v == "1")),
        "{results:?}"
    );
    assert!(P::status(&pool).size <= 4);
}

conformance_tests!(
    types_not_built_in_are_looked_up_through_pgbouncer,
    queries_pipelines_and_transactions_through_pgbouncer,
    a_cancel_reaches_the_statement_through_pgbouncer,
);

pool_tests!(a_pool_in_front_of_pgbouncer);
