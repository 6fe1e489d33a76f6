//! The promises under faults, each written once and run against both
//! drivers: dropping work at any step is safe, every time limit ends the
//! call, and a transaction's result tells the truth about its commit. The
//! faults come from a damaging proxy in front of the real server and from a
//! scripted fake server (`duet_conformance::faults`) for what a real server
//! will not do.
//!
//! The sweeps print their fault matrix (`cargo test -p duet-conformance
//! --test faults -- --nocapture`), which the README's "Reliability" section
//! reports.

use std::time::{Duration, Instant};

use duet_conformance::faults::{self, FakeServer, Fault, Proxy};
use duet_conformance::server::TestServer;
use duet_conformance::{assert_usable, conformance_tests, connect, Driver, TxStep};
use duet_core::ops::{atomic, pipeline, query, simple_query};
use duet_core::orm::prelude::*;
use duet_core::orm::{HookCtx, Hooks};
use duet_core::{Error, Operation};

conformance_tests!(
    abandoned_transaction_with_an_unsent_commit_never_commits,
    failed_client_check_does_not_commit,
    deadline_ends_a_stream_with_a_slow_consumer,
    notice_flood_cannot_outlast_a_limit,
    unanswered_cancel_connection_does_not_hang,
    limits_of_any_size_are_accepted,
    close_gives_up_on_a_peer_that_stops_reading,
    stalled_server_ends_as_timeout,
    nul_in_sql_is_named,
    lost_commit_tells_the_truth,
    lost_commit_over_tls_tells_the_truth,
    lost_request_tells_the_truth,
    lost_interactive_commit_tells_the_truth,
    result_cut_at_every_byte_fails_cleanly,
    trickled_and_reset_connections,
    peers_that_are_not_postgres_are_named,
    abandonment_at_every_step_leaves_nothing_behind,
    terminated_backend_and_idle_transaction_timeout,
    server_restart_under_a_client,
    refused_sibling_takes_back_a_transaction,
    commit_truth_keeps_transaction_semantics,
);

fn server() -> &'static TestServer {
    TestServer::shared()
}

/// A table of its own for each test and driver (tests run in parallel).
fn table<D: Driver>(c: &mut D, name: &str, columns: &str) -> String {
    let t = format!("faults_{name}_{}", D::NAME);
    c.batch_execute(&format!("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} ({columns})"))
        .unwrap();
    t
}

fn count<D: Driver>(c: &mut D, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .unwrap()
        .get(0)
}

/// Ends within `limit` or fails the test: the "must not hang" check, with
/// limits far above what a correct run needs.
fn within<T>(limit: Duration, what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    assert!(took < limit, "{what} took {took:?}, expected well under {limit:?}");
    out
}

// ---- 1. a dropped transaction never commits ----

fn abandoned_transaction_with_an_unsent_commit_never_commits<D: Driver>() {
    let mut c = connect::<D>();
    let mut check = connect::<D>();
    let t = table(&mut c, "unsent_commit", "v text");
    let big = "x".repeat(32 << 20);
    let insert_big = format!("INSERT INTO {t} VALUES ($1)");
    let insert_small = format!("INSERT INTO {t} VALUES ('small')");
    let p: [duet_core::Param; 1] = [&big];
    let op = atomic(pipeline((
        query(insert_big.as_str(), &p).affected(),
        query(insert_small.as_str(), &[]).affected(),
    )));
    // One step: everything is queued, a part of the 32 MiB leaves, and the
    // operation is dropped with its COMMIT still in the send buffer.
    assert!(c.run_steps(op, 1).is_none(), "32 MiB cannot go in one step");
    // Nothing committed on its own before the client's next call...
    assert_eq!(count(&mut check, &t), 0);
    // ...nor after the next call sends the rest.
    assert_usable(&mut c);
    assert_eq!(count(&mut c, &t), 0);
    assert_eq!(count(&mut check, &t), 0, "the abandoned transaction committed");
}

// ---- 2. Err means nothing committed ----

