//! duet for applications that standardise on deadpool (feature
//! `deadpool`): a `Manager` with duet's health rule. A connection given
//! back busy (a dropped future, a transaction left open) is brought back to
//! idle when deadpool next recycles it — its answers read, then a ROLLBACK —
//! and kept only if the core then finds it idle; an idle one is checked
//! with a round trip (duet's `test_before_acquire`); a closed one is
//! discarded.
//!
//! ```no_run
//! use duet_async::deadpool::{Manager, Pool};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = Manager::new("postgres://app@localhost/shop")?;
//! let pool = Pool::builder(manager).max_size(8).build()?;
//! let mut db = pool.get().await?;                  // derefs to a Client
//! let n: i64 = db.query_one("SELECT count(*) FROM users", &[]).await?.get(0);
//! # Ok(()) }
//! ```

pub use ::deadpool;

use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use duet_core::pool::{Discard, Giveback};

use crate::{Client, Config, Error};

/// A deadpool pool of duet connections.
pub type Pool = deadpool::managed::Pool<Manager>;

/// Opens and recycles duet connections for a `deadpool::managed::Pool`.
#[derive(Debug, Clone)]
pub struct Manager {
    config: Config,
    after_connect: Option<String>,
}

impl Manager {
    /// For the connection string `params`, read as [`Client::connect`]
    /// reads it.
    pub fn new(params: &str) -> Result<Manager, Error> {
        Ok(Manager::with_config(Config::from_env(params)?))
    }

    pub fn with_config(config: Config) -> Manager {
        Manager {
            config,
            after_connect: None,
        }
    }

    /// Statements run on every new connection (e.g. `SET search_path = app`).
    pub fn after_connect(mut self, sql: impl Into<String>) -> Manager {
        self.after_connect = Some(sql.into());
        self
    }
}

impl deadpool::managed::Manager for Manager {
    type Type = Client;
    type Error = Error;

    async fn create(&self) -> Result<Client, Error> {
        let mut c = Client::connect_config(&self.config).await?;
        if let Some(sql) = &self.after_connect {
            c.batch_execute(sql).await?;
        }
        Ok(c)
    }

    async fn recycle(&self, conn: &mut Client, _: &Metrics) -> RecycleResult<Error> {
        let limit = self.config.side_limit();
        let health = match Giveback::of(conn.connection()) {
            Giveback::Lend => conn
                .run_with_timeout(duet_core::pool::ping(), limit)
                .await
                .map(drop)
                .map_err(Discard::TestFailed),
            Giveback::Reset => {
                let reset = conn.run_with_timeout(duet_core::pool::reset(), limit).await;
                Giveback::after_reset(reset, conn.connection())
            }
            Giveback::Drop => Giveback::health(conn.connection()),
        };
        health.map_err(|why| RecycleError::Message(why.to_string().into()))
    }
}
