//! Protocol-level behaviour, each test written once and run against both
//! drivers (`name::sync`, `name::tokio`) on the harness's PostgreSQL.

use std::time::{Duration, Instant};

use duet_conformance::server::{AuthRole, TestServer};
use duet_conformance::{assert_usable, conformance_tests, connect, Driver, TxStep};
use duet_core::ops::{atomic, pipeline, query, simple_query, then, Ready};
use duet_core::{Error, Event, Operation, Param, SimpleMessage, TransactionStatus};

fn server() -> &'static TestServer {
    TestServer::shared()
}

conformance_tests!(
    auth_methods_succeed,
    wrong_password_is_28p01,
    missing_password_is_named,
    connection_string_forms,
    unix_socket,
    local_host_prefers_the_unix_socket,
    scalar_round_trips,
    temporal_uuid_json_array_round_trips,
    nulls_and_typed_errors,
    rows_by_name_and_multiple_columns,
    prepared_statements_and_cache_reuse,
    cached_statement_after_alter_table,
    untyped_text_parameters_reach_any_type,
    pipeline_of_1000_in_order,
    error_mid_pipeline_skips_the_rest,
    simple_query_multi_statement,
    transaction_commits_and_rolls_back,
    nested_savepoints,
    failed_transaction_state,
    atomic_inside_an_application_transaction_uses_a_savepoint,
    notices_and_notifications,
    cancel_request_stops_pg_sleep,
    deadline_cancels_and_times_out,
    statement_timeout_is_57014,
    backend_terminated_mid_query,
    invalid_utf8_is_22021,
    dropped_operations_leave_client_usable,
    max_parameters_and_huge_pipeline_do_not_deadlock,
    copy_is_refused_cleanly,
    statement_cache_capacity_and_eviction,
    uninferable_parameter_type_describes_first,
    query_opt_and_prepare_typed,
    interactive_atomic_commits_rolls_back_and_nests,
    interactive_atomic_abandoned_rolls_back,
    panic_inside_an_operation_abandons_it,
    stale_statement_in_a_pipeline_is_not_retried_alone,
    for_each_streams_rows_and_reports_errors,
    atomic_after_an_application_transaction_is_top_level_again,
);

fn auth_methods_succeed<D: Driver>() {
    let s = server();
    if !s.auth_roles_available() {
        eprintln!("auth roles unavailable on DATABASE_URL server: skipped");
        return;
    }
    for role in AuthRole::ALL {
        let mut c = D::connect(&s.url_for(role)).unwrap_or_else(|e| panic!("{role:?}: {e}"));
        let who: String = c.query_one("SELECT current_user::text", &[]).unwrap().get(0);
        assert_eq!(who, role.user());
        c.close().unwrap();
    }
}

fn wrong_password_is_28p01<D: Driver>() {
    let s = server();
    if !s.auth_roles_available() {
        return;
    }
    for role in [AuthRole::Cleartext, AuthRole::Md5, AuthRole::Scram] {
        let err = D::connect(&s.url_for_with_password(role, Some("wrong")))
            .err()
            .expect("must fail");
        assert_eq!(err.code(), Some("28P01"), "{role:?}: {err}");
    }
}

fn missing_password_is_named<D: Driver>() {
    let s = server();
    if !s.auth_roles_available() {
        return;
    }
    for role in [AuthRole::Cleartext, AuthRole::Md5, AuthRole::Scram] {
        let err = D::connect(&s.url_for_with_password(role, None))
            .err()
            .expect("must fail");
        assert!(matches!(err, Error::Auth(_)), "{role:?}: {err}");
        assert!(err.to_string().contains("none was given"), "{err}");
    }
}

fn connection_string_forms<D: Driver>() {
    let s = server();
    let kv = format!(
        "host={} port={} user=postgres dbname=postgres application_name='duet kv' options='-c search_path=pg_catalog'",
        s.host(),
        s.port()
    );
    let mut c = D::connect(&kv).unwrap();
    let row = c
        .query_one(
            "SELECT current_setting('application_name'), current_setting('search_path')",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<String>(0), "duet kv");
    assert_eq!(row.get::<String>(1), "pg_catalog");
    let url = format!("{}?application_name=duet%20url&connect_timeout=5", s.url());
    let mut c = D::connect(&url).unwrap();
    let name: String = c
        .query_one("SELECT current_setting('application_name')", &[])
        .unwrap()
        .get(0);
    assert_eq!(name, "duet url");
    let bad = D::connect("postgres://127.0.0.1:1/x?connect_timeout=2")
        .err()
        .expect("nothing listens on port 1");
    assert!(bad.is_fatal(), "{bad}");
}

fn unix_socket<D: Driver>() {
    let s = server();
    let Some(dir) = s.socket_dir() else { return };
    let mut c = D::connect(&format!("host={} port={} user=postgres", dir.display(), s.port())).unwrap();
    let addr: Option<String> = c.query_one("SELECT inet_client_addr()::text", &[]).unwrap().get(0);
    assert_eq!(addr, None, "a Unix-socket session has no client address");
}

