//! What the pool tests need from a driver's pool, blocking on purpose like
//! [`crate::Driver`]: the tokio pool runs on a multi-threaded runtime of
//! its own, so its background tasks (connects, drains) progress while a
//! test waits.

use std::sync::Arc;

use duet_core::pool::{PoolOptions, PoolStatus};
use duet_core::{Error, TransactionStatus};

/// A connection held by a test until it drops this.
pub type Held = Box<dyn std::any::Any + Send>;

pub trait PoolDriver: Sized + 'static {
    type Pool: Clone + Send + Sync + 'static;
    const NAME: &'static str;
    fn pool(url: &str, options: PoolOptions, after_connect: Option<&str>) -> Self::Pool;
    fn status(pool: &Self::Pool) -> PoolStatus;
    /// Takes a connection, runs `sql` (simple protocol) on it and gives it
    /// back; the first column of the first row.
    fn query(pool: &Self::Pool, sql: &str) -> Result<Option<String>, Error>;
    /// Takes a connection and keeps it until the returned value is dropped;
    /// its backend's pid.
    fn hold(pool: &Self::Pool) -> Result<(i32, Held), Error>;
    /// Takes a connection, runs `sql` (which leaves a transaction open) and
    /// gives it back as it is; the backend's pid.
    fn leave_in_transaction(pool: &Self::Pool, sql: &str) -> Result<i32, Error>;
    /// Takes a connection, starts `sql` and gives the connection back while
    /// the statement still runs (a step of the blocking loop; a dropped
    /// future); the backend's pid.
    fn leave_mid_query(pool: &Self::Pool, sql: &str) -> Result<i32, Error>;
    /// Takes a connection, runs `first`, waits `pause`, then runs `then` on
    /// it and gives it back (whatever became of it); `then`'s result.
    fn query_after(
        pool: &Self::Pool,
        first: &str,
        pause: std::time::Duration,
        then: &str,
    ) -> Result<Option<String>, Error>;
    /// Takes a connection; its backend's pid and transaction status.
    fn inspect(pool: &Self::Pool) -> Result<(i32, TransactionStatus), Error>;
    /// `workers` threads or tasks at once, each taking a connection and
    /// running `sql` on it; the results.
    fn concurrently(pool: &Self::Pool, workers: usize, sql: &str) -> Vec<Result<Option<String>, Error>>;
}

