//! Migrations, run by both drivers: applied in order and once, recorded
//! with checksums, reverted with their down files, refused when an applied
//! file changed, safe when two processes start at once, and a failure
//! leaving no half-applied migration (or saying so when it cannot).

use duet_conformance::server::TestServer;
use duet_conformance::{conformance_tests, connect_in_fresh_schema, Driver};
use duet_core::migrate::{Migrations, State};

/// A connection whose `search_path` is a fresh schema of its own.
fn fresh<D: Driver>(test: &str) -> (D, String) {
    let schema = format!("mig_{test}_{}", D::NAME);
    (connect_in_fresh_schema(&schema), schema)
}

fn join<D: Driver>(schema: &str) -> D {
    let mut c = D::connect(&TestServer::shared().url()).unwrap();
    c.batch_execute(&format!("SET search_path TO {schema}")).unwrap();
    c
}

fn exists<D: Driver>(c: &mut D, sql: &str) -> bool {
    c.query_one(&format!("SELECT EXISTS ({sql})"), &[]).unwrap().get(0)
}

fn migrations_apply_in_order_once_and_revert<D: Driver>() {
    let (mut c, schema) = fresh::<D>("apply");
    let shop = duet_core::migrations!("tests/migrations/shop").unwrap();
    assert_eq!(shop.list().len(), 3);
    assert!(shop.list()[2].no_transaction);
    let status = c.run(shop.status()).unwrap();
    assert!(status.iter().all(|(_, _, s)| *s == State::Pending), "{status:?}");

    // One at a time (how the command line reports progress), then the rest.
    assert_eq!(c.run(shop.run_next(1)).unwrap(), [1]);
    assert_eq!(c.run(shop.run()).unwrap(), [2, 3]);
    assert_eq!(c.run(shop.run()).unwrap(), Vec::<i64>::new(), "nothing applied twice");
    assert_eq!(c.run(shop.run_next(1)).unwrap(), Vec::<i64>::new());
    let status = c.run(shop.status()).unwrap();
    assert_eq!(
        status,
        [
            (1, "create_items".to_string(), State::Applied),
            (2, "add_kind_and_price".to_string(), State::Applied),
            (3, "index_names".to_string(), State::Applied),
        ]
    );
    let row = c
        .query_one("SELECT name, kind::text, item_label(items) FROM items", &[])
        .unwrap();
    assert_eq!(row.get::<&str>(0), "first; of many");
    assert_eq!(row.get::<&str>(1), "tool");
    assert_eq!(row.get::<&str>(2), "first; of many;1");
    let index = format!("SELECT 1 FROM pg_indexes WHERE schemaname = '{schema}' AND indexname = 'items_name'");
    assert!(exists(&mut c, &index));

    // Back two: the no-transaction one, then the column and the enum.
    assert_eq!(c.run(shop.revert(2)).unwrap(), [3, 2]);
    assert!(!exists(&mut c, &index));
    let column =
        format!("SELECT 1 FROM information_schema.columns WHERE table_schema = '{schema}' AND column_name = 'kind'");
    assert!(!exists(&mut c, &column));
    let states: Vec<State> = c.run(shop.status()).unwrap().into_iter().map(|(_, _, s)| s).collect();
    assert_eq!(states, [State::Applied, State::Pending, State::Pending]);
    assert_eq!(c.run(shop.run()).unwrap(), [2, 3]);
    assert!(exists(&mut c, &column) && exists(&mut c, &index));
}

fn set(files: &[(&str, &str)]) -> Migrations {
    Migrations::from_files(files.iter().copied()).unwrap()
}

