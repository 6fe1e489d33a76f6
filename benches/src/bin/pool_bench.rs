//! Pools side by side: 64 tokio tasks over a pool of 8 (duet-async,
//! deadpool-postgres, bb8-postgres, sqlx's `PgPool`) and 16 threads over a
//! pool of 8 (duet-sync, r2d2-postgres), each task or thread taking a
//! connection, running one point select (or one short transaction) and
//! giving it back, over and over. Contenders run interleaved round by
//! round on one server; prints median throughput and p50/p99 acquire
//! latency, and each against the best of the others.
//!
//! ```sh
//! cargo run -p duet-benches --release --features anchors --bin pool_bench -- [rounds] [ops per worker]
//! ```

use std::time::{Duration, Instant};

use duet_conformance::server::TestServer;

const SELECT: &str = "SELECT v FROM pool_bench WHERE id = $1";
const UPDATE: &str = "UPDATE pool_bench SET v = v + 1 WHERE id = $1";
const POOL: usize = 8;

#[derive(Clone, Copy, PartialEq)]
enum Work {
    Select,
    Transaction,
}

/// Per round: ops/s, and every acquire's latency in µs.
struct Round {
    ops_per_s: f64,
    acquire_us: Vec<f64>,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p) as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `workers` tasks of `n` ops each; `op(i)` returns its acquire time.
async fn tasks<F, Fut>(workers: usize, n: usize, op: F) -> Round
where
    F: Fn(i32) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Duration> + Send,
{
    let start = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut acq = Vec::with_capacity(n);
                for i in 0..n {
                    acq.push(op(((w * n + i) % 64) as i32 + 1).await.as_secs_f64() * 1e6);
                }
                acq
            })
        })
        .collect();
    let mut acquire_us = Vec::new();
    for h in handles {
        acquire_us.extend(h.await.expect("task"));
    }
    Round {
        ops_per_s: (workers * n) as f64 / start.elapsed().as_secs_f64(),
        acquire_us,
    }
}

