//! The pool's policy, written once: which waiter gets which connection,
//! when to open, test, keep or close one. Like the protocol machine it does
//! no I/O and reads no clock — time comes in as a parameter — so the
//! blocking driver (threads and a condition variable) and the tokio one
//! (tasks) only carry out what it says, and behave the same.
//!
//! A driver's adaptor:
//! - calls [`Pool::acquire`] for each caller, which becomes a waiter (served
//!   in order), then carries out [`Pool::poll_action`]s: [`Action::Open`]
//!   (open a connection, report it with [`Pool::opened`]), [`Action::Grant`]
//!   (hand that connection to that waiter, after a check when `test` says
//!   so), [`Action::Fail`] (that waiter's acquire failed), [`Action::Close`]
//!   (close that connection, which the pool no longer counts);
//! - gives every connection back with [`Pool::release`], saying whether the
//!   core found it idle (`Connection::is_idle`: last ReadyForQuery idle,
//!   nothing in flight) — only then is it lent again;
//! - sleeps until [`Pool::poll_timeout`] and then calls
//!   [`Pool::handle_timeout`] (waiters' deadlines, idle and lifetime limits,
//!   connect back-off).
//!
//! Connections being opened are not promised to anyone: whichever
//! connection becomes available first — opened, or given back — goes to
//! the oldest waiter. So a slow or failing connect never holds up a waiter
//! that a returned connection could serve.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::connection::deadline_after;
use crate::ops::{simple_query, Operation, Single, Step};
use crate::row::SimpleMessage;
use crate::{trace, Connection, Error};

/// What a connection given back needs before it may be lent again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Giveback {
    /// Idle (last ReadyForQuery idle, nothing in flight): lend it again.
    Lend,
    /// Work in flight or a transaction open: run [`reset`] on it first
    /// (in the background), then ask again with [`Giveback::after_reset`].
    Reset,
    /// Closed or failed: drop it.
    Drop,
}

impl Giveback {
    pub fn of(conn: &Connection) -> Giveback {
        if conn.is_idle() {
            Giveback::Lend
        } else if conn.closed_reason().is_some() {
            Giveback::Drop
        } else {
            Giveback::Reset
        }
    }

    /// What [`Pool::release`] is told of a connection whose giveback is
    /// not [`Giveback::Reset`].
    pub fn health(conn: &Connection) -> Result<(), Discard> {
        match Giveback::of(conn) {
            Giveback::Lend => Ok(()),
            Giveback::Reset => Err(Discard::NotIdle),
            Giveback::Drop => Err(Discard::Closed(
                conn.closed_reason()
                    .cloned()
                    .unwrap_or_else(|| Error::closed("the connection closed")),
            )),
        }
    }

    /// What [`Pool::release`] is told of a connection after [`reset`] ran
    /// on it with `result`.
    pub fn after_reset<T>(result: Result<T, Error>, conn: &Connection) -> Result<(), Discard> {
        match result {
            Err(e) => Err(Discard::ResetFailed(e)),
            Ok(_) => Giveback::health(conn),
        }
    }
}

/// Why a lent connection is not lent again (told to [`Pool::release`],
/// and to operators through the `duet::pool` trace).
#[derive(Debug, Clone)]
pub enum Discard {
    /// The connection closed or failed while lent.
    Closed(Error),
    /// Bringing it back to idle failed.
    ResetFailed(Error),
    /// Still busy after a reset.
    NotIdle,
    /// The check before lending (`test_before_acquire`) failed: it died
    /// while idle.
    TestFailed(Error),
}

impl std::fmt::Display for Discard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Discard::Closed(e) => write!(f, "closed while lent: {e}"),
            Discard::ResetFailed(e) => write!(f, "reset failed: {e}"),
            Discard::NotIdle => f.write_str("still busy after a reset"),
            Discard::TestFailed(e) => write!(f, "dead while idle (test before acquire): {e}"),
        }
    }
}

/// Brings a busy connection back to idle: asks the server to stop work
/// abandoned in flight (a dropped future's long statement is not waited
/// out), reads and drops its answers, then rolls back a transaction left
/// open (a harmless warning when none is).
pub fn reset() -> Reset {
    Reset {
        rollback: simple_query("ROLLBACK", None),
        cancelled: false,
    }
}