fn failed_client_check_does_not_commit<D: Driver>() {
    let mut c = connect::<D>();
    let t = table(&mut c, "client_check", "v int");
    c.execute(&format!("INSERT INTO {t} VALUES (1)"), &[]).unwrap();
    let update = format!("UPDATE {t} SET v = v + 1");
    let err = c
        .run(atomic(pipeline((
            query(update.as_str(), &[]).affected(),
            query("SELECT 1 WHERE false", &[]).one(),
        ))))
        .unwrap_err();
    assert!(matches!(err, Error::NoRows), "{err}");
    let v: i32 = c.query_one(&format!("SELECT v FROM {t}"), &[]).unwrap().get(0);
    assert_eq!(v, 1, "the transaction reported NoRows but committed its UPDATE");
    // A client check that passes commits as usual.
    let (n, row) = c
        .run(atomic(pipeline((
            query(update.as_str(), &[]).affected(),
            query("SELECT 7", &[]).one(),
        ))))
        .unwrap();
    assert_eq!((n, row.get::<i32>(0)), (1, 7));
    let v: i32 = c.query_one(&format!("SELECT v FROM {t}"), &[]).unwrap().get(0);
    assert_eq!(v, 2);
    assert_usable(&mut c);
}

// ---- 3. limits end calls whatever the server sends ----

fn deadline_ends_a_stream_with_a_slow_consumer<D: Driver>() {
    let mut c = D::connect(&format!("{}?cancel_grace_ms=1000", server().url())).unwrap();
    let mut seen = 0u64;
    // Consuming all 600,000 rows at this pace takes a minute.
    let op = query("SELECT i FROM generate_series(1, 600000) i", &[]).for_each(|_| {
        seen += 1;
        if seen % 10 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    });
    let r = within(Duration::from_secs(30), "a 1 s limit on a slow stream", || {
        c.run_with_timeout(op, Duration::from_secs(1))
    });
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
}

fn notice_flood_cannot_outlast_a_limit<D: Driver>() {
    let fake = FakeServer::start(faults::notice_flood());
    let mut c = D::connect(&fake.url("&cancel_grace_ms=500")).unwrap();
    let r = within(Duration::from_secs(20), "a query limit under a notice flood", || {
        c.run_with_timeout(query("SELECT 1", &[]).rows(), Duration::from_millis(300))
    });
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    // The same flood before the session is ready cannot outlast connect_timeout.
    let fake = FakeServer::start(faults::flood_during_startup());
    let r = within(Duration::from_secs(20), "connect_timeout under a notice flood", || {
        D::connect(&fake.url("&connect_timeout=1")).map(|_| ())
    });
    assert!(r.is_err(), "a server that never authenticates cannot give a session");
}

fn unanswered_cancel_connection_does_not_hang<D: Driver>() {
    let fake = FakeServer::start(faults::unanswered_cancel());
    let mut c = D::connect(&fake.url("&cancel_grace_ms=500")).unwrap();
    let r = within(
        Duration::from_secs(20),
        "a limit whose cancel is never answered",
        || c.run_with_timeout(query("SELECT 1", &[]).rows(), Duration::from_millis(200)),
    );
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    assert!(fake.cancels() >= 1, "the cancel was sent");
}

fn limits_of_any_size_are_accepted<D: Driver>() {
    let mut c = D::connect(&format!("{}?connect_timeout=18446744073709551615", server().url())).unwrap();
    for limit in [
        Duration::MAX,
        Duration::from_secs(35 * 24 * 3600),
        Duration::from_secs(u64::MAX),
    ] {
        let rows = c.run_with_timeout(query("SELECT 1", &[]).rows(), limit).unwrap();
        assert_eq!(rows.len(), 1);
    }
    assert!(D::connect(&format!("{}?cancel_grace_ms=18446744073709551615", server().url())).is_ok());
    assert_usable(&mut c);
}

