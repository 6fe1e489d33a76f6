//! The tokio pool: the core's policy ([`duet_core::pool`]) carried out with
//! a mutex, one-shot channels and a task per connect. Every decision — who
//! is served next, when to open, test, keep or close — is the core's.
//! Create it inside a runtime; it spawns its work there.
//!
//! ```no_run
//! use duet_async::prelude::*;
//! use duet_async::pool::{Pool, PoolOptions};
//!
//! # async fn demo() -> Result<(), duet_async::Error> {
//! let pool = Pool::new("postgres://app@localhost/shop", PoolOptions { max_size: 8, ..Default::default() })?;
//! let mut db = pool.get().await?;                 // derefs to a Client
//! let n: i64 = db.query_one("SELECT count(*) FROM users", &[]).await?.get(0);
//! drop(db);                                        // back to the pool, idle
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use duet_core::pool::{Action, Discard, GiveBack, Giveback, Pool as Policy, Pooled, WaiterId};
pub use duet_core::pool::{PoolOptions, PoolStatus};
use tokio::sync::oneshot;

use crate::{Client, Config, Error};

type Answer = Result<(Pooled<Client>, bool), Error>;

/// A pool of connections, shared by tasks (clone it freely).
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    /// Statements run on every new connection (e.g. `SET search_path = app`).
    after_connect: Option<String>,
    state: Mutex<State>,
    runtime: tokio::runtime::Handle,
}

struct State {
    policy: Policy<Client>,
    answers: HashMap<WaiterId, oneshot::Sender<Answer>>,
}

impl Pool {
    /// A pool for the connection string `params` (read as
    /// [`Client::connect`] reads it). Call it inside a tokio runtime.
    pub fn new(params: &str, options: PoolOptions) -> Result<Pool, Error> {
        Pool::with_config(Config::from_env(params)?, options, None)
    }

    /// A pool for `config`; `after_connect` runs on every new connection
    /// before it is lent.
    pub fn with_config(config: Config, options: PoolOptions, after_connect: Option<String>) -> Result<Pool, Error> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::config("a duet_async pool must be created inside a tokio runtime"))?;
        let pool = Pool {
            shared: Arc::new(Shared {
                config,
                after_connect,
                state: Mutex::new(State {
                    policy: Policy::new(options, Instant::now()),
                    answers: HashMap::new(),
                }),
                runtime,
            }),
        };
        let mut st = pool.shared.lock();
        pool.shared.carry_out(&mut st);
        drop(st);
        pool.shared.runtime.spawn(maintain(Arc::downgrade(&pool.shared)));
        Ok(pool)
    }

    /// A connection, in the order callers asked, within `acquire_timeout`.
    /// Dropping the future gives up the caller's turn (and any connection
    /// already granted to it goes back to the pool).
    pub async fn get(&self) -> Result<PooledClient, Error> {
        loop {
            let (mut conn, test) = Wait::new(&self.shared).answer().await?;
            let alive = if test {
                ping(&mut conn.conn, &self.shared.config).await
            } else {
                Ok(())
            };
            if let Err(e) = alive {
                // Dead while idle (a restart, pg_terminate_backend): dropped,
                // and this caller asks again.
                let mut st = self.shared.lock();
                st.policy.release(conn, Err(Discard::TestFailed(e)), Instant::now());
                self.shared.carry_out(&mut st);
                continue;
            }
            return Ok(PooledClient::new(conn, self.clone()));
        }
    }

    /// Runs `op` on a connection from the pool.
    pub async fn run<O: duet_core::Operation>(&self, op: O) -> Result<O::Output, Error> {
        self.get().await?.run(op).await
    }

    /// Runs `op` in a transaction on a connection from the pool.
    pub async fn atomic<O: duet_core::Operation>(&self, op: O) -> Result<O::Output, Error> {
        self.get().await?.transaction(op).await
    }

    pub fn status(&self) -> PoolStatus {
        self.shared.lock().policy.status()
    }
}

/// Applies the idle and lifetime limits and `min_idle` while nobody uses
/// the pool: sleeps until the policy's next deadline (at most a second, so
/// the task ends soon after the pool is dropped).
async fn maintain(shared: std::sync::Weak<Shared>) {
    loop {
        let until = {
            let Some(shared) = shared.upgrade() else { return };
            let limit = Instant::now() + std::time::Duration::from_secs(1);
            let t = shared.lock().policy.poll_timeout();
            t.map_or(limit, |t| t.min(limit))
        };
        tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
        let Some(shared) = shared.upgrade() else { return };
        let mut st = shared.lock();
        st.policy.handle_timeout(Instant::now());
        shared.carry_out(&mut st);
    }
}

