//! Transaction options (isolation level, read only, deferrable) and the
//! retry of serialization failures and deadlocks, as operations and through
//! each driver's interactive `atomic_with` and `retry`.

use duet_conformance::server::TestServer;
use duet_conformance::{conformance_tests, Driver};
use duet_core::ops::{atomic, pipeline, query, retry, IsolationLevel, TxOptions};
use duet_core::{Error, TransactionStatus};

fn url() -> String {
    TestServer::shared().url()
}

fn serializable_read_only() -> TxOptions {
    TxOptions::new()
        .isolation(IsolationLevel::Serializable)
        .read_only()
        .deferrable()
}

fn options_reach_the_server<D: Driver>() {
    let mut c = D::connect(&url()).unwrap();
    let (level, read_only, deferrable) = c
        .run(
            atomic(pipeline((
                query("SHOW transaction_isolation", &[]).one(),
                query("SHOW transaction_read_only", &[]).one(),
                query("SHOW transaction_deferrable", &[]).one(),
            )))
            .options(serializable_read_only()),
        )
        .unwrap();
    let shown = |r: duet_core::Row| r.get::<String>(0);
    assert_eq!(
        (shown(level), shown(read_only), shown(deferrable)),
        ("serializable".into(), "on".into(), "on".into())
    );
    // The interactive form says the same.
    let level = c
        .retry_atomic(
            1,
            TxOptions::new().isolation(IsolationLevel::RepeatableRead),
            "SHOW transaction_isolation",
        )
        .unwrap();
    assert_eq!(level, "repeatable read");
    // Read only means it: a write fails with the server's 25006.
    let e = c
        .run(atomic(query("CREATE TEMP TABLE nope (i int)", &[]).affected()).options(TxOptions::new().read_only()))
        .unwrap_err();
    assert_eq!(e.code(), Some("25006"), "{e}");
    assert_eq!(c.transaction_status(), TransactionStatus::Idle);
}

fn options_on_a_nested_transaction_are_refused<D: Driver>() {
    let mut c = D::connect(&url()).unwrap();
    let e = c
        .run(atomic(
            atomic(query("SELECT 1", &[]).rows()).options(TxOptions::new().read_only()),
        ))
        .unwrap_err();
    assert!(matches!(e, Error::Misuse(_)), "{e:?}");
    assert!(e.to_string().contains("outermost"), "{e}");
    assert_eq!(c.transaction_status(), TransactionStatus::Idle);
    assert_eq!(c.query_one("SELECT 2", &[]).unwrap().get::<i32>(0), 2);
}

/// A function that fails with SQLSTATE `code` the first `n` times it is
/// called (counted by a sequence, which is not transactional, so the
/// rolled-back attempts count), then returns how many calls there were.
fn flaky<D: Driver>(c: &mut D, name: &str) {
    c.batch_execute(&format!(
        "DROP SEQUENCE IF EXISTS {name}_seq; CREATE SEQUENCE {name}_seq;
         CREATE OR REPLACE FUNCTION {name}(n int, code text) RETURNS int LANGUAGE plpgsql AS $$
         BEGIN
           IF nextval('{name}_seq') <= n THEN
             RAISE EXCEPTION 'failing on purpose (test)' USING ERRCODE = code;
           END IF;
           RETURN currval('{name}_seq');
         END $$"
    ))
    .unwrap();
}

fn serialization_failures_are_retried<D: Driver>() {
    let mut c = D::connect(&url()).unwrap();
    let f = format!("duet_flaky_{}", D::NAME);
    flaky(&mut c, &f);
    let sql = format!("SELECT {f}(2, '40001')");
    let serializable = TxOptions::new().isolation(IsolationLevel::Serializable);
    // Two failures, then the third attempt commits.
    let attempts = c
        .run(retry(5, || atomic(query(&sql, &[]).one()).options(serializable)))
        .unwrap();
    assert_eq!(attempts.get::<i32>(0), 3);
    // Not enough attempts: the failure is returned as it is.
    flaky(&mut c, &f);
    let e = c
        .run(retry(2, || atomic(query(&sql, &[]).one()).options(serializable)))
        .unwrap_err();
    assert_eq!(e.code(), Some("40001"), "{e}");
    assert_eq!(c.transaction_status(), TransactionStatus::Idle);
    // The interactive form, in each driver.
    flaky(&mut c, &f);
    assert_eq!(c.retry_atomic(3, serializable, &sql).unwrap(), "3");
    // A deadlock (40P01) is retried too; other errors are not.
    flaky(&mut c, &f);
    let deadlocked = format!("SELECT {f}(1, '40P01')");
    let ok = c.run(retry(3, || atomic(query(&deadlocked, &[]).one()))).unwrap();
    assert_eq!(ok.get::<i32>(0), 2);
    flaky(&mut c, &f);
    let broken = format!("SELECT {f}(5, '22012')");
    let e = c.run(retry(5, || atomic(query(&broken, &[]).one()))).unwrap_err();
    assert_eq!(e.code(), Some("22012"));
    let calls = c
        .query_one(&format!("SELECT currval('{f}_seq')"), &[])
        .unwrap()
        .get::<i64>(0);
    assert_eq!(calls, 1, "a division by zero is not retried");
}

conformance_tests!(
    options_reach_the_server,
    options_on_a_nested_transaction_are_refused,
    serialization_failures_are_retried,
);
