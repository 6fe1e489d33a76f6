//! What the pool tests need from a driver's pool, blocking on purpose like
//! [`crate::Driver`]: the tokio pool runs on a multi-threaded runtime of
//! its own, so its background tasks (connects, drains) progress while a
//! test waits.

use std::future::Future;
use std::marker::PhantomData;
use std::ops::DerefMut;
use std::sync::Arc;

use duet_core::pool::{PoolOptions, PoolStatus};
use duet_core::{Error, TransactionStatus};

use crate::first_value;

/// A connection held by a test until it drops this.
pub type Held = Box<dyn std::any::Any + Send>;

pub trait PoolDriver: Sized + 'static {
    type Pool: Clone + Send + Sync + 'static;
    const NAME: &'static str;
    /// A connection given back busy is brought back to idle and kept
    /// (duet's pools, deadpool's `recycle`); otherwise it is discarded
    /// (r2d2, whose verdict cannot wait).
    const KEEPS_RESET: bool;
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

fn backend_pid(rows: Vec<duet_core::Row>) -> i32 {
    rows[0].get(0)
}

const PID: &str = "SELECT pg_backend_pid()";

/// A URL whose port nobody listens on (it was free a moment ago).
pub fn unreachable_url() -> String {
    let port = crate::server::free_port().expect("a free port");
    format!("postgres://postgres@127.0.0.1:{port}/postgres?local_socket=disable&sslmode=disable")
}

/// A pool of blocking clients: duet's own, or r2d2 with duet's manager.
pub trait BlockingPool: Clone + Send + Sync + Sized + 'static {
    type Guard: DerefMut<Target = duet_sync::Client> + Send + 'static;
    const NAME: &'static str;
    const KEEPS_RESET: bool;
    fn build(config: duet_core::Config, options: PoolOptions, after_connect: Option<&str>) -> Self;
    fn take(&self) -> Result<Self::Guard, Error>;
    fn status(&self) -> PoolStatus;
}

impl BlockingPool for duet_sync::pool::Pool {
    type Guard = duet_sync::pool::PooledClient;
    const NAME: &'static str = "sync";
    const KEEPS_RESET: bool = true;
    fn build(config: duet_core::Config, options: PoolOptions, after_connect: Option<&str>) -> Self {
        duet_sync::pool::Pool::with_config(config, options, after_connect.map(str::to_string))
    }
    fn take(&self) -> Result<Self::Guard, Error> {
        self.get()
    }
    fn status(&self) -> PoolStatus {
        duet_sync::pool::Pool::status(self)
    }
}

impl BlockingPool for duet_sync::r2d2::Pool {
    type Guard = duet_sync::r2d2::r2d2::PooledConnection<duet_sync::r2d2::ConnectionManager>;
    const NAME: &'static str = "r2d2";
    const KEEPS_RESET: bool = false;
    fn build(config: duet_core::Config, options: PoolOptions, after_connect: Option<&str>) -> Self {
        let mut manager = duet_sync::r2d2::ConnectionManager::with_config(config);
        if let Some(sql) = after_connect {
            manager = manager.after_connect(sql);
        }
        let mut b = duet_sync::r2d2::Pool::builder()
            .max_size(options.max_size as u32)
            .min_idle(Some(options.min_idle as u32))
            .idle_timeout(options.idle_timeout)
            .max_lifetime(options.max_lifetime)
            .test_on_check_out(options.test_before_acquire);
        if let Some(t) = options.acquire_timeout {
            b = b.connection_timeout(t);
        }
        b.build_unchecked(manager)
    }
    fn take(&self) -> Result<Self::Guard, Error> {
        self.get().map_err(|e| Error::PoolTimeout(e.to_string().into()))
    }
    fn status(&self) -> PoolStatus {
        let s = self.state();
        PoolStatus {
            size: s.connections as usize,
            idle: s.idle_connections as usize,
            ..PoolStatus::default()
        }
    }
}

/// The pool tests on a blocking pool.
pub struct Blocking<P>(PhantomData<P>);

/// duet-sync's pool.
pub type SyncPool = Blocking<duet_sync::pool::Pool>;
/// r2d2 with duet-sync's `ConnectionManager`.
pub type R2d2Pool = Blocking<duet_sync::r2d2::Pool>;