/// A round trip with a short limit: is the idle connection still alive?
async fn ping(c: &mut Client, config: &Config) -> Result<(), Error> {
    c.run_with_timeout(duet_core::pool::ping(), config.side_limit())
        .await
        .map(drop)
}

/// One caller's turn. Dropped before its answer was taken, it leaves the
/// queue, and a connection already granted goes back.
struct Wait {
    shared: Arc<Shared>,
    waiter: WaiterId,
    rx: Option<oneshot::Receiver<Answer>>,
}

impl Wait {
    fn new(shared: &Arc<Shared>) -> Wait {
        let (tx, rx) = oneshot::channel();
        let mut st = shared.lock();
        let waiter = st.policy.acquire(Instant::now());
        st.answers.insert(waiter, tx);
        shared.carry_out(&mut st);
        Wait {
            shared: shared.clone(),
            waiter,
            rx: Some(rx),
        }
    }

    async fn answer(mut self) -> Answer {
        loop {
            let deadline = self.shared.lock().policy.poll_timeout();
            let rx = self.rx.as_mut().expect("taken only here");
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = rx => {
                    self.rx = None;
                    return r.unwrap_or_else(|_| Err(Error::closed("the pool dropped this caller's turn")));
                }
                () = sleep => {
                    let mut st = self.shared.lock();
                    st.policy.handle_timeout(Instant::now());
                    self.shared.carry_out(&mut st);
                }
            }
        }
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let mut st = self.shared.lock();
        st.answers.remove(&self.waiter);
        st.policy.cancel_wait(self.waiter, Instant::now());
        if let Ok(Ok((conn, _))) = rx.try_recv() {
            let health = Giveback::health(conn.conn.connection());
            st.policy.release(conn, health, Instant::now());
        }
        self.shared.carry_out(&mut st);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Does what the policy asks.
    fn carry_out(self: &Arc<Self>, st: &mut State) {
        while let Some(action) = st.policy.poll_action() {
            match action {
                Action::Open => {
                    let shared = self.clone();
                    self.runtime.spawn(async move {
                        let r = shared.open().await;
                        let mut st = shared.lock();
                        st.policy.opened(r, Instant::now());
                        shared.carry_out(&mut st);
                    });
                }
                Action::Grant { waiter, conn, test } => match st.answers.remove(&waiter) {
                    Some(tx) => {
                        if let Err(Ok((conn, _))) = tx.send(Ok((conn, test))) {
                            // The caller left in the meantime.
                            st.policy.release(conn, Ok(()), Instant::now());
                        }
                    }
                    None => st.policy.release(conn, Ok(()), Instant::now()),
                },
                Action::Fail { waiter, error } => {
                    if let Some(tx) = st.answers.remove(&waiter) {
                        let _ = tx.send(Err(error));
                    }
                }
                Action::Close(c) => {
                    self.runtime.spawn(async move {
                        let _ = c.close().await;
                    });
                }
            }
        }
    }

    async fn open(&self) -> Result<Client, Error> {
        let mut c = Client::connect_config(&self.config).await?;
        if let Some(sql) = &self.after_connect {
            c.batch_execute(sql).await?;
        }
        Ok(c)
    }

    /// A connection given back: lent again only if the core says it is
    /// idle. One with work in flight (a dropped future's) or a transaction
    /// open is brought back to idle in a task of its own (its answers read
    /// and dropped, then a ROLLBACK) — never handed to the next caller as
    /// it is.
    fn give_back(self: &Arc<Self>, mut conn: Pooled<Client>) {
        if Giveback::of(conn.conn.connection()) != Giveback::Reset {
            let health = Giveback::health(conn.conn.connection());
            let mut st = self.lock();
            st.policy.release(conn, health, Instant::now());
            self.carry_out(&mut st);
            return;
        }
        let shared = self.clone();
        self.runtime.spawn(async move {
            let limit = shared.config.side_limit();
            let reset = conn.conn.run_with_timeout(duet_core::pool::reset(), limit).await;
            let health = Giveback::after_reset(reset, conn.conn.connection());
            let mut st = shared.lock();
            st.policy.release(conn, health, Instant::now());
            shared.carry_out(&mut st);
        });
    }
}

/// A connection lent by a [`Pool`]; derefs to a [`Client`]. Given back
/// when dropped.
pub type PooledClient = duet_core::pool::Lent<Client, Pool>;

impl GiveBack<Client> for Pool {
    fn give_back(&self, conn: Pooled<Client>) {
        self.shared.give_back(conn);
    }
}