fn a_changed_or_missing_applied_migration_is_refused<D: Driver>() {
    let (mut c, _) = fresh::<D>("changed");
    let v1 = set(&[("1_t.sql", "CREATE TABLE t (a int)")]);
    assert_eq!(c.run(v1.run()).unwrap(), [1]);
    let edited = set(&[
        ("1_t.sql", "CREATE TABLE t (a int, b int)"),
        ("2_u.sql", "CREATE TABLE u (a int)"),
    ]);
    let err = c.run(edited.run()).unwrap_err();
    assert!(
        err.to_string()
            .contains("migration 1 was applied, and its file has changed"),
        "{err}"
    );
    let states: Vec<State> = c.run(edited.status()).unwrap().into_iter().map(|(_, _, s)| s).collect();
    assert_eq!(states, [State::Changed, State::Pending]);
    assert!(!exists(
        &mut c,
        "SELECT 1 FROM pg_tables WHERE tablename = 'u' AND schemaname = current_schema()"
    ));
    let elsewhere = set(&[("2_u.sql", "CREATE TABLE u (a int)")]);
    let err = c.run(elsewhere.run()).unwrap_err();
    assert!(
        err.to_string().contains("migration 1 is applied but has no file"),
        "{err}"
    );
    // Badly named or doubled files are refused when read.
    assert!(Migrations::from_files([("init.sql", "")]).is_err());
    assert!(Migrations::from_files([("1_a.sql", ""), ("1_b.sql", "")]).is_err());
    assert!(Migrations::from_files([("3_a.down.sql", "")]).is_err());
    // Without a down file there is no revert.
    let err = c.run(v1.revert(1)).unwrap_err();
    assert!(err.to_string().contains("no down file"), "{err}");
}

fn concurrent_runs_apply_each_migration_once<D: Driver>() {
    let (mut c, schema) = fresh::<D>("concurrent");
    c.batch_execute("CREATE TABLE ran (version int)").unwrap();
    let files: Vec<(String, String)> = (1..=6)
        .map(|v| {
            (
                format!("{v}_step.sql"),
                format!("INSERT INTO ran VALUES ({v}); SELECT pg_sleep(0.02)"),
            )
        })
        .collect();
    let all = Migrations::from_files(files).unwrap();
    let applied: Vec<Vec<i64>> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|_| {
                let all = all.clone();
                let schema = schema.clone();
                s.spawn(move || join::<D>(&schema).run(all.run()).unwrap())
            })
            .collect();
        runs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut both: Vec<i64> = applied.concat();
    both.sort();
    assert_eq!(both, [1, 2, 3, 4, 5, 6], "each applied by one of the two: {applied:?}");
    let ran: i64 = c.query_one("SELECT count(*) FROM ran", &[]).unwrap().get(0);
    assert_eq!(ran, 6);
}

fn a_failed_migration_is_not_half_applied_and_the_lock_is_given_back<D: Driver>() {
    let (mut c, schema) = fresh::<D>("failed");
    let broken = set(&[
        ("1_a.sql", "CREATE TABLE a (x int)"),
        ("2_b.sql", "CREATE TABLE b (x int); SELECT 1 / 0"),
    ]);
    let err = c.run(broken.run()).unwrap_err();
    assert!(
        err.to_string().contains("migration 2 failed") && err.to_string().contains("division by zero"),
        "{err}"
    );
    assert!(exists(
        &mut c,
        "SELECT 1 FROM pg_tables WHERE tablename = 'a' AND schemaname = current_schema()"
    ));
    assert!(!exists(
        &mut c,
        "SELECT 1 FROM pg_tables WHERE tablename = 'b' AND schemaname = current_schema()"
    ));
    assert_eq!(c.transaction_status(), duet_core::TransactionStatus::Idle);
    // Fixed, from another session: the lock was given back.
    let fixed = set(&[
        ("1_a.sql", "CREATE TABLE a (x int)"),
        ("2_b.sql", "CREATE TABLE b (x int)"),
    ]);
    let mut other = join::<D>(&schema);
    assert_eq!(other.run(fixed.run()).unwrap(), [2]);

    // Outside a transaction, a failure part way is remembered and refused.
    let partial = set(&[
        ("1_a.sql", "CREATE TABLE a (x int)"),
        ("2_b.sql", "CREATE TABLE b (x int)"),
        (
            "3_c.sql",
            "-- duet:no-transaction\nCREATE TABLE c (x int);\nSELECT 1 / 0;",
        ),
    ]);
    let err = other.run(partial.run()).unwrap_err();
    assert!(err.to_string().contains("migration 3 failed"), "{err}");
    let err = c.run(partial.run()).unwrap_err();
    assert!(err.to_string().contains("failed part way"), "{err}");
    let states: Vec<State> = c
        .run(partial.status())
        .unwrap()
        .into_iter()
        .map(|(_, _, s)| s)
        .collect();
    assert_eq!(states, [State::Applied, State::Applied, State::Unfinished]);
}

conformance_tests!(
    migrations_apply_in_order_once_and_revert,
    a_changed_or_missing_applied_migration_is_refused,
    concurrent_runs_apply_each_migration_once,
    a_failed_migration_is_not_half_applied_and_the_lock_is_given_back,
);
