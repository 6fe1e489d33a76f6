//! The blocking pool: the core's policy ([`duet_core::pool`]) carried out
//! with a mutex, a condition variable and a thread per connect. Every
//! decision — who is served next, when to open, test, keep or close — is
//! the core's.
//!
//! ```no_run
//! use duet_sync::prelude::*;
//! use duet_sync::pool::{Pool, PoolOptions};
//!
//! let pool = Pool::new("postgres://app@localhost/shop", PoolOptions { max_size: 8, ..Default::default() })?;
//! let mut db = pool.get()?;                       // derefs to a Client
//! let n: i64 = db.query_one("SELECT count(*) FROM users", &[])?.get(0);
//! drop(db);                                        // back to the pool, idle
//! # Ok::<(), duet_sync::Error>(())
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use duet_core::pool::{Action, Discard, GiveBack, Giveback, Pool as Policy, Pooled, WaiterId};
pub use duet_core::pool::{PoolOptions, PoolStatus};

use crate::{Client, Config, Error};

/// A pool of connections, shared by threads (clone it freely).
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    /// Statements run on every new connection (e.g. `SET search_path = app`).
    after_connect: Option<String>,
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    policy: Policy<Client>,
    /// Answers for waiters, taken by the waiting thread.
    answers: HashMap<WaiterId, Result<(Pooled<Client>, bool), Error>>,
}

impl Pool {
    /// A pool for the connection string `params` (read as
    /// [`Client::connect`] reads it).
    pub fn new(params: &str, options: PoolOptions) -> Result<Pool, Error> {
        Ok(Pool::with_config(Config::from_env(params)?, options, None))
    }

    /// A pool for `config`; `after_connect` runs on every new connection
    /// before it is lent.
    pub fn with_config(config: Config, options: PoolOptions, after_connect: Option<String>) -> Pool {
        let pool = Pool {
            shared: Arc::new(Shared {
                config,
                after_connect,
                state: Mutex::new(State {
                    policy: Policy::new(options, Instant::now()),
                    answers: HashMap::new(),
                }),
                changed: Condvar::new(),
            }),
        };
        let mut st = pool.shared.lock();
        pool.shared.carry_out(&mut st);
        drop(st);
        let weak = Arc::downgrade(&pool.shared);
        std::thread::spawn(move || maintain(weak));
        pool
    }

    /// A connection, in the order callers asked, within `acquire_timeout`.
    pub fn get(&self) -> Result<PooledClient, Error> {
        let shared = &self.shared;
        loop {
            let mut st = shared.lock();
            let waiter = st.policy.acquire(Instant::now());
            shared.carry_out(&mut st);
            let answer = loop {
                if let Some(a) = st.answers.remove(&waiter) {
                    break a;
                }
                st = match st.policy.poll_timeout() {
                    Some(t) => {
                        let wait = t.saturating_duration_since(Instant::now());
                        shared
                            .changed
                            .wait_timeout(st, wait)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                    None => shared.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
                };
                st.policy.handle_timeout(Instant::now());
                shared.carry_out(&mut st);
            };
            drop(st);
            let (mut conn, test) = answer?;
            let alive = if test {
                ping(&mut conn.conn, &shared.config)
            } else {
                Ok(())
            };
            if let Err(e) = alive {
                // Dead while idle (a restart, pg_terminate_backend): dropped,
                // and this caller asks again.
                let mut st = shared.lock();
                st.policy.release(conn, Err(Discard::TestFailed(e)), Instant::now());
                shared.carry_out(&mut st);
                continue;
            }
            return Ok(PooledClient::new(conn, self.clone()));
        }
    }

    /// Runs `op` on a connection from the pool.
    pub fn run<O: duet_core::Operation>(&self, op: O) -> Result<O::Output, Error> {
        self.get()?.run(op)
    }

    /// Runs `op` in a transaction on a connection from the pool.
    pub fn atomic<O: duet_core::Operation>(&self, op: O) -> Result<O::Output, Error> {
        self.get()?.transaction(op)
    }

    pub fn status(&self) -> PoolStatus {
        self.shared.lock().policy.status()
    }
}

/// Applies the idle and lifetime limits and `min_idle` while nobody uses
/// the pool: sleeps until the policy's next deadline (at most a second, so
/// the thread ends soon after the pool is dropped).
fn maintain(shared: std::sync::Weak<Shared>) {
    while let Some(shared) = shared.upgrade() {
        let mut st = shared.lock();
        let limit = Instant::now() + std::time::Duration::from_secs(1);
        let until = st.policy.poll_timeout().map_or(limit, |t| t.min(limit));
        let wait = until.saturating_duration_since(Instant::now());
        st = shared
            .changed
            .wait_timeout(st, wait)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        st.policy.handle_timeout(Instant::now());
        shared.carry_out(&mut st);
    }
}

/// A round trip with a short limit: is the idle connection still alive?
fn ping(c: &mut Client, config: &Config) -> Result<(), Error> {
    c.run_with_timeout(duet_core::pool::ping(), config.side_limit())
        .map(drop)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Does what the policy asks; wakes the waiters when anything changed.
    fn carry_out(self: &Arc<Self>, st: &mut State) {
        let mut changed = false;
        while let Some(action) = st.policy.poll_action() {
            changed = true;
            match action {
                Action::Open => {
                    let shared = self.clone();
                    std::thread::spawn(move || {
                        let r = shared.open();
                        let mut st = shared.lock();
                        st.policy.opened(r, Instant::now());
                        shared.carry_out(&mut st);
                    });
                }
                Action::Grant { waiter, conn, test } => {
                    st.answers.insert(waiter, Ok((conn, test)));
                }
                Action::Fail { waiter, error } => {
                    st.answers.insert(waiter, Err(error));
                }
                Action::Close(c) => {
                    std::thread::spawn(move || {
                        let _ = c.close();
                    });
                }
            }
        }
        if changed {
            self.changed.notify_all();
        }
    }

    fn open(&self) -> Result<Client, Error> {
        let mut c = Client::connect_config(&self.config)?;
        if let Some(sql) = &self.after_connect {
            c.batch_execute(sql)?;
        }
        Ok(c)
    }

    /// A connection given back: lent again only if the core says it is
    /// idle. One with work in flight or a transaction open is brought back
    /// to idle on a thread of its own (its answers read and dropped, then a
    /// ROLLBACK) — never handed to the next caller as it is.
    fn give_back(self: &Arc<Self>, mut conn: Pooled<Client>) {
        if Giveback::of(conn.conn.connection()) != Giveback::Reset {
            let health = Giveback::health(conn.conn.connection());
            let mut st = self.lock();
            st.policy.release(conn, health, Instant::now());
            self.carry_out(&mut st);
            return;
        }
        let shared = self.clone();
        std::thread::spawn(move || {
            let limit = shared.config.side_limit();
            let reset = conn.conn.run_with_timeout(duet_core::pool::reset(), limit);
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