fn close_gives_up_on_a_peer_that_stops_reading<D: Driver>() {
    let big = "x".repeat(16 << 20);
    let p: [duet_core::Param; 1] = [&big];
    // A limit ends a call whose request the peer never reads.
    let fake = FakeServer::start(faults::stops_reading());
    let mut c = D::connect(&fake.url("&cancel_grace_ms=300")).unwrap();
    let r = within(
        Duration::from_secs(15),
        "a limit on a peer that stopped reading",
        || c.run_with_timeout(query("SELECT $1::text", &p).rows(), Duration::from_millis(200)),
    );
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    within(Duration::from_secs(15), "close after that", || c.close()).ok();
    // Dropped mid-write, the request's rest stays in the send buffer, and
    // close cannot hand it over. (Only a future can be dropped mid-write:
    // each step of the blocking driver waits for the socket.)
    if D::NAME == "tokio" {
        let mut c = D::connect(&fake.url("")).unwrap();
        assert!(c.run_steps(query("SELECT $1::text", &p).rows(), 2).is_none());
        let r = within(
            Duration::from_secs(15),
            "close with a peer that stopped reading",
            || c.close(),
        );
        assert!(r.is_err(), "close cannot claim it delivered Terminate");
    }
}

fn stalled_server_ends_as_timeout<D: Driver>() {
    let fake = FakeServer::start(faults::silent_after_handshake());
    let mut c = D::connect(&fake.url("&cancel_grace_ms=300")).unwrap();
    let r = within(Duration::from_secs(15), "a limit on a silent server", || {
        c.run_with_timeout(query("SELECT 1", &[]).rows(), Duration::from_millis(200))
    });
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    assert!(c.is_closed(), "a server that ignores its cancel is given up");
    // Through a proxy in front of the real server, the same.
    let proxy = Proxy::start(&server().host(), server().port());
    let mut c = D::connect(&proxy.url(&format!("{}?cancel_grace_ms=300", server().url()))).unwrap();
    proxy.arm(Fault::StallServerAfter(0));
    let r = within(Duration::from_secs(15), "a limit on a stalled connection", || {
        c.run_with_timeout(query("SELECT 1", &[]).rows(), Duration::from_millis(200))
    });
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
}

fn nul_in_sql_is_named<D: Driver>() {
    let mut c = connect::<D>();
    let e = c.execute("SELECT 1\0", &[]).unwrap_err();
    assert!(
        matches!(e, Error::Invalid(_)) && e.to_string().contains("NUL byte"),
        "{e}"
    );
    let e = c.batch_execute("SELECT\0 1").unwrap_err();
    assert!(e.to_string().contains("NUL byte at byte 6"), "{e}");
    assert_usable(&mut c);
}

// ---- 9. the truth about a commit whose answer is lost ----

/// How the outcomes of a cut sweep came out.
#[derive(Default, Debug)]
struct Matrix {
    ok: usize,
    committed_without_result: usize,
    not_committed: usize,
    in_doubt: usize,
    wrong: Vec<String>,
}

impl Matrix {
    /// Judges one outcome against what the server holds: `Ok` and
    /// "committed without result" must have committed, a plain error must
    /// not, in doubt may be either.
    fn judge<T: std::fmt::Debug>(&mut self, at: usize, r: &Result<T, Error>, committed: bool) {
        match r {
            Ok(_) if committed => self.ok += 1,
            Err(Error::CommittedWithoutResult(_)) if committed => self.committed_without_result += 1,
            Err(Error::InDoubt(_)) => self.in_doubt += 1,
            Err(_) if !committed => self.not_committed += 1,
            _ => self
                .wrong
                .push(format!("cut at {at}: {r:?} but committed = {committed}")),
        }
    }

    fn report(&self, what: &str, driver: &str, points: usize) {
        println!(
            "fault matrix | {what} | {driver} | {points} cut points: {} ok, {} committed without result, {} not committed, {} in doubt, {} wrong",
            self.ok,
            self.committed_without_result,
            self.not_committed,
            self.in_doubt,
            self.wrong.len()
        );
        assert!(self.wrong.is_empty(), "{what} ({driver}): {:#?}", self.wrong);
    }
}

/// Sweeps a fault over every byte offset a transaction's traffic has in
/// one direction, on a fresh connection through the proxy each time, and
/// checks each outcome against the server.
fn sweep<D: Driver, T: std::fmt::Debug>(
    name: &str,
    cut: fn(usize) -> Fault,
    server_side: bool,
    step: usize,
    run: impl Fn(&mut D, &str) -> Result<T, Error>,
) {
    sweep_on(server(), "", name, cut, server_side, step, run);
}

