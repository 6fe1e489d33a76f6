//! # duet-async
//!
//! The tokio driver: tokio sockets pumping the duet-core state machine. All
//! logic lives in `duet-core`; this crate only moves bytes and sleeps until
//! the core's next deadline. Works on a current-thread runtime.
//!
//! Dropping any future of this crate at any point leaves the client usable:
//! requests already sent belong to the connection, whose responses are
//! discarded on arrival, and a transaction the dropped work opened is
//! rolled back.
//!
//! ```no_run
//! use duet_async::prelude::*;
//!
//! # async fn demo() -> Result<(), duet_async::Error> {
//! let mut client = Client::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
//! let row = client.query_one("SELECT $1::int4 + 1", &[&41i32]).await?;
//! assert_eq!(row.get::<i32>(0), 42);
//! # Ok(()) }
//! ```

use bytes::BytesMut;
use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest as TokioInterest};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant as TokioInstant;

pub use duet_core::*;

/// The engine this driver pumps; `#[derive(Model)]` reaches it here.
pub use duet_core;

mod copying;
#[cfg(feature = "deadpool")]
pub mod deadpool;
mod listener;
pub mod pool;

pub use copying::{CopyIn, CopyOut};
pub use duet_core::listen::{Heard, Missed, Notification};
pub use listener::Listener;

/// Everything an application needs: `use duet_async::prelude::*;`.
pub mod prelude {
    pub use crate::{CancelToken, Client, CopyIn, CopyOut, Heard, Listener};
    pub use duet_core::prelude::*;
}

enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    /// Opens a socket to `endpoint`: its Unix socket, or TCP to `hostaddr`
    /// or each address its name resolves to, in turn, each within
    /// `connect_timeout` (as libpq and the blocking driver do).
    async fn connect(endpoint: &Endpoint, config: &Config) -> io::Result<Socket> {
        let host = match &endpoint.host {
            Host::Unix(dir) => {
                let path = endpoint.unix_socket_path(dir);
                return limit(config.connect_timeout, UnixStream::connect(path))
                    .await
                    .map(Socket::Unix);
            }
            Host::Tcp(host) => host,
        };
        let addrs: Vec<std::net::SocketAddr> = match endpoint.hostaddr {
            Some(ip) => vec![std::net::SocketAddr::new(ip, endpoint.port)],
            None => limit(
                config.connect_timeout,
                tokio::net::lookup_host((host.as_str(), endpoint.port)),
            )
            .await?
            .collect(),
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} resolved to no address"));
        for addr in addrs {
            match limit(config.connect_timeout, TcpStream::connect(addr)).await {
                Ok(s) => return Socket::tcp(s, config),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// No Nagle delay (requests are whole when written), and the keepalives
    /// and user timeout the configuration asks for.
    fn tcp(s: TcpStream, config: &Config) -> io::Result<Socket> {
        let sock = socket2::SockRef::from(&s);
        sock.set_tcp_nodelay(true)?;
        if config.keepalives {
            let mut k = socket2::TcpKeepalive::new();
            if let Some(t) = config.keepalives_idle {
                k = k.with_time(t);
            }
            if let Some(t) = config.keepalives_interval {
                k = k.with_interval(t);
            }
            if let Some(n) = config.keepalives_count {
                k = k.with_retries(n);
            }
            sock.set_tcp_keepalive(&k)?;
        }
        #[cfg(target_os = "linux")]
        sock.set_tcp_user_timeout(config.tcp_user_timeout)?;
        Ok(Socket::Tcp(s))
    }

    async fn ready(&self, interest: TokioInterest) -> io::Result<tokio::io::Ready> {
        match self {
            Socket::Tcp(s) => s.ready(interest).await,
            Socket::Unix(s) => s.ready(interest).await,
        }
    }

    /// Tells the server this session is over (FIN), so that a transaction
    /// it still holds ends before its fate is looked up elsewhere.
    async fn shutdown(&mut self) {
        let _ = match self {
            Socket::Tcp(s) => s.shutdown().await,
            Socket::Unix(s) => s.shutdown().await,
        };
    }

    /// A write that waits (a cancel connection's; sessions never wait).
    async fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf).await,
            Socket::Unix(s) => s.write(buf).await,
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf).await,
            Socket::Unix(s) => s.read(buf).await,
        }
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.try_write(buf),
            Socket::Unix(s) => s.try_write(buf),
        }
    }

    /// Reads what the socket has into the spare capacity of `buf` (the
    /// connection's own input buffer, or the driver's under TLS). A read
    /// that does not fill that room drained the socket, so its readiness
    /// is cleared too: the next wait goes
    /// straight to epoll instead of first trying a read that can only fail
    /// with `WouldBlock` (tokio's own `poll_read` does the same). The clear
    /// is made by the `try_io` that did the read, with the readiness it saw
    /// before reading: readiness raised by data arriving after the read is
    /// newer, and tokio keeps it.
    fn read_draining(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let len = buf.capacity() - buf.len();
        let mut got = 0;
        let read = |r: io::Result<usize>, got: &mut usize| -> io::Result<usize> {
            let n = r?;
            *got = n;
            if n > 0 && n < len {
                // Not an error: tells try_io to clear the readiness it saw.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        };
        let r = match self {
            Socket::Tcp(s) => s.try_io(TokioInterest::READABLE, || read(s.try_read_buf(buf), &mut got)),
            Socket::Unix(s) => s.try_io(TokioInterest::READABLE, || read(s.try_read_buf(buf), &mut got)),
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
            r => r,
        }
    }
}

/// `f` within `limit` (no limit: as long as it takes).
async fn limit<T>(limit: Option<Duration>, f: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    match limit {
        Some(t) => tokio::time::timeout(t, f)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect_timeout passed"))?,
        None => f.await,
    }
}

/// How much a read may bring at once.
const READ_ROOM: usize = 64 * 1024;

/// An asynchronous connection to PostgreSQL.
pub struct Client {
    conn: Connection,
    sock: Socket,
    /// Where encrypted bytes are read (plaintext goes straight to the connection).
    buf: BytesMut,
}

/// Cancels whatever the client's connection is running, from anywhere.
#[derive(Debug, Clone)]
pub struct CancelToken {
    config: Config,
    request: CancelRequest,
}

impl CancelToken {
    /// Opens a new connection and sends the CancelRequest, within
    /// [`Config::side_limit`].
    pub async fn cancel(&self) -> Result<(), Error> {
        send_cancel(&self.config, self.request, self.config.side_limit()).await
    }
}

/// Connects as the session did (TLS included, as libpq 17 does), sends the
/// request and waits for the server to close the socket, all within
/// `limit`.
async fn send_cancel(config: &Config, request: CancelRequest, limit: Duration) -> Result<(), Error> {
    let exchange = async {
        let mut plan = Connector::new(config)?;
        let Some((attempt, mut s)) = next_socket(&mut plan, config).await else {
            return Err(plan.into_error());
        };
        let mut conn = plan.start_cancel(&attempt, request, Instant::now());
        let mut buf = [0u8; 16 * 1024];
        loop {
            while !conn.poll_transmit().is_empty() {
                let n = s.write(conn.poll_transmit()).await?;
                conn.advance_transmit(n);
            }
            if conn.cancel_sent() {
                break;
            }
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Err(Error::closed(
                    "the server closed the cancel connection before the request was sent",
                ));
            }
            conn.handle_input(&buf[..n], Instant::now())?;
        }
        // The server closes the socket once it has read the request.
        let _ = s.read(&mut buf).await;
        Ok(())
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| Err(Error::closed("the cancel connection did not finish within its limit")))
}

/// The next attempt of `plan` whose socket opens; the others are told to
/// `plan` as they fail.
async fn next_socket(plan: &mut Connector, config: &Config) -> Option<(Attempt, Socket)> {
    while let Some(attempt) = plan.next_attempt() {
        match Socket::connect(attempt.endpoint(), config).await {
            Ok(s) => return Some((attempt, s)),
            Err(e) => {
                let e = attempt.endpoint().connect_error(e);
                plan.failed(attempt, e);
            }
        }
    }
    None
}

/// What became of a transaction whose COMMIT was lost with its
/// connection, asked on a new connection within the side limit. Boxed:
/// it runs a client of its own from inside [`Client::run`].
fn look_up_outcome(
    config: &Config,
    xid: i64,
) -> std::pin::Pin<Box<dyn Future<Output = Result<TxOutcome, Error>> + Send + '_>> {
    Box::pin(async move {
        let config = config.for_side_connection();
        let mut client = Client::connect_config(&config).await?;
        client.run_with_timeout(ops::tx_outcome(xid), config.side_limit()).await
    })
}