/// See [`reset`].
pub struct Reset {
    rollback: Single<'static, Vec<SimpleMessage>>,
    cancelled: bool,
}

impl Operation for Reset {
    type Output = Vec<SimpleMessage>;

    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<Self::Output> {
        if !std::mem::replace(&mut self.cancelled, true) {
            conn.cancel_abandoned(now);
        }
        self.rollback.poll(conn, now)
    }

    fn abandon(&mut self, conn: &mut Connection) {
        self.rollback.abandon(conn);
    }
}

/// The round trip that shows an idle connection is still alive
/// (`test_before_acquire`): an empty query.
pub fn ping() -> Single<'static, Vec<SimpleMessage>> {
    simple_query("", None)
}

/// The pool's limits, with the names sqlx and deadpool users know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOptions {
    /// Connections at most, lent, idle and being opened together.
    pub max_size: usize,
    /// Idle connections kept open (opened ahead when fewer).
    pub min_idle: usize,
    /// How long an acquire waits before it fails; `None`: for ever.
    pub acquire_timeout: Option<Duration>,
    /// An idle connection beyond `min_idle` is closed after this long.
    pub idle_timeout: Option<Duration>,
    /// A connection is closed (when next idle) once this old.
    pub max_lifetime: Option<Duration>,
    /// Check an idle connection with a round trip before lending it (a
    /// server restart or `pg_terminate_backend` kills idle connections
    /// silently).
    pub test_before_acquire: bool,
}

impl Default for PoolOptions {
    fn default() -> PoolOptions {
        PoolOptions {
            max_size: 10,
            min_idle: 0,
            acquire_timeout: Some(Duration::from_secs(30)),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            test_before_acquire: true,
        }
    }
}

/// One caller waiting in [`Pool::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WaiterId(u64);

impl WaiterId {
    /// Callers are numbered from 0 in the order they asked.
    pub fn index(self) -> u64 {
        self.0
    }
}

/// A connection the pool counts, with what it knows of it.
#[derive(Debug)]
pub struct Pooled<T> {
    pub conn: T,
    created: Instant,
}

impl<T> Pooled<T> {
    /// When it was opened.
    pub fn created(&self) -> Instant {
        self.created
    }
}

/// What the adaptor must do next.
#[derive(Debug)]
pub enum Action<T> {
    /// Open a new connection and report it with [`Pool::opened`].
    Open,
    /// Lend `conn` to `waiter`. With `test`, check it first (a round trip);
    /// if that fails, [`Pool::release`] it as not reusable and
    /// [`Pool::acquire`] again for the same caller.
    Grant {
        waiter: WaiterId,
        conn: Pooled<T>,
        test: bool,
    },
    /// `waiter`'s acquire failed.
    Fail { waiter: WaiterId, error: Error },
    /// Close this connection: idle too long, too old. No longer counted.
    Close(T),
}

/// Counts, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStatus {
    /// Connections counted: lent, idle and being opened.
    pub size: usize,
    pub idle: usize,
    pub opening: usize,
    pub waiting: usize,
}

/// The first pause after a failed connect; doubled after each failure in a
/// row, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

struct Waiter {
    id: WaiterId,
    asked: Instant,
    deadline: Option<Instant>,
}

/// The pool's state. `T` is the driver's connection.
pub struct Pool<T> {
    opts: PoolOptions,
    /// Idle connections, most recently returned last (lent from the back,
    /// so the extra ones age and are closed by `idle_timeout`).
    idle: Vec<(Pooled<T>, Instant)>,
    waiters: VecDeque<Waiter>,
    /// Lent, idle and opening.
    size: usize,
    opening: usize,
    actions: VecDeque<Action<T>>,
    next_waiter: u64,
    /// No connect is started before this (after failures).
    backoff_until: Option<Instant>,
    backoff: Duration,
    last_connect_error: Option<Error>,
}

impl<T> Pool<T> {
    /// A pool with `opts`; `min_idle` connections are asked for at once.
    pub fn new(opts: PoolOptions, now: Instant) -> Pool<T> {
        let mut p = Pool {
            opts,
            idle: Vec::new(),
            waiters: VecDeque::new(),
            size: 0,
            opening: 0,
            actions: VecDeque::new(),
            next_waiter: 0,
            backoff_until: None,
            backoff: FIRST_BACKOFF,
            last_connect_error: None,
        };
        p.serve(now);
        p
    }