/// [`sweep`] against `target` through the proxy, with `words` added to the
/// connection string (e.g. TLS ones).
fn sweep_on<D: Driver, T: std::fmt::Debug>(
    target: &TestServer,
    words: &str,
    name: &str,
    cut: fn(usize) -> Fault,
    server_side: bool,
    step: usize,
    run: impl Fn(&mut D, &str) -> Result<T, Error>,
) -> Matrix {
    let mut check = D::connect(&target.url()).unwrap();
    let t = table(&mut check, name, "v int");
    let proxy = Proxy::start(&target.host(), target.port());
    let url = proxy.url(&format!(
        "{}?cancel_grace_ms=2000&connect_timeout=5{words}",
        target.url()
    ));
    // Measure the traffic once with no fault.
    let mut c = D::connect(&url).unwrap();
    proxy.arm(Fault::None);
    run(&mut c, &t).unwrap();
    let total = if server_side {
        proxy.server_bytes()
    } else {
        proxy.client_bytes()
    };
    drop(c);
    let mut m = Matrix::default();
    let mut points = 0;
    for at in (0..=total).step_by(step) {
        check.execute(&format!("DELETE FROM {t}"), &[]).unwrap();
        let mut c = D::connect(&url).unwrap();
        proxy.arm(cut(at));
        let r = run(&mut c, &t);
        drop(c);
        proxy.arm(Fault::None);
        // The server may still be finishing the old session: wait until
        // no backend is in the transaction before judging.
        let committed = count(&mut check, &t) > 0;
        m.judge(at, &r, committed);
        points += 1;
    }
    m.report(name, D::NAME, points);
    m
}

fn pipelined_transaction<D: Driver>(c: &mut D, t: &str) -> Result<(u64, u64), Error> {
    let a = format!("INSERT INTO {t} VALUES (1)");
    let b = format!("INSERT INTO {t} VALUES (2)");
    c.run(atomic(pipeline((
        query(a.as_str(), &[]).affected(),
        query(b.as_str(), &[]).affected(),
    ))))
}

fn lost_commit_tells_the_truth<D: Driver>() {
    sweep::<D, _>("reply_cut", Fault::CutServerAfter, true, 1, pipelined_transaction::<D>);
    sweep::<D, _>(
        "reply_reset",
        Fault::ResetServerAfter,
        true,
        7,
        pipelined_transaction::<D>,
    );
}

/// The same over TLS: cut points fall inside records (a record cut short
/// is lost whole), and the lookup of a lost COMMIT goes over TLS to the
/// same server. The interactive transaction knows its id before COMMIT
/// leaves, so its lost replies are looked up; a pipelined one's replies,
/// the id among them, come in one record, so a reply cut anywhere leaves it
/// in doubt without an id.
fn lost_commit_over_tls_tells_the_truth<D: Driver>() {
    let tls = TestServer::shared_tls();
    let ca = duet_conformance::tls::Certs::get()
        .unwrap()
        .ca_cert
        .display()
        .to_string();
    // The proxy is reached as 127.0.0.1, which the certificate does not
    // name: the chain is checked, not the name.
    let words = format!("&sslmode=verify-ca&sslrootcert={ca}");
    let interactive = |c: &mut D, t: &str| {
        assert!(c.connection().is_tls());
        c.atomic_script(&[
            TxStep::Execute(format!("INSERT INTO {t} VALUES (1)")),
            TxStep::Execute(format!("INSERT INTO {t} VALUES (2)")),
        ])
    };
    let m = sweep_on::<D, _>(
        tls,
        &words,
        "tls_interactive_cut",
        Fault::CutServerAfter,
        true,
        3,
        interactive,
    );
    assert!(m.ok > 0 && m.not_committed > 0, "{m:?}");
    let pipelined = |c: &mut D, t: &str| pipelined_transaction::<D>(c, t);
    sweep_on::<D, _>(
        tls,
        &words,
        "tls_request_cut",
        Fault::CutClientAfter,
        false,
        5,
        pipelined,
    );
    sweep_on::<D, _>(tls, &words, "tls_reply_cut", Fault::CutServerAfter, true, 7, pipelined);
}

