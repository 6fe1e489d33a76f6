//! # duet-core
//!
//! The whole of duet that is not I/O: the PostgreSQL protocol state machine
//! ([`Connection`]) and the operations built on it ([`ops`]). It never
//! touches a socket or reads a clock: drivers feed it bytes and the current
//! time, and send what it asks them to send. `duet-sync` and `duet-async`
//! are two such drivers; they share everything here.
//!
//! ```
//! use std::time::Instant;
//! use duet_core::{Config, Connection};
//!
//! // A driver passes in the time it read; the core never reads a clock.
//! fn open(now: Instant) -> Connection {
//!     Connection::new(&Config::parse("postgres://app@localhost/db").unwrap(), now)
//! }
//! # let mut conn = open(Instant::now());
//! // sslmode=prefer (libpq's default): an SSLRequest is ready to write.
//! assert_eq!(conn.poll_transmit(), [0, 0, 0, 8, 4, 210, 22, 47]);
//! assert!(conn.wants_input());
//! ```

// The derive's generated code names `::duet_core`, also inside this crate.
extern crate self as duet_core;

mod cache;
mod client_api;
pub mod config;
mod connect;
mod connection;
pub mod copy;
mod error;
pub mod listen;
pub mod migrate;
pub mod ops;
pub mod orm;
pub mod params;
pub mod pool;
mod row;
mod tls;
mod trace;

pub use config::{
    ChannelBindingMode, Config, Endpoint, Host, LoadBalanceHosts, ProtocolVersion, SslMode, SslNegotiation,
    TargetSessionAttrs, CLOSE_LIMIT,
};
pub use connect::{Attempt, Connector};
pub use connection::{
    deadline_after, CancelRequest, Connection, Event, Interest, Portal, QueryResult, Request, Response, SecretKey,
    Statement, Ticket, TransactionStatus, TxOutcome,
};
/// `migrations!("folder")`: a folder of migrations embedded at compile
/// time (see [`migrate`]).
pub use duet_derive::migrations;
/// `#[derive(FromRow)]`: see the [`FromRow`] trait.
pub use duet_derive::FromRow;
pub use error::{sqlstate, DbError, Error};
pub use ops::{Operation, Step};
pub use orm::Model;
pub use params::{Param, ParamSource};
pub use row::{type_from_oid, Column, FromRow, Row, RowCursor, RowIndex, SimpleMessage, SimpleRow};

/// What an application needs from the core; each driver's `prelude`
/// re-exports this beside its own `Client`.
pub mod prelude {
    pub use crate::ops::{atomic, pipeline, prepare, query, retry, simple_query, IsolationLevel, TxOptions};
    pub use crate::orm::prelude::*;
    pub use crate::{
        Config, Error, Event, FromRow, FromSql, Operation, Param, Row, Statement, ToSql, TransactionStatus, Type,
    };
}

/// Re-exported so applications and drivers name the same types.
pub use postgres_types as types;
pub use postgres_types::{FromSql, ToSql, Type};
