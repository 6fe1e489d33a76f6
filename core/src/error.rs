//! The three kinds of error kept apart: the server's ([`DbError`], the
//! connection lives on), the wire's or the peer's (fatal, the connection is
//! closed), and the caller's misuse.

use std::fmt;
use std::sync::Arc;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorFields, ErrorResponseBody, NoticeResponseBody};

/// An `ErrorResponse` (or a `NoticeResponse`) from the server, every field kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DbError {
    /// `ERROR`, `FATAL`, `PANIC`, `WARNING`, `NOTICE`, … (localized `S` field if `V` is absent).
    pub severity: String,
    /// The five-character SQLSTATE, e.g. `23505` for a unique violation.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// 1-based character position in the query text.
    pub position: Option<u32>,
    pub where_: Option<String>,
    pub schema: Option<String>,
    pub table: Option<String>,
    pub column: Option<String>,
    pub datatype: Option<String>,
    pub constraint: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub routine: Option<String>,
}

impl DbError {
    pub(crate) fn parse(body: &ErrorResponseBody) -> Result<DbError, Error> {
        Self::from_fields(body.fields())
    }

    pub(crate) fn parse_notice(body: &NoticeResponseBody) -> Result<DbError, Error> {
        Self::from_fields(body.fields())
    }

    fn from_fields(mut fields: ErrorFields<'_>) -> Result<DbError, Error> {
        let mut e = DbError::default();
        let mut localized_severity = None;
        while let Some(f) = fields
            .next()
            .map_err(|err| Error::protocol(format!("malformed error fields: {err}")))?
        {
            let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
            match f.type_() {
                b'S' => localized_severity = Some(value),
                b'V' => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                b'P' => e.position = value.parse().ok(),
                b'W' => e.where_ = Some(value),
                b's' => e.schema = Some(value),
                b't' => e.table = Some(value),
                b'c' => e.column = Some(value),
                b'd' => e.datatype = Some(value),
                b'n' => e.constraint = Some(value),
                b'F' => e.file = Some(value),
                b'L' => e.line = value.parse().ok(),
                b'R' => e.routine = Some(value),
                _ => {}
            }
        }
        if e.severity.is_empty() {
            e.severity = localized_severity.unwrap_or_default();
        }
        Ok(e)
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for DbError {}

/// Every error duet reports. Cheap to clone, so one fatal error can be handed
/// to every request that was in flight when it happened.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The server refused the statement. The connection is still usable.
    Db(Box<DbError>),
    /// An earlier statement in the same pipeline (sync group) failed, so the
    /// server skipped this one. The connection is still usable.
    Skipped,
    /// The statement wrote, but a later statement of the same pipeline
    /// failed in the same (implicit) transaction, so the server undid the
    /// write. Reads keep their rows. The connection is still usable.
    RolledBack,
    /// The request's deadline passed; the server was asked to cancel it.
    /// The connection is still usable unless the server did not answer.
    Timeout,
    /// The connection is closed; the text says why. Fatal.
    Closed(Arc<str>),
    /// The server sent bytes that break the protocol. Fatal.
    Protocol(Arc<str>),
    /// Authentication could not proceed (unsupported method, missing
    /// password, bad server signature). Fatal.
    Auth(Arc<str>),
    /// A socket error reported by a driver. Fatal.
    Io(Arc<std::io::Error>),
    /// The driver could not open the socket. `target` says where it tried
    /// (`127.0.0.1:5432`, `[::1]:5432`, `the Unix socket /tmp/.s.PGSQL.5432`);
    /// `source` is the operating system's error, also given by `source()`.
    /// Fatal: there is no connection.
    Connect {
        target: Arc<str>,
        source: Arc<std::io::Error>,
    },
    /// TLS could not be set up or failed: the handshake, the server's
    /// certificate (named as `sslmode` judges it), or the records. Fatal.
    Tls(Arc<str>),
    /// The session was opened but is not one the configuration accepts
    /// (`target_session_attrs`, or a server that refused TLS or channel
    /// binding that was required); the text says why. Fatal: it is closed.
    Rejected(Arc<str>),
    /// No server of the list gave an acceptable session: each one tried,
    /// and why it failed, in the order tried. Fatal.
    Unreachable(Arc<[(Arc<str>, Error)]>),
    /// A pool had no connection for the caller within `acquire_timeout`;
    /// the text gives the pool's counts and the last connect error.
    PoolTimeout(Arc<str>),
    /// A parameter could not be encoded; nothing was sent.
    Encode(Arc<str>),
    /// A column could not be decoded into the requested Rust type.
    Decode(Arc<str>),
    /// A connection string or option is invalid.
    Config(Arc<str>),
    /// The API was used in a way that cannot work (named in the text).
    Misuse(Arc<str>),
    /// `query_one`/`get`: the query returned no row.
    NoRows,
    /// `query_one`/`get`: the query returned more than one row.
    TooManyRows(usize),
    /// An ORM `get` found no row; the text names the model.
    NotFound(Arc<str>),
    /// An ORM `get` found several rows; the model and how many.
    MultipleFound(Arc<str>, usize),
    /// A model hook or the ORM rejected a value before anything was sent.
    Invalid(Arc<str>),
    /// The connection was lost after the transaction's `COMMIT` left, and
    /// what became of it could not be found out: it may have committed or
    /// not. Carries the transaction id when it was known (look it up later
    /// with `SELECT txid_status(id)`). Never a plain [`Error::Closed`],
    /// which would hide a commit. Fatal.
    InDoubt(Option<i64>),
    /// The transaction committed (its id, looked up on a new connection,
    /// says so), but the connection was lost before all of its results
    /// arrived, so there is no output to return. Fatal.
    CommittedWithoutResult(i64),
}

impl Error {
    pub(crate) fn protocol(msg: impl Into<String>) -> Error {
        Error::Protocol(msg.into().into())
    }
    pub fn closed(msg: impl Into<String>) -> Error {
        Error::Closed(msg.into().into())
    }
    pub(crate) fn misuse(msg: impl Into<String>) -> Error {
        Error::Misuse(msg.into().into())
    }
    pub(crate) fn auth(msg: impl Into<String>) -> Error {
        Error::Auth(msg.into().into())
    }
    /// A `Config` error, for the connection-string parser and drivers.
    pub fn config(msg: impl Into<String>) -> Error {
        Error::Config(msg.into().into())
    }
    /// An [`Error::Invalid`], for model hooks that reject a write.
    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::Invalid(msg.into().into())
    }
    pub(crate) fn encode(msg: impl Into<String>) -> Error {
        Error::Encode(msg.into().into())
    }
    pub(crate) fn decode(msg: impl Into<String>) -> Error {
        Error::Decode(msg.into().into())
    }