fn lost_request_tells_the_truth<D: Driver>() {
    sweep::<D, _>(
        "request_cut",
        Fault::CutClientAfter,
        false,
        3,
        pipelined_transaction::<D>,
    );
}

fn lost_interactive_commit_tells_the_truth<D: Driver>() {
    sweep::<D, _>(
        "interactive_cut",
        Fault::CutServerAfter,
        true,
        1,
        |c: &mut D, t: &str| {
            c.atomic_script(&[
                TxStep::Execute(format!("INSERT INTO {t} VALUES (1)")),
                TxStep::Execute(format!("INSERT INTO {t} VALUES (2)")),
            ])
        },
    );
}

fn result_cut_at_every_byte_fails_cleanly<D: Driver>() {
    let proxy = Proxy::start(&server().host(), server().port());
    let url = proxy.url(&server().url());
    let sql = "SELECT i, md5(i::text) FROM generate_series(1, 20) i";
    let mut c = D::connect(&url).unwrap();
    proxy.arm(Fault::None);
    let expected = c.query(sql, &[]).unwrap().len();
    let total = proxy.server_bytes();
    for at in 0..total {
        let mut c = D::connect(&url).unwrap();
        proxy.arm(Fault::CutServerAfter(at));
        let r = c.query(sql, &[]);
        assert!(r.is_err(), "cut at {at} of {total}: {r:?}");
        assert!(c.is_closed(), "cut at {at}: the connection must know it is gone");
        proxy.arm(Fault::None);
    }
    let mut c = D::connect(&url).unwrap();
    proxy.arm(Fault::CutServerAfter(total));
    assert_eq!(
        c.query(sql, &[]).unwrap().len(),
        expected,
        "the whole reply is a result"
    );
}

fn trickled_and_reset_connections<D: Driver>() {
    let proxy = Proxy::start(&server().host(), server().port());
    let url = proxy.url(&server().url());
    proxy.arm(Fault::Trickle);
    let mut c = D::connect(&url).unwrap();
    let rows = c
        .query("SELECT i, repeat('y', i) FROM generate_series(1, 50) i", &[])
        .unwrap();
    assert_eq!(rows.len(), 50);
    assert_eq!(rows[49].get::<String>(1).len(), 50);
    let mut check = connect::<D>();
    let t = table(&mut check, "trickle", "v int");
    assert_eq!(pipelined_transaction(&mut c, &t).unwrap(), (1, 1));
    assert_eq!(count(&mut check, &t), 2);
    assert_usable(&mut c);
    // Corrupted bytes are an error or a result, never a panic or a hang.
    for at in [0, 1, 5, 9, 20, 40] {
        proxy.arm(Fault::None);
        let mut c = D::connect(&url).unwrap();
        proxy.arm(Fault::CorruptServerAt(at));
        let _ = within(Duration::from_secs(20), "a corrupted reply", || {
            c.run_with_timeout(query("SELECT 'abc'::text", &[]).rows(), Duration::from_secs(5))
        });
    }
}

fn peers_that_are_not_postgres_are_named<D: Driver>() {
    let http = FakeServer::start(faults::http_server());
    let e = D::connect(&http.url("")).map(|_| ()).unwrap_err();
    assert!(e.to_string().contains("HTTP server"), "{e}");
    let big = FakeServer::start(faults::oversized_message());
    let mut c = D::connect(&big.url("")).unwrap();
    let e = c.query("SELECT 1", &[]).unwrap_err();
    assert!(e.to_string().contains("max_message_size"), "{e}");
    assert!(c.is_closed());
    let auth = FakeServer::start(faults::unknown_auth());
    let e = within(Duration::from_secs(15), "an unknown auth request", || {
        D::connect(&auth.url("&connect_timeout=5")).map(|_| ()).unwrap_err()
    });
    assert!(e.is_fatal(), "{e}");
}

// ---- abandonment at every step ----

#[derive(Model, Debug, Clone)]
#[duet(table = "faults_hooked")]
#[duet(hooks)]
struct Hooked {
    #[duet(primary_key, auto)]
    id: i32,
    name: String,
}

#[derive(Model, Debug, Clone)]
#[duet(table = "faults_hook_log")]
struct HookLog {
    #[duet(primary_key, auto)]
    id: i32,
    hooked: i32,
}

