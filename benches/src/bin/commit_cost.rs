//! What commit truth costs a small pipelined transaction: the same
//! `atomic(pipeline((UPDATE, UPDATE)))` on two connections of each driver,
//! one with `commit_lookup=on` (the transaction-id probes ride along) and
//! one with `commit_lookup=off`, interleaved round by round on one server.
//! Prints the medians and their ratio (on ÷ off) for wall time and client
//! CPU.
//!
//! ```sh
//! cargo run -p duet-benches --release --bin commit_cost -- [rounds] [transactions per round]
//! ```

use std::time::{Duration, Instant};

use duet_conformance::server::TestServer;
use duet_core::ops::{atomic, pipeline, query};
use duet_core::Param;

const UPDATE: &str = "UPDATE accounts SET balance = balance + $2 WHERE id = $1";

/// Client CPU time of this process (user + system).
fn cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `n` transfers; returns (wall, cpu) per transaction in µs.
fn run_sync(c: &mut duet_sync::Client, n: usize) -> (f64, f64) {
    let (w0, c0) = (Instant::now(), cpu());
    for i in 0..n {
        let (a, b) = ((i % 100) as i32 + 1, ((i + 1) % 100) as i32 + 1);
        let (minus, plus) = (-1i64, 1i64);
        let (pa, pb): ([Param; 2], [Param; 2]) = ([&a, &minus], [&b, &plus]);
        let (x, y) = c
            .transaction(pipeline((query(UPDATE, &pa).affected(), query(UPDATE, &pb).affected())))
            .expect("transfer");
        assert_eq!((x, y), (1, 1));
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    (per(w0.elapsed()), per(cpu() - c0))
}

fn run_async(rt: &tokio::runtime::Runtime, c: &mut duet_async::Client, n: usize) -> (f64, f64) {
    let (w0, c0) = (Instant::now(), cpu());
    rt.block_on(async {
        for i in 0..n {
            let (a, b) = ((i % 100) as i32 + 1, ((i + 1) % 100) as i32 + 1);
            let (minus, plus) = (-1i64, 1i64);
            let (pa, pb): ([Param; 2], [Param; 2]) = ([&a, &minus], [&b, &plus]);
            let (x, y) = c
                .run(atomic(pipeline((
                    query(UPDATE, &pa).affected(),
                    query(UPDATE, &pb).affected(),
                ))))
                .await
                .expect("transfer");
            assert_eq!((x, y), (1, 1));
        }
    });
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    (per(w0.elapsed()), per(cpu() - c0))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(15);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(400);
    let server = TestServer::start().expect("PostgreSQL");
    let url = |lookup: &str| format!("{}?local_socket=disable&commit_lookup={lookup}", server.url());
    let mut setup = duet_sync::Client::connect(&url("on")).expect("connect");
    setup
        .batch_execute(
            "DROP TABLE IF EXISTS accounts;
             CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO accounts SELECT i, 1000000 FROM generate_series(1, 100) i",
        )
        .expect("setup");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut sync_on = duet_sync::Client::connect(&url("on")).expect("connect");
    let mut sync_off = duet_sync::Client::connect(&url("off")).expect("connect");
    let mut async_on = rt.block_on(duet_async::Client::connect(&url("on"))).expect("connect");
    let mut async_off = rt.block_on(duet_async::Client::connect(&url("off"))).expect("connect");
    // Warm the statement caches and the server.
    run_sync(&mut sync_on, n / 4);
    run_sync(&mut sync_off, n / 4);
    run_async(&rt, &mut async_on, n / 4);
    run_async(&rt, &mut async_off, n / 4);
    let mut figures: [(Vec<f64>, Vec<f64>); 4] = Default::default();
    for round in 0..rounds {
        // Alternate which goes first, so neither gains from the order.
        let (s_on, s_off, a_on, a_off) = if round % 2 == 0 {
            let s_on = run_sync(&mut sync_on, n);
            let s_off = run_sync(&mut sync_off, n);
            let a_on = run_async(&rt, &mut async_on, n);
            (s_on, s_off, a_on, run_async(&rt, &mut async_off, n))
        } else {
            let s_off = run_sync(&mut sync_off, n);
            let s_on = run_sync(&mut sync_on, n);
            let a_off = run_async(&rt, &mut async_off, n);
            (s_on, s_off, run_async(&rt, &mut async_on, n), a_off)
        };
        let runs = [s_on, s_off, a_on, a_off];
        for (f, (wall, cpu)) in figures.iter_mut().zip(runs) {
            f.0.push(wall);
            f.1.push(cpu);
        }
    }
    let m: Vec<(f64, f64)> = figures.into_iter().map(|(w, c)| (median(w), median(c))).collect();
    println!(
        "commit_cost: atomic(pipeline((UPDATE, UPDATE))), {rounds} rounds × {n} transactions, medians per transaction"
    );
    println!("  driver   lookup on wall/cpu      lookup off wall/cpu     on ÷ off wall   on ÷ off cpu");
    for (name, on, off) in [("sync", m[0], m[1]), ("async", m[2], m[3])] {
        println!(
            "  {name:<6} {:>9.1}µs {:>8.1}µs   {:>9.1}µs {:>8.1}µs   {:>13.3}   {:>12.3}",
            on.0,
            on.1,
            off.0,
            off.1,
            on.0 / off.0,
            on.1 / off.1
        );
    }
}