fn local_host_prefers_the_unix_socket<D: Driver>() {
    let s = server();
    let Some(dir) = s.socket_dir() else { return };
    let client_addr = |opts: &str| -> Option<String> {
        let url = format!("host=127.0.0.1 port={} user=postgres {opts}", s.port());
        let mut c = D::connect(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
        c.query_one("SELECT inet_client_addr()::text", &[]).unwrap().get(0)
    };
    // The harness's socket lives in its own directory: name it.
    assert_eq!(
        client_addr(&format!("local_socket={}", dir.display())),
        None,
        "went over the socket"
    );
    assert_eq!(client_addr("local_socket=disable").as_deref(), Some("127.0.0.1/32"));
    // No socket there: TCP as configured.
    assert_eq!(
        client_addr("local_socket=/nonexistent").as_deref(),
        Some("127.0.0.1/32")
    );
    // A socket the session cannot start on (a wrong user for it): TCP is
    // tried next, and its answer is the one reported.
    let url = format!(
        "host=127.0.0.1 port={} user=nobody_here local_socket={}",
        s.port(),
        dir.display()
    );
    let err = D::connect(&url).err().expect("no such role");
    assert_eq!(err.code(), Some("28000"), "{err}");
}

fn scalar_round_trips<D: Driver>() {
    let mut c = connect::<D>();
    let row = c
        .query_one(
            "SELECT $1::bool, $2::int2, $3::int4, $4::int8, $5::float4, $6::float8, $7::text, $8::bytea, $9::numeric::text",
            &[&true, &-7i16, &i32::MIN, &i64::MAX, &1.5f32, &-2.25f64, &"héllo ' \"; --", &vec![0u8, 1, 255], &"12345.678901234567890"],
        )
        .unwrap();
    assert!(row.get::<bool>(0));
    assert_eq!(row.get::<i16>(1), -7);
    assert_eq!(row.get::<i32>(2), i32::MIN);
    assert_eq!(row.get::<i64>(3), i64::MAX);
    assert_eq!(row.get::<f32>(4), 1.5);
    assert_eq!(row.get::<f64>(5), -2.25);
    assert_eq!(row.get::<&str>(6), "héllo ' \"; --");
    assert_eq!(row.get::<Vec<u8>>(7), vec![0u8, 1, 255]);
    assert_eq!(row.get::<String>(8), "12345.678901234567890");
}

fn temporal_uuid_json_array_round_trips<D: Driver>() {
    use chrono::{NaiveDate, TimeZone, Utc};
    let mut c = connect::<D>();
    let date = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    let ts = date.and_hms_micro_opt(13, 14, 15, 123_456).unwrap();
    let tstz = Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap();
    let id = uuid::Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0);
    let doc = serde_json::json!({"a": [1, 2, {"b": null}], "s": "x'y"});
    let ints = vec![1i32, -2, 3];
    let texts = vec!["a".to_string(), "b,c".to_string()];
    let row = c
        .query_one(
            "SELECT $1::date, $2::timestamp, $3::timestamptz, $4::uuid, $5::jsonb, $6::json, $7::int4[], $8::text[]",
            &[&date, &ts, &tstz, &id, &doc, &doc, &ints, &texts],
        )
        .unwrap();
    assert_eq!(row.get::<NaiveDate>(0), date);
    assert_eq!(row.get::<chrono::NaiveDateTime>(1), ts);
    assert_eq!(row.get::<chrono::DateTime<Utc>>(2), tstz);
    assert_eq!(row.get::<uuid::Uuid>(3), id);
    assert_eq!(row.get::<serde_json::Value>(4), doc);
    assert_eq!(row.get::<serde_json::Value>(5), doc);
    assert_eq!(row.get::<Vec<i32>>(6), ints);
    assert_eq!(row.get::<Vec<String>>(7), texts);
}

fn nulls_and_typed_errors<D: Driver>() {
    let mut c = connect::<D>();
    let none: Option<i32> = None;
    let row = c
        .query_one("SELECT $1::int4 AS n, 300::int8 AS big, 'x'::text AS t", &[&none])
        .unwrap();
    assert_eq!(row.get::<Option<i32>>("n"), None);
    let null_err = row.try_get::<i32>("n").unwrap_err();
    assert!(
        matches!(null_err, Error::Decode(_)) && null_err.to_string().contains("NULL"),
        "{null_err}"
    );
    let wrong = row.try_get::<i32>("big").unwrap_err();
    assert!(wrong.to_string().contains("int8"), "{wrong}");
    let missing = row.try_get::<String>("nope").unwrap_err();
    assert!(missing.to_string().contains("nope"), "{missing}");
    assert!(row.try_get::<String>(9).is_err());
    assert!(matches!(c.query_one("SELECT 1 WHERE false", &[]), Err(Error::NoRows)));
    assert!(matches!(
        c.query_one("SELECT 1 UNION ALL SELECT 2", &[]),
        Err(Error::TooManyRows(2))
    ));
    let syntax = c.query("SELEC 1", &[]).unwrap_err();
    assert_eq!(syntax.code(), Some("42601"));
    assert_usable(&mut c);
}