impl Hooks for Hooked {
    fn after_save(&mut self, ctx: &mut HookCtx) -> Result<(), Error> {
        ctx.queue(HookLog { id: 0, hooked: self.id }.into_save());
        Ok(())
    }
}

/// Drops `make()`'s operation after k steps, for k = 0, 1, 2, … until it
/// completes; after each, the client is usable and the server holds no
/// transaction of it open. For a transaction (`full`: the rows it writes
/// per table), what it wrote is all there or none of it: none when it was
/// dropped before its COMMIT left, all when after.
fn abandon_sweep<D: Driver, O>(what: &str, tables: &[&str], full: Option<&[i64]>, make: impl Fn() -> O) -> usize
where
    O: Operation + Send,
    O::Output: Send,
{
    let mut c = connect::<D>();
    let mut check = connect::<D>();
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    for k in 0.. {
        for t in tables {
            check.execute(&format!("DELETE FROM {t}"), &[]).unwrap();
        }
        let r = c.run_steps(make(), k);
        let finished = r.is_some();
        if let Some(Err(e)) = &r {
            panic!("{what} after {k} steps: {e}");
        }
        assert_usable(&mut c);
        let state: String = check
            .query_one("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .unwrap()
            .get(0);
        assert_eq!(state, "idle", "{what} dropped after {k} steps left the session {state}");
        if let Some(full) = full {
            let counts: Vec<i64> = tables.iter().map(|t| count(&mut check, t)).collect();
            let none = counts.iter().all(|n| *n == 0);
            assert!(
                none || counts == full,
                "{what} dropped after {k} steps left {counts:?} rows in {tables:?}: not all or nothing"
            );
            assert!(k > 0 || none, "{what} never polled, yet wrote {counts:?}");
            assert!(!finished || counts == full, "{what} finished but wrote {counts:?}");
        }
        if finished {
            return k;
        }
    }
    unreachable!()
}

fn abandonment_at_every_step_leaves_nothing_behind<D: Driver>() {
    // The ORM tables are shared by both drivers' runs: a lock keeps them apart.
    static ORM_TABLES: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _orm = ORM_TABLES.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = connect::<D>();
    let t = table(&mut c, "abandon", "v int");
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS faults_hooked (id serial PRIMARY KEY, name text NOT NULL);
         CREATE TABLE IF NOT EXISTS faults_hook_log (id serial PRIMARY KEY, hooked int NOT NULL)",
    )
    .unwrap();
    let ins = format!("INSERT INTO {t} VALUES (1)");
    let ins = ins.as_str();
    let sel = "SELECT pg_sleep(0.001), 1";
    let steps = [
        (
            "query",
            abandon_sweep::<D, _>("query", &[&t], None, || query(ins, &[]).affected()),
        ),
        (
            "pipeline",
            abandon_sweep::<D, _>("pipeline", &[&t], None, || {
                pipeline((
                    query(ins, &[]).affected(),
                    query(sel, &[]).rows(),
                    query(ins, &[]).affected(),
                ))
            }),
        ),
        (
            "atomic",
            abandon_sweep::<D, _>("atomic", &[&t], Some(&[2]), || {
                atomic(pipeline((query(ins, &[]).affected(), query(ins, &[]).affected())))
            }),
        ),
        (
            "checked atomic",
            abandon_sweep::<D, _>("checked atomic", &[&t], Some(&[1]), || {
                atomic(pipeline((query(ins, &[]).affected(), query(sel, &[]).one())))
            }),
        ),
        (
            "nested atomic",
            abandon_sweep::<D, _>("nested atomic", &[&t], Some(&[2]), || {
                atomic(pipeline((
                    query(ins, &[]).affected(),
                    atomic(pipeline((query(ins, &[]).affected(), query(sel, &[]).one()))),
                )))
            }),
        ),
        (
            "ORM save with after_save hook",
            abandon_sweep::<D, _>(
                "ORM save with after_save hook",
                &["faults_hooked", "faults_hook_log"],
                Some(&[1, 1]),
                || {
                    atomic(
                        Hooked {
                            id: 0,
                            name: "h".into(),
                        }
                        .into_save(),
                    )
                },
            ),
        ),
    ];
    for (what, k) in steps {
        println!(
            "fault matrix | abandonment | {} | {what}: dropped after each of 0..{k} steps, all clean",
            D::NAME
        );
    }
}