impl ops::HasConnection for Client {
    fn connection_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Client {
    /// Connects with a `postgres://` URL or a libpq `key=value` string,
    /// read as libpq reads it: over the `PG*` environment, with the password
    /// file and the operating system's user (see [`Config::from_env`]).
    pub async fn connect(params: &str) -> Result<Client, Error> {
        Client::connect_config(&Config::from_env(params)?).await
    }

    /// Connects to the first server of the configuration that gives an
    /// acceptable session (the core's [`Connector`] decides which to try,
    /// how TLS starts, and whether the session will do).
    pub async fn connect_config(config: &Config) -> Result<Client, Error> {
        let mut plan = Connector::new(config)?;
        while let Some((attempt, sock)) = next_socket(&mut plan, config).await {
            let mut client = Client {
                conn: plan.start(&attempt, Instant::now()),
                sock,
                buf: BytesMut::new(),
            };
            match client.run(ops::startup()).await {
                Ok(()) => return Ok(client),
                Err(e) => plan.session_failed(attempt, &client.conn, e),
            }
        }
        Err(plan.into_error())
    }

    /// Runs `f` in a transaction: committed if it returns `Ok`, rolled back
    /// if it returns `Err`, panics or its future is dropped. Nested calls use
    /// savepoints. `BEGIN` travels with the first statement `f` sends.
    ///
    /// ```no_run
    /// # use duet_async::prelude::*;
    /// # async fn f(client: &mut Client) -> Result<(), Error> {
    /// let moved = client
    ///     .atomic(async |tx| {
    ///         let n = tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1", &[]).await?;
    ///         tx.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 2", &[]).await?;
    ///         Ok(n)
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn atomic<T, F>(&mut self, f: F) -> Result<T, Error>
    where
        F: AsyncFnOnce(&mut Client) -> Result<T, Error>,
    {
        self.atomic_with(ops::TxOptions::default(), f).await
    }

    /// [`atomic`](Self::atomic) with an isolation level, read only or
    /// deferrable (outermost transactions only).
    pub async fn atomic_with<T, F>(&mut self, options: ops::TxOptions, f: F) -> Result<T, Error>
    where
        F: AsyncFnOnce(&mut Client) -> Result<T, Error>,
    {
        let tx = ops::TxGuard::begin(self, &options)?;
        let work = f(&mut *tx.client).await;
        let end = tx.finish(work.is_ok());
        let ended = self.run(end).await;
        ops::settle(work, ended)
    }

    /// Calls `f` again while it fails with a serialization failure or a
    /// deadlock ([`ops::retryable`]), at most `attempts` times in all: for
    /// an `atomic_with` under `SERIALIZABLE`.
    pub async fn retry<T, F>(&mut self, attempts: u32, mut f: F) -> Result<T, Error>
    where
        F: AsyncFnMut(&mut Client) -> Result<T, Error>,
    {
        let mut left = attempts.max(1);
        loop {
            match f(self).await {
                Err(e) if left > 1 && ops::retryable(&e) => left -= 1,
                other => return other,
            }
        }
    }

    /// Runs any operation to completion: the whole I/O loop of this driver.
    pub async fn run<O: Operation>(&mut self, op: O) -> Result<O::Output, Error> {
        let mut running = ops::Running::new(self, op);
        let mut io_error = None;
        loop {
            match running.next(Instant::now(), &mut io_error) {
                ops::Next::Done(out) => return out,
                ops::Next::LookUpOutcome(xid) => {
                    running.client.sock.shutdown().await;
                    let config = running.client.conn.config().clone();
                    let answer = look_up_outcome(&config, xid).await;
                    running.client.conn.handle_outcome(answer);
                }
                ops::Next::Io => io_error = running.client.pump().await.err(),
            }
        }
    }

    /// Runs an operation with a time limit on every request it sends.
    pub async fn run_with_timeout<O: Operation>(&mut self, op: O, timeout: Duration) -> Result<O::Output, Error> {
        self.conn.set_default_deadline(deadline_after(Instant::now(), timeout));
        let r = self.run(op).await;
        self.conn.set_default_deadline(None);
        r
    }

    /// One step of I/O: send what the core wants sent and read what it waits
    /// for, whichever the socket allows first.
    async fn pump(&mut self) -> Result<(), Error> {
        if let Some(c) = self.conn.poll_cancel() {
            // Best effort: when the cancel cannot be delivered, the grace
            // period still ends the call.
            let _ = send_cancel(self.conn.config(), c, self.conn.config().cancel_limit()).await;
        }
        let mut wrote = false;
        while !self.conn.poll_transmit().is_empty() {
            match self.sock.try_write(self.conn.poll_transmit()) {
                Ok(n) => {
                    self.conn.advance_transmit(n);
                    wrote = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(self.fatal(e)),
            }
        }
        let Some(want) = self.conn.interest(wrote)? else {
            return Ok(());
        };
        let interest = match (want.read, want.write) {
            (true, true) => TokioInterest::READABLE | TokioInterest::WRITABLE,
            (false, true) => TokioInterest::WRITABLE,
            _ => TokioInterest::READABLE,
        };
        let deadline = self.conn.poll_timeout();
        let ready = match deadline {
            Some(d) => tokio::time::timeout_at(TokioInstant::from_std(d), self.sock.ready(interest))
                .await
                .ok(),
            None => Some(self.sock.ready(interest).await),
        };
        match ready {
            Some(Ok(r)) if r.is_readable() || r.is_read_closed() => self.read_once()?,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(self.fatal(e)),
            None => self.conn.handle_timeout(Instant::now()),
        }
        Ok(())
    }

    fn read_once(&mut self) -> Result<(), Error> {
        // In plaintext, straight into the connection's buffer.
        if let Some(input) = self.conn.input_buffer(READ_ROOM) {
            return match self.sock.read_draining(input) {
                Ok(n) => self.conn.handle_read_in_place(n, Instant::now()),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(()),
                Err(e) => Err(self.fatal(e)),
            };
        }
        self.buf.clear();
        self.buf.reserve(READ_ROOM);
        match self.sock.read_draining(&mut self.buf) {
            Ok(n) => self.conn.handle_read(&self.buf[..n], Instant::now()),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(()),
            Err(e) => Err(self.fatal(e)),
        }
    }

    fn fatal(&mut self, e: io::Error) -> Error {
        self.conn.handle_eof(Instant::now());
        Error::from(e)
    }

    /// Waits up to `timeout` for a notice, notification or parameter change.
    pub async fn wait_event(&mut self, timeout: Duration) -> Result<Option<Event>, Error> {
        // A limit past the end of the clock is no limit.
        let until = deadline_after(Instant::now(), timeout);
        loop {
            if let Some(e) = self.conn.next_event()? {
                return Ok(Some(e));
            }
            if !self.await_input(until).await? {
                return Ok(None);
            }
        }
    }

    /// Waits for input until `until` and reads it; false once `until` passed.
    async fn await_input(&mut self, until: Option<Instant>) -> Result<bool, Error> {
        let ready = self.sock.ready(TokioInterest::READABLE);
        let waited = match until {
            Some(u) => tokio::time::timeout_at(TokioInstant::from_std(u), ready).await,
            None => Ok(ready.await),
        };
        match waited {
            Ok(Ok(_)) => self.read_once().map(|()| true),
            Ok(Err(e)) => Err(self.fatal(e)),
            Err(_) => Ok(false),
        }
    }

    /// A token that cancels the running statement from another task.
    pub fn cancel_token(&self) -> Option<CancelToken> {
        self.conn.cancel_token().map(|request| CancelToken {
            config: self.conn.config().clone(),
            request,
        })
    }

    /// Sends Terminate and closes the socket, giving up after
    /// [`CLOSE_LIMIT`] on a peer that stopped reading.
    pub async fn close(mut self) -> Result<(), Error> {
        self.conn.close();
        let flush = async {
            while !self.conn.poll_transmit().is_empty() {
                self.sock.ready(TokioInterest::WRITABLE).await?;
                match self.sock.try_write(self.conn.poll_transmit()) {
                    Ok(n) => self.conn.advance_transmit(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        };
        tokio::time::timeout(CLOSE_LIMIT, flush)
            .await
            .unwrap_or_else(|_| Err(Error::closed("close gave up: the server stopped reading")))
    }

    duet_core::client_api!(async, .await);
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.conn.closed_reason().is_none() {
            self.conn.close();
            let _ = self.sock.try_write(self.conn.poll_transmit());
        }
    }
}