fn rows_by_name_and_multiple_columns<D: Driver>() {
    let mut c = connect::<D>();
    c.batch_execute("CREATE TEMP TABLE people (id serial PRIMARY KEY, name text NOT NULL, age int4)")
        .unwrap();
    for (name, age) in [("ann", Some(31)), ("bob", None), ("cy", Some(7))] {
        assert_eq!(
            c.execute("INSERT INTO people (name, age) VALUES ($1, $2)", &[&name, &age])
                .unwrap(),
            1
        );
    }
    let rows = c.query("SELECT id, name, age FROM people ORDER BY id", &[]).unwrap();
    let got: Vec<(i32, String, Option<i32>)> = rows
        .iter()
        .map(|r| (r.get("id"), r.get("name"), r.get("age")))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "ann".into(), Some(31)),
            (2, "bob".into(), None),
            (3, "cy".into(), Some(7))
        ]
    );
    assert_eq!(rows[0].columns()[1].name, "name");
    assert_eq!(
        c.execute("UPDATE people SET age = coalesce(age, 0) + 1", &[]).unwrap(),
        3
    );
}

fn prepared_statements_and_cache_reuse<D: Driver>() {
    let mut c = connect::<D>();
    let before = c.cached_statements();
    for i in 0..5i32 {
        let v: i32 = c.query_one("SELECT $1::int4 * 2", &[&i]).unwrap().get(0);
        assert_eq!(v, i * 2);
    }
    assert_eq!(
        c.cached_statements(),
        before + 1,
        "five runs share one cached statement"
    );
    let prepared: i64 = c
        .run(duet_core::ops::prepare("SELECT count(*) FROM pg_prepared_statements", &[]).map(Ok))
        .map(|s| s.columns().len() as i64)
        .unwrap();
    assert_eq!(prepared, 1);
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'duet_%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(n >= 2, "cached statements are named server-side ({n})");
    let mut stmt_client = connect::<D>();
    let stmt = stmt_client
        .run(duet_core::ops::prepare("SELECT $1::text || $2::text", &[]))
        .unwrap();
    assert_eq!(stmt.params().len(), 2);
    let params: [Param; 2] = [&"a", &"b"];
    let r = stmt_client.run(duet_core::ops::execute(&stmt, &params, None)).unwrap();
    assert_eq!(r.rows[0].get::<String>(0), "ab");
}

fn cached_statement_after_alter_table<D: Driver>() {
    let mut c = connect::<D>();
    c.batch_execute("CREATE TEMP TABLE shape (a int4); INSERT INTO shape VALUES (1)")
        .unwrap();
    let rows = c.query("SELECT * FROM shape", &[]).unwrap();
    assert_eq!(rows[0].len(), 1);
    c.batch_execute("ALTER TABLE shape ADD COLUMN b text DEFAULT 'x'")
        .unwrap();
    // The server refuses the cached plan (0A000); outside a transaction the
    // statement is re-prepared and retried transparently.
    let rows = c.query("SELECT * FROM shape", &[]).unwrap();
    assert_eq!(rows[0].len(), 2);
    assert_eq!(rows[0].get::<String>("b"), "x");
    // Inside a transaction the retry would be wrong: the error surfaces.
    c.batch_execute("ALTER TABLE shape ADD COLUMN c int4").unwrap();
    c.batch_execute("BEGIN").unwrap();
    let err = c.query("SELECT * FROM shape", &[]).unwrap_err();
    assert_eq!(err.code(), Some("0A000"), "{err}");
    c.batch_execute("ROLLBACK").unwrap();
    assert_eq!(c.query("SELECT * FROM shape", &[]).unwrap()[0].len(), 3);
}

fn for_each_streams_rows_and_reports_errors<D: Driver>() {
    let mut c = connect::<D>();
    let n = 200_000i64;
    let p: [Param; 1] = [&n];
    let (mut count, mut sum) = (0i64, 0i64);
    let rows = c
        .run(
            query("SELECT i, 'row ' || i FROM generate_series(1, $1) i", &p).for_each(|r| {
                count += 1;
                sum += r.get::<i64>(0);
                assert_eq!(r.get::<&str>(1), format!("row {}", r.get::<i64>(0)));
                Ok(())
            }),
        )
        .unwrap();
    assert_eq!((rows, count), (200_000, 200_000));
    assert_eq!(sum, n * (n + 1) / 2);

    // A statement failing part-way: the rows before the failure were
    // handed over, the error is the server's, the connection stays usable.
    let mut seen = 0i64;
    let err = c
        .run(
            query("SELECT 1 / (i - 150000) FROM generate_series(1, $1) i", &p).for_each(|_| {
                seen += 1;
                Ok(())
            }),
        )
        .unwrap_err();
    assert_eq!(err.code(), Some("22012"), "{err}");
    assert!(seen < 150_000, "no row past the failing one: {seen}");
    assert_usable(&mut c);

    // The callback's own error stops the stream; the rest is discarded.
    let mut calls = 0;
    let err = c
        .run(query("SELECT i FROM generate_series(1, $1) i", &p).for_each(|_| {
            calls += 1;
            if calls == 10 {
                return Err(Error::invalid("seen enough"));
            }
            Ok(())
        }))
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert_eq!(calls, 10);
    assert_usable(&mut c);
}