fn terminated_backend_and_idle_transaction_timeout<D: Driver>() {
    // A backend terminated under a client: the call fails, the client says
    // it is closed, a new connection works.
    let mut c = connect::<D>();
    let mut admin = connect::<D>();
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    admin.query_one("SELECT pg_terminate_backend($1)", &[&pid]).unwrap();
    let e = within(Duration::from_secs(15), "a query on a terminated backend", || {
        c.query("SELECT 1", &[]).unwrap_err()
    });
    assert!(e.is_fatal(), "{e}");
    assert!(c.is_closed());
    // A transaction left idle past idle_in_transaction_session_timeout.
    let mut c = connect::<D>();
    c.batch_execute("SET idle_in_transaction_session_timeout = 100; BEGIN; SELECT 1")
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let e = c.query("SELECT 1", &[]).unwrap_err();
    assert!(e.is_fatal(), "{e}");
    assert!(c.is_closed());
    assert_usable(&mut connect::<D>());
}

fn server_restart_under_a_client<D: Driver>() {
    if std::env::var("DATABASE_URL").is_ok_and(|u| !u.trim().is_empty()) {
        eprintln!("DATABASE_URL is set: the harness cannot restart that server; skipping");
        return;
    }
    let mut own = TestServer::start().unwrap();
    let mut c = D::connect(&own.url()).unwrap();
    // The harness runs with synchronous_commit off; this test's commits must
    // survive an immediate shutdown.
    c.batch_execute("SET synchronous_commit = on").unwrap();
    let t = table(&mut c, "restart", "v int");
    c.execute(&format!("INSERT INTO {t} VALUES (1)"), &[]).unwrap();
    own.restart().unwrap();
    // The old session is gone: a fatal error that says so, not a hang.
    let e = within(Duration::from_secs(30), "a query across a restart", || {
        c.query("SELECT 1", &[]).unwrap_err()
    });
    assert!(e.is_fatal(), "{e}");
    assert!(c.is_closed());
    let mut c = D::connect(&own.url()).unwrap();
    assert_eq!(count(&mut c, &t), 1, "committed work survives the restart");
    assert_usable(&mut c);
}

fn refused_sibling_takes_back_a_transaction<D: Driver>() {
    let mut c = connect::<D>();
    let t = table(&mut c, "refused_sibling", "v int");
    let ins = format!("INSERT INTO {t} VALUES (1)");
    let e = c
        .run(pipeline((
            atomic(query(ins.as_str(), &[]).affected()),
            simple_query("SELECT 1", None),
        )))
        .unwrap_err();
    assert!(matches!(e, Error::Misuse(_)), "{e}");
    assert_usable(&mut c);
    assert_eq!(
        count(&mut c, &t),
        0,
        "the pipeline failed, yet its transaction committed"
    );
}

fn commit_truth_keeps_transaction_semantics<D: Driver>() {
    let mut c = connect::<D>();
    let t = table(&mut c, "semantics", "v int");
    let ins = format!("INSERT INTO {t} VALUES (1)");
    // SET TRANSACTION must come before any query: the id probe must not be one.
    c.run(atomic(pipeline((
        query("SET LOCAL lock_timeout = '5s'", &[]).affected(),
        query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", &[]).affected(),
        query(ins.as_str(), &[]).affected(),
    ))))
    .unwrap();
    let log = c
        .atomic_script(&[
            TxStep::Execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ".into()),
            TxStep::Execute(format!("LOCK TABLE {t} IN SHARE MODE")),
            TxStep::Execute(ins.clone()),
        ])
        .unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(count(&mut c, &t), 2);
    // With commit_lookup=off no probe is sent at all.
    let mut off = D::connect(&format!("{}?commit_lookup=off", server().url())).unwrap();
    off.run(atomic(query(ins.as_str(), &[]).affected())).unwrap();
    assert_eq!(count(&mut off, &t), 3);
}