fn threads<F>(workers: usize, n: usize, op: F) -> Round
where
    F: Fn(i32) -> Duration + Clone + Send + 'static,
{
    let start = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let op = op.clone();
            std::thread::spawn(move || {
                (0..n)
                    .map(|i| op(((w * n + i) % 64) as i32 + 1).as_secs_f64() * 1e6)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acquire_us = Vec::new();
    for h in handles {
        acquire_us.extend(h.join().expect("thread"));
    }
    Round {
        ops_per_s: (workers * n) as f64 / start.elapsed().as_secs_f64(),
        acquire_us,
    }
}

struct Contender {
    name: &'static str,
    run: Box<dyn Fn(Work, usize) -> Round>,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(7);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let server = TestServer::start().expect("PostgreSQL");
    let kv = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
        server.port()
    );
    let duet_url = format!("{kv} local_socket=disable");
    let mut setup = duet_sync::Client::connect(&duet_url).expect("connect");
    setup
        .batch_execute(
            "DROP TABLE IF EXISTS pool_bench; CREATE TABLE pool_bench (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO pool_bench SELECT i, 0 FROM generate_series(1, 64) i",
        )
        .expect("schema");
    let rt = std::sync::Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime"),
    );
    let opts = || duet_core::pool::PoolOptions {
        max_size: POOL,
        min_idle: POOL,
        ..Default::default()
    };

    let duet_async_pool = rt
        .block_on(async {
            duet_async::pool::Pool::with_config(duet_core::Config::parse(&duet_url).unwrap(), opts(), None)
        })
        .expect("pool");
    let duet_sync_pool = duet_sync::pool::Pool::with_config(duet_core::Config::parse(&duet_url).unwrap(), opts(), None);
    let pg_config: tokio_postgres::Config = kv.parse().expect("config");
    let deadpool = {
        let mgr = deadpool_postgres::Manager::new(pg_config.clone(), tokio_postgres::NoTls);
        deadpool_postgres::Pool::builder(mgr)
            .max_size(POOL)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .expect("deadpool")
    };
    let bb8 = rt.block_on(async {
        let mgr = bb8_postgres::PostgresConnectionManager::new(pg_config.clone(), tokio_postgres::NoTls);
        bb8::Pool::builder()
            .max_size(POOL as u32)
            .build(mgr)
            .await
            .expect("bb8")
    });
    let sqlx_pool = rt.block_on(async {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(POOL as u32)
            .connect(&format!(
                "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
                server.port()
            ))
            .await
            .expect("sqlx")
    });
    let r2d2 = {
        let mgr = r2d2_postgres::PostgresConnectionManager::new(kv.parse().expect("config"), postgres::NoTls);
        r2d2::Pool::builder().max_size(POOL as u32).build(mgr).expect("r2d2")
    };

    let mut contenders: Vec<Contender> = Vec::new();
    {
        let (rt, pool) = (rt.clone(), duet_async_pool.clone());
        contenders.push(Contender {
            name: "duet-async (64 tasks)",
            run: Box::new(move |work, n| {
                let pool = pool.clone();
                rt.block_on(tasks(64, n, move |id| {
                    let pool = pool.clone();
                    async move {
                        let t = Instant::now();
                        let mut c = pool.get().await.expect("get");
                        let acq = t.elapsed();
                        let p: [duet_core::Param; 1] = [&id];
                        match work {
                            Work::Select => {
                                c.query_one(SELECT, &p).await.expect("select");
                            }
                            Work::Transaction => {
                                c.transaction(duet_core::ops::query(UPDATE, &p).affected())
                                    .await
                                    .expect("tx");
                            }
                        }
                        acq
                    }
                }))
            }),
        });
    }
    {
        let (rt, pool) = (rt.clone(), deadpool.clone());
        contenders.push(Contender {
            name: "deadpool-postgres (64 tasks)",
            run: Box::new(move |work, n| {
                let pool = pool.clone();
                rt.block_on(tasks(64, n, move |id| {
                    let pool = pool.clone();
                    async move {
                        let t = Instant::now();
                        let mut c = pool.get().await.expect("get");
                        let acq = t.elapsed();
                        tokio_postgres_work(&mut c, work, id).await;
                        acq
                    }
                }))
            }),
        });
    }
    {
        let (rt, pool) = (rt.clone(), bb8.clone());
        contenders.push(Contender {
            name: "bb8-postgres (64 tasks)",
            run: Box::new(move |work, n| {
                let pool = pool.clone();
                rt.block_on(tasks(64, n, move |id| {
                    let pool = pool.clone();
                    async move {
                        let t = Instant::now();
                        let mut c = pool.get().await.expect("get");
                        let acq = t.elapsed();
                        tokio_postgres_work(&mut c, work, id).await;
                        acq
                    }
                }))
            }),
        });
    }
    {
        let (rt, pool) = (rt.clone(), sqlx_pool.clone());
        contenders.push(Contender {
            name: "sqlx PgPool (64 tasks)",
            run: Box::new(move |work, n| {
                let pool = pool.clone();
                rt.block_on(tasks(64, n, move |id| {
                    let pool = pool.clone();
                    async move {
                        let t = Instant::now();
                        let mut c = pool.acquire().await.expect("acquire");
                        let acq = t.elapsed();
                        match work {
                            Work::Select => {
                                sqlx::query(SELECT).bind(id).fetch_one(&mut *c).await.expect("select");
                            }
                            Work::Transaction => {
                                let mut tx = sqlx::Connection::begin(&mut *c).await.expect("begin");
                                sqlx::query(UPDATE).bind(id).execute(&mut *tx).await.expect("update");
                                tx.commit().await.expect("commit");
                            }
                        }
                        acq
                    }
                }))
            }),
        });
    }
    {
        let pool = duet_sync_pool.clone();
        contenders.push(Contender {
            name: "duet-sync (16 threads)",
            run: Box::new(move |work, n| {
                let pool = pool.clone();
                threads(16, n, move |id| {
                    let t = Instant::now();
                    let mut c = pool.get().expect("get");
                    let acq = t.elapsed();
                    let p: [duet_core::Param; 1] = [&id];
                    match work {
                        Work::Select => {
                            c.query_one(SELECT, &p).expect("select");
                        }
                        Work::Transaction => {
                            c.transaction(duet_core::ops::query(UPDATE, &p).affected()).expect("tx");
                        }
                    }
                    acq
                })
            }),
        });
    }
    {
        let pool = r2d2.clone();
        contenders.push(Contender {
            name: "r2d2-postgres (16 threads)",
            run: Box::new(move |work, n| {
                let pool = pool.clone();
                threads(16, n, move |id| {
                    let t = Instant::now();
                    let mut c = pool.get().expect("get");
                    let acq = t.elapsed();
                    match work {
                        Work::Select => {
                            c.query_one(SELECT, &[&id]).expect("select");
                        }
                        Work::Transaction => {
                            let mut tx = c.transaction().expect("begin");
                            tx.execute(UPDATE, &[&id]).expect("update");
                            tx.commit().expect("commit");
                        }
                    }
                    acq
                })
            }),
        });
    }

    println!(
        "pool_bench: pools of {POOL}; {rounds} rounds, {n} ops per task/thread; PostgreSQL {}",
        server.version()
    );
    for (work, label) in [(Work::Select, "point select"), (Work::Transaction, "short transaction")] {
        // Warm-up (fills the pools), then interleaved rounds.
        for c in &contenders {
            (c.run)(work, 5);
        }
        let mut results: Vec<(Vec<f64>, Vec<f64>)> = contenders.iter().map(|_| (Vec::new(), Vec::new())).collect();
        for _ in 0..rounds {
            for (c, r) in contenders.iter().zip(results.iter_mut()) {
                let mut round = (c.run)(work, n);
                r.0.push(round.ops_per_s);
                r.1.push(percentile(&mut round.acquire_us, 0.5));
                r.1.push(percentile(&mut round.acquire_us, 0.99));
            }
        }
        println!("\n{label}");
        println!(
            "  {:<30} {:>10} {:>12} {:>12}",
            "contender", "ops/s", "acquire p50", "acquire p99"
        );
        for (c, (ops, acq)) in contenders.iter().zip(results) {
            let p50 = median(acq.iter().step_by(2).copied().collect());
            let p99 = median(acq.iter().skip(1).step_by(2).copied().collect());
            println!("  {:<30} {:>10.0} {:>10.1}µs {:>10.1}µs", c.name, median(ops), p50, p99);
        }
    }
}

/// One operation on a tokio-postgres client, as deadpool and bb8 lend it.
async fn tokio_postgres_work(c: &mut tokio_postgres::Client, work: Work, id: i32) {
    match work {
        Work::Select => {
            c.query_one(SELECT, &[&id]).await.expect("select");
        }
        Work::Transaction => {
            let tx = c.transaction().await.expect("begin");
            tx.execute(UPDATE, &[&id]).await.expect("update");
            tx.commit().await.expect("commit");
        }
    }
}