    /// The server's error, if this is one.
    pub fn as_db_error(&self) -> Option<&DbError> {
        match self {
            Error::Db(e) => Some(e),
            _ => None,
        }
    }

    /// The SQLSTATE of a server error (`"23505"`, `"57014"`, …).
    pub fn code(&self) -> Option<&str> {
        self.as_db_error().map(|e| e.code.as_str())
    }

    /// The OID of a type the server no longer has, when this error says a
    /// statement named one ("cache lookup failed for type N", XX000): a
    /// type dropped (and perhaps created again under a new OID) after the
    /// session learnt it. The server's message is read, so this holds for
    /// English messages (`lc_messages`) only.
    pub fn dropped_type(&self) -> Option<u32> {
        let db = self.as_db_error()?;
        if db.code != sqlstate::INTERNAL_ERROR {
            return None;
        }
        db.message
            .strip_prefix("cache lookup failed for type ")?
            .trim()
            .parse()
            .ok()
    }

    /// True when the connection can no longer be used after this error.
    pub fn is_fatal(&self) -> bool {
        match self {
            Error::Closed(_)
            | Error::Protocol(_)
            | Error::Auth(_)
            | Error::Io(_)
            | Error::Connect { .. }
            | Error::Tls(_)
            | Error::Rejected(_)
            | Error::Unreachable(_)
            | Error::InDoubt(_)
            | Error::CommittedWithoutResult(_) => true,
            // FATAL/PANIC from the server end the session (e.g. 57P01, 28P01).
            Error::Db(e) => e.severity == "FATAL" || e.severity == "PANIC",
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Db(e) => write!(f, "database error: {e}"),
            Error::Skipped => f.write_str("skipped: an earlier statement in this pipeline failed"),
            Error::RolledBack => {
                f.write_str("rolled back: a later statement in this pipeline failed, which undid this one's work")
            }
            Error::Timeout => f.write_str("timed out: the request's deadline passed and it was cancelled"),
            Error::Closed(m) => write!(f, "connection closed: {m}"),
            Error::Protocol(m) => write!(f, "protocol error: {m}"),
            Error::Auth(m) => write!(f, "authentication failed: {m}"),
            Error::Io(e) => write!(f, "i/o error: {e}"),
            Error::Connect { target, source } => write!(f, "cannot connect to {target}: {source}"),
            Error::Tls(m) => write!(f, "TLS: {m}"),
            Error::Rejected(m) => write!(f, "server not accepted: {m}"),
            Error::PoolTimeout(m) => write!(f, "pool: {m}"),
            Error::Unreachable(tried) => {
                write!(f, "no server could be used ({} tried): ", tried.len())?;
                for (i, (target, e)) in tried.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    match e {
                        // Already names its target.
                        Error::Connect { .. } => write!(f, "{e}")?,
                        e => write!(f, "{target}: {e}")?,
                    }
                }
                Ok(())
            }
            Error::Encode(m) => write!(f, "cannot encode parameter: {m}"),
            Error::Decode(m) => write!(f, "cannot decode column: {m}"),
            Error::Config(m) => write!(f, "invalid configuration: {m}"),
            Error::Misuse(m) => write!(f, "misuse: {m}"),
            Error::NoRows => f.write_str("query returned no rows, exactly one was expected"),
            Error::TooManyRows(n) => {
                write!(f, "query returned {n} rows, exactly one was expected")
            }
            Error::NotFound(m) => write!(f, "{m}: no row matches the query, exactly one was expected"),
            // `get` fetches at most 21 rows: enough to say "several".
            Error::MultipleFound(m, n) if *n > 20 => {
                write!(f, "{m}: more than 20 rows match the query, exactly one was expected")
            }
            Error::MultipleFound(m, n) => write!(f, "{m}: {n} rows match the query, exactly one was expected"),
            Error::Invalid(m) => write!(f, "invalid: {m}"),
            Error::InDoubt(Some(xid)) => write!(
                f,
                "in doubt: the connection was lost after COMMIT was sent, and whether transaction {xid} committed could not be found out"
            ),
            Error::CommittedWithoutResult(xid) => write!(
                f,
                "committed without a result: transaction {xid} committed, but the connection was lost before its results arrived"
            ),
            Error::InDoubt(None) => f.write_str(
                "in doubt: the connection was lost after COMMIT was sent, before the transaction's id was known; it may have committed",
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Db(e) => Some(&**e),
            Error::Io(e) => Some(&**e),
            Error::Connect { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(Arc::new(e))
    }
}

/// SQLSTATE codes duet itself reacts to, and a few every caller checks.
pub mod sqlstate {
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const QUERY_CANCELED: &str = "57014";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const DEADLOCK_DETECTED: &str = "40P01";
}