fn stale_statement_in_a_pipeline_is_not_retried_alone<D: Driver>() {
    let mut c = connect::<D>();
    c.batch_execute("CREATE TEMP TABLE shape2 (a int4); INSERT INTO shape2 VALUES (1)")
        .unwrap();
    c.query("SELECT * FROM shape2", &[]).unwrap();
    c.batch_execute("ALTER TABLE shape2 ADD COLUMN b text DEFAULT 'x'")
        .unwrap();
    // The stale plan fails the first statement and the server skips the
    // second: retrying the first alone would leave the pipeline half done,
    // so the error surfaces as it is...
    let two = || {
        pipeline((
            query("SELECT * FROM shape2", &[]).rows(),
            query("SELECT * FROM shape2", &[]).rows(),
        ))
    };
    let err = c.run(two()).unwrap_err();
    assert_eq!(err.code(), Some("0A000"), "{err}");
    // ...and the statement is prepared afresh next time.
    let (a, b) = c.run(two()).unwrap();
    assert_eq!((a[0].len(), b[0].len()), (2, 2));
}

fn untyped_text_parameters_reach_any_type<D: Driver>() {
    let mut c = connect::<D>();
    c.batch_execute("CREATE TEMP TABLE money (amount numeric, id uuid, doc jsonb, tag varchar(10))")
        .unwrap();
    c.execute(
        "INSERT INTO money VALUES ($1, $2, $3, $4)",
        &[
            &"10.25",
            &"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            &r#"{"k": 1}"#,
            &"short",
        ],
    )
    .unwrap();
    let row = c
        .query_one(
            "SELECT amount::text, id::text, doc->>'k', tag FROM money WHERE amount = $1",
            &[&"10.250"],
        )
        .unwrap();
    assert_eq!(row.get::<String>(0), "10.25");
    assert_eq!(row.get::<String>(1), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(row.get::<String>(2), "1");
    assert_eq!(row.get::<String>(3), "short");
    let bad = c
        .execute("INSERT INTO money (amount) VALUES ($1)", &[&"12abc"])
        .unwrap_err();
    assert_eq!(bad.code(), Some("22P02"), "{bad}");
}

fn pipeline_of_1000_in_order<D: Driver>() {
    let mut c = connect::<D>();
    let values: Vec<i32> = (0..1000).collect();
    let params: Vec<[Param; 1]> = values.iter().map(|v| [v as Param]).collect();
    let ops: Vec<_> = params.iter().map(|p| query("SELECT $1::int4 * 3", p).one()).collect();
    let rows = c.run(pipeline(ops)).unwrap();
    let got: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, values.iter().map(|v| v * 3).collect::<Vec<_>>());
    let (a, b): ([Param; 1], [Param; 1]) = ([&"x"], [&7i64]);
    let (s, n) = c
        .run(pipeline((
            query("SELECT $1::text", &a).one(),
            query("SELECT $1::int8", &b).one(),
        )))
        .unwrap();
    assert_eq!((s.get::<String>(0), n.get::<i64>(0)), ("x".into(), 7));
}

fn error_mid_pipeline_skips_the_rest<D: Driver>() {
    let mut c = connect::<D>();
    c.batch_execute("CREATE TEMP TABLE t (v int4 PRIMARY KEY)").unwrap();
    let ps: Vec<[Param; 1]> = vec![[&1i32], [&1i32], [&2i32]];
    let ops: Vec<_> = ps
        .iter()
        .map(|p| query("INSERT INTO t VALUES ($1)", p).affected())
        .collect();
    let err = c.run(pipeline(ops)).unwrap_err();
    assert_eq!(
        err.code(),
        Some("23505"),
        "the failing statement's error is reported: {err}"
    );
    // The group was one implicit transaction: nothing of it stays.
    let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).unwrap().get(0);
    assert_eq!(n, 0);
    // The failure of one pipeline does not leak into the next.
    let ok: Vec<[Param; 1]> = vec![[&5i32], [&6i32]];
    let ops: Vec<_> = ok
        .iter()
        .map(|p| query("INSERT INTO t VALUES ($1)", p).affected())
        .collect();
    assert_eq!(c.run(pipeline(ops)).unwrap(), vec![1, 1]);
    assert_usable(&mut c);
}

fn simple_query_multi_statement<D: Driver>() {
    let mut c = connect::<D>();
    let msgs = c
        .run(simple_query(
            "SELECT 1 AS one, NULL::text AS n; SELECT 'a' UNION ALL SELECT 'b'; ",
            None,
        ))
        .unwrap();
    let rows: Vec<Vec<Option<String>>> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleMessage::Row(r) => Some(r.values.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            vec![Some("1".into()), None],
            vec![Some("a".into())],
            vec![Some("b".into())]
        ]
    );
    let tags = msgs
        .iter()
        .filter(|m| matches!(m, SimpleMessage::CommandComplete(_)))
        .count();
    assert_eq!(tags, 2);
    let err = c
        .batch_execute("SELECT 1; SELECT * FROM no_such_table; SELECT 3")
        .unwrap_err();
    assert_eq!(err.code(), Some("42P01"));
    assert_usable(&mut c);
}