    pub fn options(&self) -> &PoolOptions {
        &self.opts
    }

    pub fn status(&self) -> PoolStatus {
        PoolStatus {
            size: self.size,
            idle: self.idle.len(),
            opening: self.opening,
            waiting: self.waiters.len(),
        }
    }

    /// A caller wants a connection: it waits its turn (the answer comes as
    /// an [`Action::Grant`] or [`Action::Fail`] for the returned id).
    pub fn acquire(&mut self, now: Instant) -> WaiterId {
        let id = WaiterId(self.next_waiter);
        self.next_waiter += 1;
        let deadline = self.opts.acquire_timeout.and_then(|t| deadline_after(now, t));
        self.waiters.push_back(Waiter {
            id,
            asked: now,
            deadline,
        });
        self.serve(now);
        id
    }

    /// The caller stopped waiting (a dropped future). A grant made to it and
    /// not yet taken from [`Pool::poll_action`] goes back to the pool; one
    /// already taken, the adaptor gives back with [`Pool::release`].
    pub fn cancel_wait(&mut self, waiter: WaiterId, now: Instant) {
        self.waiters.retain(|w| w.id != waiter);
        if let Some(i) = self
            .actions
            .iter()
            .position(|a| matches!(a, Action::Grant { waiter: w, .. } if *w == waiter))
        {
            if let Some(Action::Grant { conn, .. }) = self.actions.remove(i) {
                self.idle.push((conn, now));
            }
        }
        self.serve(now);
    }

    /// A lent connection comes back. `health` is `Ok` when the core found
    /// it idle (its last ReadyForQuery said idle and nothing is in flight)
    /// and it did not fail (see [`Giveback::health`]). Anything else is
    /// dropped by the adaptor and no longer counted; a waiter then gets a
    /// new connection.
    pub fn release(&mut self, conn: Pooled<T>, health: Result<(), Discard>, now: Instant) {
        if let Err(why) = health {
            trace::discarded(&why);
            self.size -= 1;
            drop(conn);
        } else if self.too_old(&conn, now) {
            self.close(conn.conn, "max_lifetime");
        } else {
            self.idle.push((conn, now));
        }
        self.serve(now);
    }

