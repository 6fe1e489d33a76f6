//! # duet-sync
//!
//! The blocking driver: std sockets pumping the duet-core state machine. No
//! async runtime anywhere. All logic lives in `duet-core`; this crate only
//! moves bytes and sleeps until the core's next deadline.
//!
//! ```no_run
//! use duet_sync::prelude::*;
//!
//! let mut client = Client::connect("postgres://postgres@127.0.0.1:5432/postgres")?;
//! let row = client.query_one("SELECT $1::int4 + 1", &[&41i32])?;
//! assert_eq!(row.get::<i32>(0), 42);
//! # Ok::<(), duet_sync::Error>(())
//! ```

use bytes::BytesMut;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

pub use duet_core::*;

/// The README's examples, compiled as doctests so they cannot rot.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The engine this driver pumps; `#[derive(Model)]` reaches it here.
pub use duet_core;

mod copying;
mod listener;
pub mod pool;
#[cfg(feature = "r2d2")]
pub mod r2d2;

pub use copying::{CopyIn, CopyOut};
pub use duet_core::listen::{Heard, Missed, Notification};
pub use listener::Listener;

/// Everything an application needs: `use duet_sync::prelude::*;`.
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
    /// `connect_timeout`.
    fn connect(endpoint: &Endpoint, config: &Config) -> io::Result<Socket> {
        let host = match &endpoint.host {
            Host::Unix(dir) => return Ok(Socket::Unix(UnixStream::connect(endpoint.unix_socket_path(dir))?)),
            Host::Tcp(host) => host,
        };
        let addrs: Vec<SocketAddr> = match endpoint.hostaddr {
            Some(ip) => vec![SocketAddr::new(ip, endpoint.port)],
            None => (host.as_str(), endpoint.port).to_socket_addrs()?.collect(),
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} resolved to no address"));
        for addr in addrs {
            let attempt = match config.connect_timeout {
                Some(t) => TcpStream::connect_timeout(&addr, t),
                None => TcpStream::connect(addr),
            };
            match attempt {
                Ok(s) => {
                    tcp_options(&s, config)?;
                    return Ok(Socket::Tcp(s));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn fd(&self) -> RawFd {
        match self {
            Socket::Tcp(s) => s.as_raw_fd(),
            Socket::Unix(s) => s.as_raw_fd(),
        }
    }

    /// Writes without blocking: `Ok(0)` when the socket buffer is full.
    fn send_nonblocking(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: fd is a live socket owned by self; buf is a valid slice.
        let n = unsafe {
            libc::send(
                self.fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        match io::Error::last_os_error() {
            e if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            e if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            e => Err(e),
        }
    }

    /// Tells the server this session is over (FIN), so that a transaction
    /// it still holds ends before its fate is looked up elsewhere.
    fn shutdown(&self) {
        let _ = match self {
            Socket::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Socket::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        }
    }

    /// Appends what the socket has to `buf`, in its spare capacity (the
    /// connection's own input buffer, or the driver's under TLS).
    fn recv_into(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let n = match self {
            Socket::Tcp(s) => socket2::SockRef::from(s).recv(buf.spare_capacity_mut()),
            Socket::Unix(s) => socket2::SockRef::from(s).recv(buf.spare_capacity_mut()),
        }?;
        // SAFETY: recv(2) initialised the first `n` bytes of the spare
        // capacity (and read none of it).
        unsafe { buf.set_len(buf.len() + n) };
        Ok(n)
    }

    /// A blocking write (a cancel connection's; sessions never block).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }

    fn set_timeouts(&self, limit: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => {
                s.set_read_timeout(limit)?;
                s.set_write_timeout(limit)
            }
            Socket::Unix(s) => {
                s.set_read_timeout(limit)?;
                s.set_write_timeout(limit)
            }
        }
    }

    /// Waits until the socket is readable (and/or writable), or `until`.
    /// Returns (readable, writable).
    fn wait(&self, read: bool, write: bool, until: Option<Instant>) -> io::Result<(bool, bool)> {
        let events = (if read { libc::POLLIN } else { 0 }) | (if write { libc::POLLOUT } else { 0 });
        let mut pfd = libc::pollfd {
            fd: self.fd(),
            events,
            revents: 0,
        };
        // Rounded up, so the wait never ends just before the deadline;
        // capped, so a limit of any length cannot wrap to "forever".
        let timeout_ms = match until {
            None => -1,
            Some(t) => (t.saturating_duration_since(Instant::now()).as_millis() + 1).min(i32::MAX as u128) as i32,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok((false, false))
            } else {
                Err(e)
            };
        }
        let hangup = pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0;
        Ok((
            pfd.revents & libc::POLLIN != 0 || hangup,
            pfd.revents & libc::POLLOUT != 0,
        ))
    }
}

/// No Nagle delay (requests are whole when written), and the keepalives
/// and user timeout the configuration asks for.
fn tcp_options(s: &TcpStream, config: &Config) -> io::Result<()> {
    let sock = socket2::SockRef::from(s);
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
    Ok(())
}

/// How much a read may bring at once.
const READ_ROOM: usize = 64 * 1024;

/// A blocking connection to PostgreSQL.
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
    pub fn cancel(&self) -> Result<(), Error> {
        send_cancel(&self.config, self.request, self.config.side_limit())
    }
}

/// Connects as the session did (TLS included, as libpq 17 does), sends the
/// request and waits for the server to close the socket; each step is
/// bounded by `limit`.
fn send_cancel(config: &Config, request: CancelRequest, limit: Duration) -> Result<(), Error> {
    let config = Config {
        connect_timeout: Some(limit),
        ..config.clone()
    };
    let mut plan = Connector::new(&config)?;
    let Some((attempt, mut s)) = next_socket(&mut plan, &config) else {
        return Err(plan.into_error());
    };
    s.set_timeouts(Some(limit))?;
    let mut conn = plan.start_cancel(&attempt, request, Instant::now());
    let mut buf = [0u8; 16 * 1024];
    loop {
        while !conn.poll_transmit().is_empty() {
            let n = s.write(conn.poll_transmit())?;
            conn.advance_transmit(n);
        }
        if conn.cancel_sent() {
            break;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(Error::closed(
                "the server closed the cancel connection before the request was sent",
            ));
        }
        conn.handle_input(&buf[..n], Instant::now())?;
    }
    // The server closes the socket once it has read the request.
    let _ = s.read(&mut buf);
    Ok(())
}

/// The next attempt of `plan` whose socket opens; the others are told to
/// `plan` as they fail.
fn next_socket(plan: &mut Connector, config: &Config) -> Option<(Attempt, Socket)> {
    while let Some(attempt) = plan.next_attempt() {
        match Socket::connect(attempt.endpoint(), config) {
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
/// connection, asked on a new connection within the side limit.
fn look_up_outcome(config: &Config, xid: i64) -> Result<TxOutcome, Error> {
    let config = config.for_side_connection();
    let mut client = Client::connect_config(&config)?;
    client.run_with_timeout(ops::tx_outcome(xid), config.side_limit())
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
    pub fn connect(params: &str) -> Result<Client, Error> {
        Client::connect_config(&Config::from_env(params)?)
    }

    /// Connects to the first server of the configuration that gives an
    /// acceptable session (the core's [`Connector`] decides which to try,
    /// how TLS starts, and whether the session will do).
    pub fn connect_config(config: &Config) -> Result<Client, Error> {
        let mut plan = Connector::new(config)?;
        while let Some((attempt, sock)) = next_socket(&mut plan, config) {
            let mut client = Client {
                conn: plan.start(&attempt, Instant::now()),
                sock,
                buf: BytesMut::new(),
            };
            match client.run(ops::startup()) {
                Ok(()) => return Ok(client),
                Err(e) => plan.session_failed(attempt, &client.conn, e),
            }
        }
        Err(plan.into_error())
    }

    /// Runs `f` in a transaction: committed if it returns `Ok`, rolled back
    /// if it returns `Err` or panics. Nested calls use savepoints. `BEGIN`
    /// travels with the first statement `f` sends.
    ///
    /// ```no_run
    /// # use duet_sync::prelude::*;
    /// # fn f(client: &mut Client) -> Result<(), Error> {
    /// let moved = client.atomic(|tx| {
    ///     let n = tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1", &[])?;
    ///     tx.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 2", &[])?;
    ///     Ok(n)
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn atomic<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T, Error>) -> Result<T, Error> {
        self.atomic_with(ops::TxOptions::default(), f)
    }

    /// [`atomic`](Self::atomic) with an isolation level, read only or
    /// deferrable (outermost transactions only).
    pub fn atomic_with<T>(
        &mut self,
        options: ops::TxOptions,
        f: impl FnOnce(&mut Client) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let tx = ops::TxGuard::begin(self, &options)?;
        let work = f(&mut *tx.client);
        let end = tx.finish(work.is_ok());
        let ended = self.run(end);
        ops::settle(work, ended)
    }

    /// Calls `f` again while it fails with a serialization failure or a
    /// deadlock ([`ops::retryable`]), at most `attempts` times in all: for
    /// an `atomic_with` under `SERIALIZABLE`.
    pub fn retry<T>(&mut self, attempts: u32, mut f: impl FnMut(&mut Client) -> Result<T, Error>) -> Result<T, Error> {
        let mut left = attempts.max(1);
        loop {
            match f(self) {
                Err(e) if left > 1 && ops::retryable(&e) => left -= 1,
                other => return other,
            }
        }
    }

    /// Runs any operation to completion: the whole I/O loop of this driver.
    pub fn run<O: Operation>(&mut self, op: O) -> Result<O::Output, Error> {
        self.run_steps(op, usize::MAX)
            .unwrap_or_else(|| Err(Error::Misuse("the I/O loop ended without a result".into())))
    }

    /// Runs the I/O loop at most `steps` times; abandons the operation if it
    /// has not finished by then (what dropping a future does in the async
    /// driver). `None` when it was abandoned.
    #[doc(hidden)]
    pub fn run_steps<O: Operation>(&mut self, op: O, steps: usize) -> Option<Result<O::Output, Error>> {
        let mut running = ops::Running::new(self, op);
        let mut io_error = None;
        for _ in 0..steps {
            match running.next(Instant::now(), &mut io_error) {
                ops::Next::Done(out) => return Some(out),
                ops::Next::LookUpOutcome(xid) => {
                    running.client.sock.shutdown();
                    let conn = &mut running.client.conn;
                    conn.handle_outcome(look_up_outcome(conn.config(), xid));
                }
                ops::Next::Io => io_error = running.client.pump().err(),
            }
        }
        None
    }

    /// Runs an operation with a time limit on every request it sends.
    pub fn run_with_timeout<O: Operation>(&mut self, op: O, timeout: Duration) -> Result<O::Output, Error> {
        self.conn.set_default_deadline(deadline_after(Instant::now(), timeout));
        let r = self.run(op);
        self.conn.set_default_deadline(None);
        r
    }

    /// One step of I/O: send what the core wants sent and read what it waits
    /// for, never blocking on a write while the server may be waiting for us
    /// to read (a large pipeline would deadlock otherwise).
    fn pump(&mut self) -> Result<(), Error> {
        if let Some(c) = self.conn.poll_cancel() {
            // Best effort: when the cancel cannot be delivered, the grace
            // period still ends the call.
            let _ = send_cancel(self.conn.config(), c, self.conn.config().cancel_limit());
        }
        let mut wrote = false;
        while !self.conn.poll_transmit().is_empty() {
            let n = self
                .sock
                .send_nonblocking(self.conn.poll_transmit())
                .map_err(|e| self.fatal(e))?;
            if n == 0 {
                break;
            }
            self.conn.advance_transmit(n);
            wrote = true;
        }
        let Some(want) = self.conn.interest(wrote)? else {
            return Ok(());
        };
        let deadline = self.conn.poll_timeout();
        let (readable, _) = if !want.write && deadline.is_none() {
            (true, false) // a plain blocking read is the cheapest wait
        } else {
            self.sock
                .wait(want.read, want.write, deadline)
                .map_err(|e| self.fatal(e))?
        };
        if readable {
            self.read_once()?;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            self.conn.handle_timeout(Instant::now());
        }
        Ok(())
    }

    fn read_once(&mut self) -> Result<(), Error> {
        // In plaintext, straight into the connection's buffer (one copy
        // fewer); under TLS into the driver's, for the connection to decrypt.
        let (buf, in_place) = match self.conn.input_buffer(READ_ROOM) {
            Some(input) => (input, true),
            None => {
                self.buf.clear();
                self.buf.reserve(READ_ROOM);
                (&mut self.buf, false)
            }
        };
        match self.sock.recv_into(buf) {
            Ok(n) if in_place => self.conn.handle_read_in_place(n, Instant::now()),
            Ok(n) => self.conn.handle_read(&self.buf[..n], Instant::now()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(self.fatal(e)),
        }
    }

    fn fatal(&mut self, e: io::Error) -> Error {
        self.conn.handle_eof(Instant::now());
        Error::from(e)
    }

    /// Waits up to `timeout` for a notice, notification or parameter change.
    pub fn wait_event(&mut self, timeout: Duration) -> Result<Option<Event>, Error> {
        let until = deadline_after(Instant::now(), timeout);
        loop {
            if let Some(e) = self.conn.next_event()? {
                return Ok(Some(e));
            }
            if !self.await_input(until)? {
                return Ok(None);
            }
        }
    }

    /// Waits for input until `until` and reads it; false once `until` passed.
    fn await_input(&mut self, until: Option<Instant>) -> Result<bool, Error> {
        let (readable, _) = self.sock.wait(true, false, until).map_err(|e| self.fatal(e))?;
        if readable {
            self.read_once()?;
            Ok(true)
        } else {
            Ok(until.is_none_or(|u| Instant::now() < u))
        }
    }

    /// A token that cancels the running statement from another thread.
    pub fn cancel_token(&self) -> Option<CancelToken> {
        self.conn.cancel_token().map(|request| CancelToken {
            config: self.conn.config().clone(),
            request,
        })
    }

    /// Sends Terminate and closes the socket, giving up after
    /// [`CLOSE_LIMIT`] on a peer that stopped reading.
    pub fn close(mut self) -> Result<(), Error> {
        self.conn.close();
        let until = Instant::now() + CLOSE_LIMIT;
        while !self.conn.poll_transmit().is_empty() {
            let n = self.sock.send_nonblocking(self.conn.poll_transmit())?;
            if n == 0 {
                if Instant::now() >= until {
                    return Err(Error::closed("close gave up: the server stopped reading"));
                }
                self.sock.wait(false, true, Some(until))?;
            }
            self.conn.advance_transmit(n);
        }
        Ok(())
    }

    duet_core::client_api!(,);
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.conn.closed_reason().is_none() {
            self.conn.close();
            let _ = self.sock.send_nonblocking(self.conn.poll_transmit());
        }
    }
}