fn transaction_commits_and_rolls_back<D: Driver>() {
    let mut c = connect::<D>();
    c.batch_execute("CREATE TEMP TABLE acct (id int4 PRIMARY KEY, bal int8 NOT NULL CHECK (bal >= 0))")
        .unwrap();
    c.execute("INSERT INTO acct VALUES (1, 100), (2, 0)", &[]).unwrap();
    let transfer = |amount: i64| -> Vec<[i64; 1]> { vec![[amount]] };
    for (amount, ok) in [(60i64, true), (60, false)] {
        let a = transfer(amount);
        let (p1, p2): ([Param; 1], [Param; 1]) = ([&a[0][0]], [&a[0][0]]);
        let r = c.run(atomic(pipeline((
            query("UPDATE acct SET bal = bal + $1 WHERE id = 2", &p1).affected(),
            query("UPDATE acct SET bal = bal - $1 WHERE id = 1", &p2).affected(),
        ))));
        assert_eq!(r.is_ok(), ok, "{r:?}");
        if !ok {
            assert_eq!(r.unwrap_err().code(), Some("23514"));
        }
        assert_eq!(c.transaction_status(), TransactionStatus::Idle);
    }
    let bals: Vec<i64> = c
        .query("SELECT bal FROM acct ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(bals, vec![40, 60], "the failed transfer left no trace");
}

fn nested_savepoints<D: Driver>() {
    let mut c = connect::<D>();
    c.batch_execute("CREATE TEMP TABLE log (v text)").unwrap();
    let (a, b, x): ([Param; 1], [Param; 1], [Param; 1]) = ([&"outer"], [&"inner"], [&"doomed"]);
    c.run(atomic(pipeline((
        query("INSERT INTO log VALUES ($1)", &a).affected(),
        atomic(query("INSERT INTO log VALUES ($1)", &b).affected()),
    ))))
    .unwrap();
    // An inner failure rolls back to its savepoint and fails the whole.
    let r = c.run(atomic(pipeline((
        query("INSERT INTO log VALUES ($1)", &x).affected(),
        atomic(query("INSERT INTO log VALUES ($1::int4::text)", &x).affected()),
    ))));
    assert_eq!(r.unwrap_err().code(), Some("22P02"));
    assert_eq!(c.transaction_status(), TransactionStatus::Idle);
    let v: Vec<String> = c
        .query("SELECT v FROM log ORDER BY v DESC", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(v, vec!["outer", "inner"]);
    let sp: i64 = c.query_one("SELECT count(*) FROM log", &[]).unwrap().get(0);
    assert_eq!(sp, 2);
}

fn atomic_inside_an_application_transaction_uses_a_savepoint<D: Driver>() {
    let mut c = connect::<D>();
    c.batch_execute("CREATE TEMP TABLE app_tx (v int4)").unwrap();
    c.batch_execute("BEGIN").unwrap();
    let (one, bad): ([Param; 1], [Param; 1]) = ([&1i32], [&"x"]);
    c.run(atomic(query("INSERT INTO app_tx VALUES ($1)", &one).affected()))
        .unwrap();
    assert_eq!(
        c.transaction_status(),
        TransactionStatus::InTransaction,
        "the outer transaction stays open"
    );
    let err = c
        .run(atomic(query("INSERT INTO app_tx VALUES ($1::int4)", &bad).affected()))
        .unwrap_err();
    assert_eq!(err.code(), Some("22P02"));
    assert_eq!(
        c.transaction_status(),
        TransactionStatus::InTransaction,
        "rolled back to the savepoint only"
    );
    c.batch_execute("ROLLBACK").unwrap();
    let n: i64 = c.query_one("SELECT count(*) FROM app_tx", &[]).unwrap().get(0);
    assert_eq!(n, 0, "the application's ROLLBACK undid the inner atomic too");
}

fn failed_transaction_state<D: Driver>() {
    let mut c = connect::<D>();
    c.batch_execute("BEGIN").unwrap();
    assert_eq!(c.transaction_status(), TransactionStatus::InTransaction);
    assert!(c.query("SELECT 1/0", &[]).is_err());
    assert_eq!(c.transaction_status(), TransactionStatus::Failed);
    let err = c.query("SELECT 1", &[]).unwrap_err();
    assert_eq!(err.code(), Some("25P02"));
    c.batch_execute("ROLLBACK").unwrap();
    assert_usable(&mut c);
}

fn notices_and_notifications<D: Driver>() {
    let mut c = connect::<D>();
    c.batch_execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
        .unwrap();
    match c.poll_event() {
        Some(Event::Notice(n)) => assert_eq!(n.message, "hello 42"),
        other => panic!("expected a notice, got {other:?}"),
    }
    c.batch_execute("SET application_name = 'renamed'").unwrap();
    match c.poll_event() {
        Some(Event::ParameterStatus { name, value }) => {
            assert_eq!((name.as_str(), value.as_str()), ("application_name", "renamed"))
        }
        other => panic!("expected a parameter change, got {other:?}"),
    }
    // One channel per driver: the two instantiations run concurrently.
    let chan = format!("duet_chan_{}", D::NAME);
    c.batch_execute(&format!("LISTEN {chan}")).unwrap();
    let mut other = connect::<D>();
    other
        .execute("SELECT pg_notify($1, $2)", &[&chan, &"payload ' 1"])
        .unwrap();
    let ev = c.wait_event(Duration::from_secs(10)).unwrap();
    match ev {
        Some(Event::Notification { channel, payload, .. }) => {
            assert_eq!(channel, chan);
            assert_eq!(payload, "payload ' 1");
        }
        other => panic!("expected a notification, got {other:?}"),
    }
    let extra = c.wait_event(Duration::from_millis(50)).unwrap();
    assert!(extra.is_none(), "{extra:?}");
    assert_usable(&mut c);
}

fn cancel_request_stops_pg_sleep<D: Driver>() {
    let mut c = connect::<D>();
    let cancel = c.canceller();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        cancel()
    });
    let started = Instant::now();
    let err = c.query("SELECT pg_sleep(30)", &[]).unwrap_err();
    t.join().unwrap().unwrap();
    assert_eq!(err.code(), Some("57014"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(25));
    assert_usable(&mut c);
}

fn deadline_cancels_and_times_out<D: Driver>() {
    let mut c = connect::<D>();
    let err = c
        .run_with_timeout(query("SELECT pg_sleep(30)", &[]), Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err}");
    assert_usable(&mut c);
    let ok = c
        .run_with_timeout(query("SELECT 1", &[]).one(), Duration::from_secs(30))
        .unwrap();
    assert_eq!(ok.get::<i32>(0), 1);
}

fn statement_timeout_is_57014<D: Driver>() {
    let mut c = connect::<D>();
    c.batch_execute("SET statement_timeout = '100ms'").unwrap();
    let err = c.query("SELECT pg_sleep(5)", &[]).unwrap_err();
    assert_eq!(err.code(), Some("57014"));
    c.batch_execute("RESET statement_timeout").unwrap();
    assert_usable(&mut c);
}

fn backend_terminated_mid_query<D: Driver>() {
    let mut victim = connect::<D>();
    let pid: i32 = victim.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let url = server().url();
    let killer = std::thread::spawn(move || {
        let mut k = duet_sync::Client::connect(&url).unwrap();
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(50));
            let active: i64 = k
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
                    &[&pid],
                )
                .unwrap()
                .get(0);
            if active == 1 {
                break;
            }
        }
        k.query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .unwrap()
            .get::<bool>(0)
    });
    let err = victim.query("SELECT pg_sleep(30)", &[]).unwrap_err();
    assert!(killer.join().unwrap());
    assert_eq!(err.code(), Some("57P01"), "{err}");
    assert!(err.is_fatal());
    let next = victim.query("SELECT 1", &[]).unwrap_err();
    assert!(matches!(next, Error::Closed(_) | Error::Db(_)), "{next}");
    assert!(victim.is_closed());
}