fn first_value(messages: Vec<duet_core::SimpleMessage>) -> Option<String> {
    messages.into_iter().find_map(|m| match m {
        duet_core::SimpleMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

fn backend_pid(rows: Vec<duet_core::Row>) -> i32 {
    rows[0].get(0)
}

const PID: &str = "SELECT pg_backend_pid()";

/// The blocking driver's pool.
pub struct SyncPool;

impl PoolDriver for SyncPool {
    type Pool = duet_sync::pool::Pool;
    const NAME: &'static str = "sync";
    fn pool(url: &str, options: PoolOptions, after_connect: Option<&str>) -> Self::Pool {
        let config = duet_core::Config::from_env(url).expect("valid URL");
        duet_sync::pool::Pool::with_config(config, options, after_connect.map(str::to_string))
    }
    fn status(pool: &Self::Pool) -> PoolStatus {
        pool.status()
    }
    fn query(pool: &Self::Pool, sql: &str) -> Result<Option<String>, Error> {
        pool.get()?.simple_query(sql).map(first_value)
    }
    fn hold(pool: &Self::Pool) -> Result<(i32, Held), Error> {
        let mut c = pool.get()?;
        let pid = backend_pid(c.query(PID, &[])?);
        Ok((pid, Box::new(c)))
    }
    fn leave_in_transaction(pool: &Self::Pool, sql: &str) -> Result<i32, Error> {
        let mut c = pool.get()?;
        let pid = backend_pid(c.query(PID, &[])?);
        c.batch_execute(sql)?;
        Ok(pid)
    }
    fn leave_mid_query(pool: &Self::Pool, sql: &str) -> Result<i32, Error> {
        let mut c = pool.get()?;
        let pid = backend_pid(c.query(PID, &[])?);
        assert!(
            c.run_steps(duet_core::ops::simple_query(sql, None), 1).is_none(),
            "still running"
        );
        Ok(pid)
    }
    fn query_after(
        pool: &Self::Pool,
        first: &str,
        pause: std::time::Duration,
        then: &str,
    ) -> Result<Option<String>, Error> {
        let mut c = pool.get()?;
        c.batch_execute(first)?;
        std::thread::sleep(pause);
        c.simple_query(then).map(first_value)
    }
    fn inspect(pool: &Self::Pool) -> Result<(i32, TransactionStatus), Error> {
        let mut c = pool.get()?;
        let status = c.transaction_status();
        Ok((backend_pid(c.query(PID, &[])?), status))
    }
    fn concurrently(pool: &Self::Pool, workers: usize, sql: &str) -> Vec<Result<Option<String>, Error>> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (pool, sql) = (pool.clone(), sql.to_string());
                std::thread::spawn(move || Self::query(&pool, &sql))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker")).collect()
    }
}

/// The tokio driver's pool, with the runtime it lives on.
#[derive(Clone)]
pub struct TokioPoolHandle {
    pool: duet_async::pool::Pool,
    rt: Arc<tokio::runtime::Runtime>,
}

pub struct TokioPool;

impl PoolDriver for TokioPool {
    type Pool = TokioPoolHandle;
    const NAME: &'static str = "tokio";
    fn pool(url: &str, options: PoolOptions, after_connect: Option<&str>) -> Self::Pool {
        let rt = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime"),
        );
        let config = duet_core::Config::from_env(url).expect("valid URL");
        let pool = rt
            .block_on(async { duet_async::pool::Pool::with_config(config, options, after_connect.map(str::to_string)) })
            .expect("pool");
        TokioPoolHandle { pool, rt }
    }
    fn status(pool: &Self::Pool) -> PoolStatus {
        pool.pool.status()
    }
    fn query(pool: &Self::Pool, sql: &str) -> Result<Option<String>, Error> {
        pool.rt
            .block_on(async { pool.pool.get().await?.simple_query(sql).await })
            .map(first_value)
    }
    fn hold(pool: &Self::Pool) -> Result<(i32, Held), Error> {
        pool.rt.block_on(async {
            let mut c = pool.pool.get().await?;
            let pid = backend_pid(c.query(PID, &[]).await?);
            Ok((pid, Box::new(c) as Held))
        })
    }
    fn leave_in_transaction(pool: &Self::Pool, sql: &str) -> Result<i32, Error> {
        pool.rt.block_on(async {
            let mut c = pool.pool.get().await?;
            let pid = backend_pid(c.query(PID, &[]).await?);
            c.batch_execute(sql).await?;
            Ok(pid)
        })
    }
    fn leave_mid_query(pool: &Self::Pool, sql: &str) -> Result<i32, Error> {
        pool.rt.block_on(async {
            let mut c = pool.pool.get().await?;
            let pid = backend_pid(c.query(PID, &[]).await?);
            let r = tokio::time::timeout(std::time::Duration::from_millis(50), c.simple_query(sql)).await;
            assert!(r.is_err(), "still running");
            Ok(pid)
        })
    }
    fn query_after(
        pool: &Self::Pool,
        first: &str,
        pause: std::time::Duration,
        then: &str,
    ) -> Result<Option<String>, Error> {
        pool.rt.block_on(async {
            let mut c = pool.pool.get().await?;
            c.batch_execute(first).await?;
            tokio::time::sleep(pause).await;
            c.simple_query(then).await.map(first_value)
        })
    }
    fn inspect(pool: &Self::Pool) -> Result<(i32, TransactionStatus), Error> {
        pool.rt.block_on(async {
            let mut c = pool.pool.get().await?;
            let status = c.transaction_status();
            Ok((backend_pid(c.query(PID, &[]).await?), status))
        })
    }
    fn concurrently(pool: &Self::Pool, workers: usize, sql: &str) -> Vec<Result<Option<String>, Error>> {
        pool.rt.block_on(async {
            let tasks: Vec<_> = (0..workers)
                .map(|_| {
                    let (p, sql) = (pool.pool.clone(), sql.to_string());
                    tokio::spawn(async move { p.get().await?.simple_query(&sql).await.map(first_value) })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("task"));
            }
            out
        })
    }
}

/// Instantiates each named generic pool test for both drivers, as
/// `name::sync` and `name::tokio`.
#[macro_export]
macro_rules! pool_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sync() {
                    super::$name::<$crate::pools::SyncPool>();
                }
                #[test]
                fn tokio() {
                    super::$name::<$crate::pools::TokioPool>();
                }
            }
        )*
    };
}