    /// An [`Action::Open`] finished.
    pub fn opened(&mut self, result: Result<T, Error>, now: Instant) {
        self.opening -= 1;
        match result {
            Ok(conn) => {
                self.backoff = FIRST_BACKOFF;
                self.backoff_until = None;
                self.last_connect_error = None;
                self.idle.push((Pooled { conn, created: now }, now));
                trace::opened(self.size);
            }
            Err(e) => {
                self.size -= 1;
                trace::connect_failed(&e, self.backoff);
                if self.size == 0 {
                    // Nothing lent could come back to serve the waiters:
                    // they learn now why there is no connection.
                    for w in std::mem::take(&mut self.waiters) {
                        self.fail(w, e.clone(), now);
                    }
                }
                self.backoff_until = deadline_after(now, self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                self.last_connect_error = Some(e);
            }
        }
        self.serve(now);
    }

    /// The next thing to do, in order.
    pub fn poll_action(&mut self) -> Option<Action<T>> {
        self.actions.pop_front()
    }

    /// When [`Pool::handle_timeout`] has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.waiters.iter().filter_map(|w| w.deadline).min();
        let mut at = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t: Instant| t.min(x)));
            }
        };
        if !self.waiters.is_empty() || self.idle.len() < self.opts.min_idle {
            at(self.backoff_until);
        }
        for (c, since) in &self.idle {
            at(self.opts.max_lifetime.and_then(|l| deadline_after(c.created, l)));
            at(self.opts.idle_timeout.and_then(|l| deadline_after(*since, l)));
        }
        t
    }

    /// Time has passed: waiters past their deadline fail, idle connections
    /// past their limits close, a back-off that ended lets connects start.
    pub fn handle_timeout(&mut self, now: Instant) {
        let past = |w: &Waiter| w.deadline.is_some_and(|d| d <= now);
        if self.waiters.iter().any(past) {
            let (expired, waiting): (VecDeque<_>, _) = std::mem::take(&mut self.waiters).into_iter().partition(past);
            self.waiters = waiting;
            let why = match &self.last_connect_error {
                Some(e) => format!("; the last connect failed: {e}"),
                None => String::new(),
            };
            let error = Error::PoolTimeout(
                format!(
                    "no connection within acquire_timeout ({} of {} lent, {} being opened){why}",
                    self.size - self.idle.len() - self.opening,
                    self.opts.max_size,
                    self.opening
                )
                .into(),
            );
            for w in expired {
                self.fail(w, error.clone(), now);
            }
        }
        if self.backoff_until.is_some_and(|b| b <= now) {
            self.backoff_until = None;
        }
        let mut i = 0;
        while i < self.idle.len() {
            let (c, since) = &self.idle[i];
            let idle_too_long = self.idle.len() > self.opts.min_idle
                && self
                    .opts
                    .idle_timeout
                    .is_some_and(|l| deadline_after(*since, l).is_some_and(|d| d <= now));
            let why = if self.too_old(c, now) {
                "max_lifetime"
            } else if idle_too_long {
                "idle_timeout"
            } else {
                i += 1;
                continue;
            };
            let (c, _) = self.idle.remove(i);
            self.close(c.conn, why);
        }
        self.serve(now);
    }

    /// Closes a connection the pool counted.
    fn close(&mut self, conn: T, why: &'static str) {
        trace::closed(why);
        self.size -= 1;
        self.actions.push_back(Action::Close(conn));
    }

    fn fail(&mut self, w: Waiter, error: Error, now: Instant) {
        trace::acquire_failed(now.saturating_duration_since(w.asked), &error);
        self.actions.push_back(Action::Fail { waiter: w.id, error });
    }

    fn too_old(&self, c: &Pooled<T>, now: Instant) -> bool {
        self.opts
            .max_lifetime
            .is_some_and(|l| deadline_after(c.created, l).is_some_and(|d| d <= now))
    }

    /// Gives idle connections to the oldest waiters, then starts the
    /// connects still needed (for waiters no opening connect will serve,
    /// and for `min_idle`) within `max_size`, unless backing off.
    fn serve(&mut self, now: Instant) {
        while !self.waiters.is_empty() {
            let Some((conn, _)) = self.idle.pop() else { break };
            if self.too_old(&conn, now) {
                self.close(conn.conn, "max_lifetime");
                continue;
            }
            let w = self.waiters.pop_front().expect("not empty");
            trace::lent(now.saturating_duration_since(w.asked));
            self.actions.push_back(Action::Grant {
                waiter: w.id,
                conn,
                test: self.opts.test_before_acquire,
            });
        }
        if self.backoff_until.is_some_and(|b| b > now) {
            return;
        }
        // Connects under way serve waiters first; the rest will be idle.
        let spare_opening = self.opening.saturating_sub(self.waiters.len());
        let for_waiters = self.waiters.len().saturating_sub(self.opening);
        let for_min_idle = self.opts.min_idle.saturating_sub(self.idle.len() + spare_opening);
        let wanted = for_waiters + for_min_idle;
        let room = self.opts.max_size.saturating_sub(self.size);
        for _ in 0..wanted.min(room) {
            self.size += 1;
            self.opening += 1;
            self.actions.push_back(Action::Open);
        }
    }
}

/// Where a lent connection goes back when its guard drops: the driver's
/// pool.
pub trait GiveBack<C> {
    fn give_back(&self, conn: Pooled<C>);
}

/// A connection lent by a pool; derefs to the driver's client and goes back
/// to `P` when dropped.
pub struct Lent<C, P: GiveBack<C>> {
    conn: Option<Pooled<C>>,
    pool: P,
}

impl<C, P: GiveBack<C>> Lent<C, P> {
    pub fn new(conn: Pooled<C>, pool: P) -> Lent<C, P> {
        Lent { conn: Some(conn), pool }
    }
}

impl<C, P: GiveBack<C>> std::ops::Deref for Lent<C, P> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.conn.as_ref().expect("held until drop").conn
    }
}

impl<C, P: GiveBack<C>> std::ops::DerefMut for Lent<C, P> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.conn.as_mut().expect("held until drop").conn
    }
}

impl<C, P: GiveBack<C>> Drop for Lent<C, P> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn);
        }
    }
}