fn invalid_utf8_is_22021<D: Driver>() {
    let mut c = connect::<D>();
    let err = c.query("SELECT convert_from('\\xff'::bytea, 'UTF8')", &[]).unwrap_err();
    assert_eq!(err.code(), Some("22021"), "{err}");
    assert_usable(&mut c);
}

fn dropped_operations_leave_client_usable<D: Driver>() {
    let mut c = connect::<D>();
    c.batch_execute("CREATE TEMP TABLE drops (v int4)").unwrap();
    for kind in 0..3 {
        let mut completed = false;
        let mut steps = 0;
        while !completed {
            let p: [Param; 1] = [&1i32];
            let done = match kind {
                0 => c.run_steps(
                    query("SELECT pg_sleep(0.001), $1::int4", &p).one().map(|_| Ok(())),
                    steps,
                ),
                1 => c.run_steps(
                    atomic(query("INSERT INTO drops VALUES ($1)", &p).affected()).map(|_| Ok(())),
                    steps,
                ),
                _ => c.run_steps(
                    atomic(pipeline((
                        query("INSERT INTO drops VALUES ($1)", &p).affected(),
                        atomic(query("SELECT pg_sleep(0.001)", &[]).affected()),
                    )))
                    .map(|_| Ok(())),
                    steps,
                ),
            };
            if let Some(r) = done {
                r.unwrap();
                completed = true;
            }
            // After every drop: usable, idle, not in a transaction.
            assert_usable(&mut c);
            steps += 1;
            assert!(steps < 1000, "operation never completed");
        }
    }
}