impl<P: BlockingPool> PoolDriver for Blocking<P> {
    type Pool = P;
    const NAME: &'static str = P::NAME;
    const KEEPS_RESET: bool = P::KEEPS_RESET;
    fn pool(url: &str, options: PoolOptions, after_connect: Option<&str>) -> Self::Pool {
        let config = duet_core::Config::from_env(url).expect("valid URL");
        P::build(config, options, after_connect)
    }
    fn status(pool: &Self::Pool) -> PoolStatus {
        pool.status()
    }
    fn query(pool: &Self::Pool, sql: &str) -> Result<Option<String>, Error> {
        pool.take()?.simple_query(sql).map(|m| first_value(&m))
    }
    fn hold(pool: &Self::Pool) -> Result<(i32, Held), Error> {
        let mut c = pool.take()?;
        let pid = backend_pid(c.query(PID, &[])?);
        Ok((pid, Box::new(c)))
    }
    fn leave_in_transaction(pool: &Self::Pool, sql: &str) -> Result<i32, Error> {
        let mut c = pool.take()?;
        let pid = backend_pid(c.query(PID, &[])?);
        c.batch_execute(sql)?;
        Ok(pid)
    }
    fn leave_mid_query(pool: &Self::Pool, sql: &str) -> Result<i32, Error> {
        let mut c = pool.take()?;
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
        let mut c = pool.take()?;
        c.batch_execute(first)?;
        std::thread::sleep(pause);
        c.simple_query(then).map(|m| first_value(&m))
    }
    fn inspect(pool: &Self::Pool) -> Result<(i32, TransactionStatus), Error> {
        let mut c = pool.take()?;
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

/// A pool of tokio clients: duet's own, or deadpool with duet's manager.
pub trait AsyncPool: Clone + Send + Sync + Sized + 'static {
    type Guard: DerefMut<Target = duet_async::Client> + Send + 'static;
    const NAME: &'static str;
    const KEEPS_RESET: bool;
    /// Called inside the runtime.
    fn build(config: duet_core::Config, options: PoolOptions, after_connect: Option<&str>) -> Self;
    fn take(&self) -> impl Future<Output = Result<Self::Guard, Error>> + Send;
    fn status(&self) -> PoolStatus;
}

impl AsyncPool for duet_async::pool::Pool {
    type Guard = duet_async::pool::PooledClient;
    const NAME: &'static str = "tokio";
    const KEEPS_RESET: bool = true;
    fn build(config: duet_core::Config, options: PoolOptions, after_connect: Option<&str>) -> Self {
        duet_async::pool::Pool::with_config(config, options, after_connect.map(str::to_string)).expect("pool")
    }
    fn take(&self) -> impl Future<Output = Result<Self::Guard, Error>> + Send {
        self.get()
    }
    fn status(&self) -> PoolStatus {
        duet_async::pool::Pool::status(self)
    }
}

type Deadpool = duet_async::deadpool::Pool;

impl AsyncPool for Deadpool {
    type Guard = duet_async::deadpool::deadpool::managed::Object<duet_async::deadpool::Manager>;
    const NAME: &'static str = "deadpool";
    const KEEPS_RESET: bool = true;
    fn build(config: duet_core::Config, options: PoolOptions, after_connect: Option<&str>) -> Self {
        let mut manager = duet_async::deadpool::Manager::with_config(config);
        if let Some(sql) = after_connect {
            manager = manager.after_connect(sql);
        }
        // deadpool has no idle or lifetime limits, nor min_idle; it waits
        // with a timeout only on a runtime it is told of.
        Deadpool::builder(manager)
            .max_size(options.max_size)
            .wait_timeout(options.acquire_timeout)
            .recycle_timeout(options.acquire_timeout)
            .runtime(duet_async::deadpool::deadpool::Runtime::Tokio1)
            .build()
            .expect("pool")
    }
    async fn take(&self) -> Result<Self::Guard, Error> {
        use duet_async::deadpool::deadpool::managed::PoolError;
        self.get().await.map_err(|e| match e {
            PoolError::Backend(e) => e,
            other => Error::PoolTimeout(other.to_string().into()),
        })
    }
    fn status(&self) -> PoolStatus {
        let s = Deadpool::status(self);
        PoolStatus {
            size: s.size,
            idle: s.available,
            opening: 0,
            waiting: s.waiting,
        }
    }
}

/// A tokio pool, with the runtime it lives on.
pub struct TokioPoolHandle<P> {
    pool: P,
    rt: Arc<tokio::runtime::Runtime>,
}

impl<P: Clone> Clone for TokioPoolHandle<P> {
    fn clone(&self) -> Self {
        TokioPoolHandle {
            pool: self.pool.clone(),
            rt: self.rt.clone(),
        }
    }
}

/// The pool tests on a tokio pool.
pub struct Tokio<P>(PhantomData<P>);

/// duet-async's pool.
pub type TokioPool = Tokio<duet_async::pool::Pool>;
/// deadpool with duet-async's `Manager`.
pub type DeadpoolPool = Tokio<Deadpool>;

impl<P: AsyncPool> PoolDriver for Tokio<P> {
    type Pool = TokioPoolHandle<P>;
    const NAME: &'static str = P::NAME;
    const KEEPS_RESET: bool = P::KEEPS_RESET;
    fn pool(url: &str, options: PoolOptions, after_connect: Option<&str>) -> Self::Pool {
        let rt = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime"),
        );
        let config = duet_core::Config::from_env(url).expect("valid URL");
        let pool = rt.block_on(async { P::build(config, options, after_connect) });
        TokioPoolHandle { pool, rt }
    }
    fn status(pool: &Self::Pool) -> PoolStatus {
        pool.pool.status()
    }
    fn query(pool: &Self::Pool, sql: &str) -> Result<Option<String>, Error> {
        pool.rt
            .block_on(async { pool.pool.take().await?.simple_query(sql).await })
            .map(|m| first_value(&m))
    }
    fn hold(pool: &Self::Pool) -> Result<(i32, Held), Error> {
        pool.rt.block_on(async {
            let mut c = pool.pool.take().await?;
            let pid = backend_pid(c.query(PID, &[]).await?);
            Ok((pid, Box::new(c) as Held))
        })
    }
    fn leave_in_transaction(pool: &Self::Pool, sql: &str) -> Result<i32, Error> {
        pool.rt.block_on(async {
            let mut c = pool.pool.take().await?;
            let pid = backend_pid(c.query(PID, &[]).await?);
            c.batch_execute(sql).await?;
            Ok(pid)
        })
    }
    fn leave_mid_query(pool: &Self::Pool, sql: &str) -> Result<i32, Error> {
        pool.rt.block_on(async {
            let mut c = pool.pool.take().await?;
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
            let mut c = pool.pool.take().await?;
            c.batch_execute(first).await?;
            tokio::time::sleep(pause).await;
            c.simple_query(then).await.map(|m| first_value(&m))
        })
    }
    fn inspect(pool: &Self::Pool) -> Result<(i32, TransactionStatus), Error> {
        pool.rt.block_on(async {
            let mut c = pool.pool.take().await?;
            let status = c.transaction_status();
            Ok((backend_pid(c.query(PID, &[]).await?), status))
        })
    }
    fn concurrently(pool: &Self::Pool, workers: usize, sql: &str) -> Vec<Result<Option<String>, Error>> {
        pool.rt.block_on(async {
            let tasks: Vec<_> = (0..workers)
                .map(|_| {
                    let (p, sql) = (pool.pool.clone(), sql.to_string());
                    tokio::spawn(async move { p.take().await?.simple_query(&sql).await.map(|m| first_value(&m)) })
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

/// Instantiates each named generic pool test for the adaptors of the pools
/// applications already use, as `adaptors::name::r2d2` and
/// `adaptors::name::deadpool` (once per test file).
#[macro_export]
macro_rules! pool_adaptor_tests {
    ($($name:ident),* $(,)?) => {
        mod adaptors {
            $(
                mod $name {
                    #[test]
                    fn r2d2() {
                        super::super::$name::<$crate::pools::R2d2Pool>();
                    }
                    #[test]
                    fn deadpool() {
                        super::super::$name::<$crate::pools::DeadpoolPool>();
                    }
                }
            )*
        }
    };
}
