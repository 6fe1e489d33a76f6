//! duet for applications that standardise on r2d2 (feature `r2d2`): a
//! `ManageConnection` with duet's health rule — a connection given back is
//! kept only when the core finds it idle (last ReadyForQuery idle, nothing
//! in flight); anything else is discarded, closing it makes the server
//! roll back whatever it held, and a statement it left running is
//! cancelled. (duet's own [`crate::pool`] brings such a
//! connection back to idle in the background and keeps it; r2d2 asks for a
//! verdict at once, without blocking.)
//!
//! ```no_run
//! use duet_sync::r2d2::{ConnectionManager, Pool};
//!
//! let manager = ConnectionManager::new("postgres://app@localhost/shop")?;
//! let pool = Pool::builder().max_size(8).build(manager).expect("pool");
//! let mut db = pool.get().expect("a connection");   // derefs to a Client
//! let n: i64 = db.query_one("SELECT count(*) FROM users", &[])?.get(0);
//! # Ok::<(), duet_sync::Error>(())
//! ```

pub use ::r2d2;

use duet_core::pool::Giveback;

use crate::{Client, Config, Error};

/// An r2d2 pool of duet connections.
pub type Pool = r2d2::Pool<ConnectionManager>;

/// Opens, checks and judges duet connections for an `r2d2::Pool`.
#[derive(Debug, Clone)]
pub struct ConnectionManager {
    config: Config,
    after_connect: Option<String>,
}

impl ConnectionManager {
    /// For the connection string `params`, read as [`Client::connect`]
    /// reads it.
    pub fn new(params: &str) -> Result<ConnectionManager, Error> {
        Ok(ConnectionManager::with_config(Config::from_env(params)?))
    }

    pub fn with_config(config: Config) -> ConnectionManager {
        ConnectionManager {
            config,
            after_connect: None,
        }
    }

    /// Statements run on every new connection (e.g. `SET search_path = app`).
    pub fn after_connect(mut self, sql: impl Into<String>) -> ConnectionManager {
        self.after_connect = Some(sql.into());
        self
    }
}

impl r2d2::ManageConnection for ConnectionManager {
    type Connection = Client;
    type Error = Error;

    fn connect(&self) -> Result<Client, Error> {
        let mut c = Client::connect_config(&self.config)?;
        if let Some(sql) = &self.after_connect {
            c.batch_execute(sql)?;
        }
        Ok(c)
    }

    /// r2d2's `test_on_check_out`: the same round trip as duet's
    /// `test_before_acquire`.
    fn is_valid(&self, conn: &mut Client) -> Result<(), Error> {
        conn.run_with_timeout(duet_core::pool::ping(), self.config.side_limit())
            .map(drop)
    }

    fn has_broken(&self, conn: &mut Client) -> bool {
        if Giveback::of(conn.connection()) == Giveback::Lend {
            return false;
        }
        if conn.connection().in_flight() > 0 {
            // Work abandoned in flight would run on to its end on the server
            // after the connection closes: cancelled from the side, without
            // holding up the caller. Nothing else will run on that session.
            if let Some(token) = conn.cancel_token() {
                std::thread::spawn(move || token.cancel());
            }
        }
        true
    }
}