fn max_parameters_and_huge_pipeline_do_not_deadlock<D: Driver>() {
    let mut c = connect::<D>();
    let values: Vec<i32> = (0..65535).collect();
    let params: Vec<Param> = values.iter().map(|v| v as Param).collect();
    let sql = format!(
        "SELECT sum(x)::int8 FROM unnest(ARRAY[{}]) AS x",
        (1..=65535)
            .map(|i| format!("${i}::int4"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let sum: i64 = c.query_one(&sql, &params).unwrap().get(0);
    assert_eq!(sum, (0..65535i64).sum::<i64>());
    let too_many: Vec<Param> = (0..65536).map(|_| &1i32 as Param).collect();
    assert!(matches!(c.query("SELECT 1", &too_many), Err(Error::Misuse(_))));
    // 100,000 queries in one pipeline: far more than the socket buffers hold.
    let ps: Vec<[Param; 1]> = values.iter().take(1000).map(|v| [v as Param]).collect();
    let ops: Vec<_> = (0..100_000)
        .map(|i| query("SELECT $1::int4", &ps[i % 1000]).one())
        .collect();
    let rows = c.run(pipeline(ops)).unwrap();
    assert_eq!(rows.len(), 100_000);
    assert_eq!(rows[99_999].get::<i32>(0), 99_999 % 1000);
    assert_usable(&mut c);
}

fn copy_is_refused_cleanly<D: Driver>() {
    let mut c = connect::<D>();
    c.batch_execute("CREATE TEMP TABLE cp (v int4)").unwrap();
    let err = c.batch_execute("COPY cp FROM STDIN").unwrap_err();
    assert!(err.to_string().contains("COPY"), "{err}");
    let err = c.batch_execute("COPY (SELECT 1) TO STDOUT").unwrap_err();
    assert!(err.to_string().contains("COPY"), "{err}");
    let err = c.query("COPY (SELECT 1) TO STDOUT", &[]).unwrap_err();
    assert!(err.to_string().contains("COPY"), "{err}");
    let err = c.query("COPY cp FROM STDIN", &[]).unwrap_err();
    assert!(err.to_string().contains("COPY"), "{err}");
    assert_usable(&mut c);
}

fn statement_cache_capacity_and_eviction<D: Driver>() {
    let named = |c: &mut D| -> i64 {
        c.query_one("SELECT count(*) FROM pg_prepared_statements", &[])
            .unwrap()
            .get(0)
    };
    // Capacity 0: unnamed statements only (what PgBouncer's transaction mode needs).
    let mut c = D::connect(&format!("{}?statement_cache_capacity=0", server().url())).unwrap();
    for i in 0..3i32 {
        assert_eq!(c.query_one("SELECT $1::int4", &[&i]).unwrap().get::<i32>(0), i);
    }
    assert_eq!(named(&mut c), 0);
    assert_eq!(c.cached_statements(), 0);
    // Capacity 2: the least recently used statement is closed on the server.
    let mut c = D::connect(&format!("{}?statement_cache_capacity=2", server().url())).unwrap();
    for sql in ["SELECT 1", "SELECT 2", "SELECT 3", "SELECT 1"] {
        c.query(sql, &[]).unwrap();
    }
    assert_eq!(c.cached_statements(), 2);
    // The counting query itself evicts one more and takes its place.
    assert_eq!(named(&mut c), 2);
}

fn uninferable_parameter_type_describes_first<D: Driver>() {
    // `IpAddr` is none of the inferred candidate types: the statement is
    // described first, then executed with the server's parameter type.
    let mut c = connect::<D>();
    let addr: std::net::IpAddr = "192.168.10.1".parse().unwrap();
    let row = c.query_one("SELECT $1::inet::text, $2::int4", &[&addr, &5i32]).unwrap();
    assert_eq!(row.get::<String>(0), "192.168.10.1/32");
    assert_eq!(row.get::<i32>(1), 5);
    assert_usable(&mut c);
}

fn query_opt_and_prepare_typed<D: Driver>() {
    let mut c = connect::<D>();
    let none = c.run(query("SELECT 1 WHERE false", &[]).opt()).unwrap();
    assert!(none.is_none());
    let stmt = c
        .run(duet_core::ops::prepare("SELECT $1 || 'x'", &[duet_core::Type::TEXT]))
        .unwrap();
    assert_eq!(stmt.params(), &[duet_core::Type::TEXT]);
    assert_eq!(stmt.columns()[0].type_, duet_core::Type::TEXT);
    let p: [Param; 1] = [&"a"];
    let r = c.run(duet_core::ops::execute(&stmt, &p, None)).unwrap();
    assert_eq!(r.rows[0].get::<&str>(0), "ax");
    drop(stmt);
    // The dropped statement is closed with the next request.
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'duet_p%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

fn interactive_atomic_commits_rolls_back_and_nests<D: Driver>() {
    let mut c = connect::<D>();
    c.batch_execute("CREATE TEMP TABLE itx (v int4)").unwrap();
    let ins = |v: i32| TxStep::Execute(format!("INSERT INTO itx VALUES ({v})"));
    let log = c
        .atomic_script(&[
            ins(1),
            TxStep::Nested(vec![ins(2), TxStep::Fail("inner gives up".into())]),
            TxStep::Nested(vec![ins(3)]),
        ])
        .unwrap();
    assert_eq!(
        log,
        [
            "INSERT INTO itx VALUES (1) -> 1",
            "nested failed: invalid: inner gives up",
            "INSERT INTO itx VALUES (3) -> 1",
        ]
    );
    assert_eq!(c.transaction_status(), TransactionStatus::Idle);
    let rows = c.query("SELECT v FROM itx ORDER BY v", &[]).unwrap();
    let got: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, [1, 3], "the failed savepoint's row is gone, the others committed");

    // An error the closure swallows still fails the transaction: COMMIT is
    // answered with ROLLBACK, which must not read as success.
    let err = c
        .atomic_script(&[ins(6), TxStep::Swallow("INSERT INTO itx VALUES ('y')".into())])
        .unwrap_err();
    assert_eq!(err.code(), Some("25P02"), "{err}");
    let err = c
        .atomic_script(&[ins(4), TxStep::Fail("outer gives up".into())])
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    // A statement the server rejects rolls the whole scope back too.
    let err = c
        .atomic_script(&[ins(5), TxStep::Execute("INSERT INTO itx VALUES ('x')".into())])
        .unwrap_err();
    assert_eq!(err.code(), Some("22P02"), "{err}");
    assert_usable(&mut c);
    let n = c.query_one("SELECT count(*) FROM itx", &[]).unwrap().get::<i64>(0);
    assert_eq!(n, 2);
}

fn interactive_atomic_abandoned_rolls_back<D: Driver>() {
    let mut c = connect::<D>();
    c.batch_execute("CREATE TEMP TABLE itx_abandon (v int4)").unwrap();
    c.atomic_abandoned("INSERT INTO itx_abandon VALUES (1)");
    // The rollback is queued, not answered yet: a transaction started now
    // must open with BEGIN, not with a savepoint of the dying one.
    let p: [Param; 1] = [&3i32];
    c.run(atomic(query("INSERT INTO itx_abandon VALUES ($1)", &p).affected()))
        .unwrap();
    assert_usable(&mut c);
    let vs: Vec<i32> = c
        .query("SELECT v FROM itx_abandon ORDER BY v", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(vs, [3], "the abandoned transaction rolled back, the next one committed");
    // And the next interactive transaction starts clean.
    c.atomic_script(&[TxStep::Execute("INSERT INTO itx_abandon VALUES (2)".into())])
        .unwrap();
    let n = c
        .query_one("SELECT count(*) FROM itx_abandon", &[])
        .unwrap()
        .get::<i64>(0);
    assert_eq!(n, 2);
}

fn panic_inside_an_operation_abandons_it<D: Driver>() {
    let mut c = connect::<D>();
    c.batch_execute("CREATE TEMP TABLE op_panic (v int4)").unwrap();
    let p: [Param; 1] = [&1i32];
    // The panic strikes between two steps, inside the batch the
    // transaction opened, before its COMMIT could go out.
    let op = atomic(pipeline((
        query("SELECT 1", &[]).rows(),
        then(
            query("INSERT INTO op_panic VALUES ($1)", &p).affected(),
            |_| -> Result<Ready<()>, Error> { panic!("a bug in a step") },
        ),
    )));
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.run(op)));
    assert!(unwound.is_err(), "the step panicked");
    // The transaction it opened is rolled back and the connection in sync.
    assert_usable(&mut c);
    let n = c.query_one("SELECT count(*) FROM op_panic", &[]).unwrap().get::<i64>(0);
    assert_eq!(n, 0);
    c.run(atomic(query("INSERT INTO op_panic VALUES ($1)", &p).affected()))
        .unwrap();
    assert_eq!(c.transaction_status(), TransactionStatus::Idle);
    let n = c.query_one("SELECT count(*) FROM op_panic", &[]).unwrap().get::<i64>(0);
    assert_eq!(
        n, 1,
        "the next transaction is top level, not a savepoint of the dead one"
    );
}

fn atomic_after_an_application_transaction_is_top_level_again<D: Driver>() {
    let mut c = connect::<D>();
    c.batch_execute("CREATE TEMP TABLE app_then (v int4)").unwrap();
    c.batch_execute("BEGIN").unwrap();
    let p: [Param; 1] = [&1i32];
    c.run(atomic(query("INSERT INTO app_then VALUES ($1)", &p).affected()))
        .unwrap();
    c.batch_execute("COMMIT").unwrap();
    // The savepoint used inside the application's transaction must not leave
    // later transactions nesting into one that no longer exists.
    let p: [Param; 1] = [&2i32];
    c.run(atomic(query("INSERT INTO app_then VALUES ($1)", &p).affected()))
        .unwrap();
    c.atomic_script(&[TxStep::Execute("INSERT INTO app_then VALUES (3)".into())])
        .unwrap();
    assert_usable(&mut c);
    let n = c.query_one("SELECT count(*) FROM app_then", &[]).unwrap().get::<i64>(0);
    assert_eq!(n, 3);
}
