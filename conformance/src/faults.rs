//! Fault injection for the conformance suite: what a healthy server on a
//! healthy network never does.
//!
//! * [`Proxy`] sits between a driver and the real server and breaks the byte
//!   stream on command: cuts, resets, stalls, trickles or corrupts it at an
//!   exact byte offset, so a test can sweep a fault over every byte of a
//!   reply.
//! * [`FakeServer`] is a scripted imitation of PostgreSQL for behaviour a real
//!   server will not produce on demand (floods, silence, malformed or huge
//!   messages, unknown authentication). Ready-made scripts such as
//!   [`notice_flood`] cover the common cases; [`backend`] encodes the
//!   messages a custom script sends.
//!
//! Std-only and thread-based, like [`crate::server`]: both drivers are tested
//! through it, so it must not depend on either's I/O model. Every blocking
//! call sits on a socket that `Drop` shuts down (or on a condition variable it
//! signals), which is what lets a dropped proxy or fake server end its threads
//! instead of leaking them blocked forever.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Locks, ignoring poisoning: a panicking test thread must not turn every
/// later harness call into a second, misleading panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(|e| e.into_inner())
}

/// Unblocks a thread sitting in `accept` on `addr` by connecting to it once;
/// the acceptor then sees its stop flag.
fn wake_acceptor(addr: SocketAddr) {
    let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
}

// ---------------------------------------------------------------------------
// Proxy
// ---------------------------------------------------------------------------

/// What the [`Proxy`] does to the bytes that flow after [`Proxy::arm`].
///
/// Offsets count from the arm, over all connections together. A fault that
/// fires "after n bytes" fires the moment the n-th byte has been forwarded;
/// with n = 0 it fires when the first byte arrives, which is then not
/// forwarded (so after `CutServerAfter(0)` the server has received the
/// request but the client gets no byte of the reply). A cut, reset or stall
/// strikes the connections open when it fires, once: connections opened
/// after it (a driver's cancel connection, the lookup of a lost commit, the
/// next test step) pass untouched until the next `arm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Forward exactly n more server->client bytes, then close both sides
    /// (client sees EOF).
    CutServerAfter(usize),
    /// Forward exactly n more client->server bytes, then close both sides.
    CutClientAfter(usize),
    /// After n server->client bytes, reset the client socket (SO_LINGER 0 ->
    /// RST) and close upstream.
    ResetServerAfter(usize),
    /// After n server->client bytes, stop forwarding in both directions but
    /// keep both sockets open (silence). Bytes that arrive meanwhile are held,
    /// not dropped: the next [`Proxy::arm`] releases them under the new fault.
    StallServerAfter(usize),
    /// Deliver server->client bytes one byte per write (with TCP_NODELAY);
    /// both directions still work.
    Trickle,
    /// XOR the server->client byte at offset n (counted from the arm) with
    /// 0xFF.
    CorruptServerAt(usize),
}

/// A TCP proxy on 127.0.0.1 in front of a real server. Dropping it closes
/// every connection and ends its threads.
pub struct Proxy {
    port: u16,
    shared: Arc<ProxyShared>,
    acceptor: Option<JoinHandle<()>>,
}

/// State every thread of one proxy shares.
struct ProxyShared {
    state: Mutex<ProxyState>,
    /// Signalled on `arm`, on a connection closing and on drop: what threads
    /// held by a stall wait for.
    changed: Condvar,
    next_id: AtomicU64,
}

struct ProxyState {
    fault: Fault,
    server_bytes: usize,
    client_bytes: usize,
    /// A `StallServerAfter` fired since the last arm.
    stalled: bool,
    /// The first link id opened after a cut, reset or stall fired: links
    /// from there on are not touched by the fault.
    fired_at: Option<u64>,
    stopping: bool,
    links: HashMap<u64, Arc<Link>>,
    /// Pump threads, joined on drop so nothing outlives the proxy.
    pumps: Vec<JoinHandle<()>>,
}

/// One proxied connection: the accepted client socket and its upstream.
/// Both pump threads share the sockets through `&TcpStream`, so each socket
/// has exactly one file descriptor and is closed when the last `Arc` goes —
/// which is what makes an SO_LINGER 0 close really send RST.
struct Link {
    id: u64,
    client: TcpStream,
    upstream: TcpStream,
    /// Set by whoever closes first; the other direction's thread then only
    /// leaves, so a reset is not followed by a FIN.
    closed: AtomicBool,
}

impl Link {
    /// Marks the link closed; false if someone else already did.
    fn claim_close(&self) -> bool {
        !self.closed.swap(true, Ordering::SeqCst)
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Closes both sides with FIN: the client reads EOF after what was
    /// forwarded, the server sees its client gone. Also wakes both pump
    /// threads out of any blocking read or write.
    fn cut(&self) {
        if self.claim_close() {
            let _ = self.client.shutdown(Shutdown::Both);
            let _ = self.upstream.shutdown(Shutdown::Both);
        }
    }

    /// Resets the client side: no FIN, an RST once the descriptor closes
    /// (when both pump threads and the registry have let go of the link).
    /// Only the read half is shut, to wake the client->server thread without
    /// sending anything.
    fn reset(&self) {
        if self.claim_close() {
            let _ = set_linger_zero(&self.client);
            let _ = self.client.shutdown(Shutdown::Read);
            let _ = self.upstream.shutdown(Shutdown::Both);
        }
    }
}

/// What a pump thread does with the bytes it has read.
enum Plan {
    /// Forward the first `count` bytes (the rest wait for another plan).
    Forward {
        count: usize,
        /// Index into the chunk of a byte to XOR with 0xFF.
        corrupt: Option<usize>,
        trickle: bool,
        /// Fire after forwarding.
        then: Option<Action>,
    },
    /// The link is closed: stop.
    Stop,
}

#[derive(Clone, Copy)]
enum Action {
    Cut,
    Reset,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ServerToClient,
    ClientToServer,
}

impl ProxyShared {
    /// Decides, under the lock, what happens to the next `len` bytes in
    /// `dir`, and counts the forwarded ones before they are written so a
    /// counter read after the client has the bytes includes them. Waits while
    /// stalled. The write itself happens outside the lock: the client may be
    /// the test thread, which might be calling `arm` instead of reading.
    fn plan(&self, link: &Link, dir: Direction, len: usize) -> Plan {
        let mut st = lock(&self.state);
        let spared = |st: &ProxyState| st.fired_at.is_some_and(|id| link.id >= id);
        while st.stalled && !spared(&st) && !st.stopping && !link.is_closed() {
            st = wait(&self.changed, st);
        }
        if st.stopping || link.is_closed() {
            return Plan::Stop;
        }
        let fault = if spared(&st) { Fault::None } else { st.fault };
        let sent = match dir {
            Direction::ServerToClient => st.server_bytes,
            Direction::ClientToServer => st.client_bytes,
        };
        // (limit, what fires when it is reached) for faults on this direction.
        let limit = match (dir, fault) {
            (Direction::ServerToClient, Fault::CutServerAfter(n)) => Some((n, Some(Action::Cut))),
            (Direction::ServerToClient, Fault::ResetServerAfter(n)) => Some((n, Some(Action::Reset))),
            (Direction::ServerToClient, Fault::StallServerAfter(n)) => Some((n, None)),
            (Direction::ClientToServer, Fault::CutClientAfter(n)) => Some((n, Some(Action::Cut))),
            _ => None,
        };
        let (count, then) = match limit {
            Some((n, action)) => {
                let count = len.min(n.saturating_sub(sent));
                if sent + count == n {
                    if action.is_none() {
                        st.stalled = true;
                    }
                    st.fired_at.get_or_insert(self.next_id.load(Ordering::SeqCst));
                    (count, action)
                } else {
                    (count, None)
                }
            }
            None => (len, None),
        };
        let corrupt = match (dir, fault) {
            (Direction::ServerToClient, Fault::CorruptServerAt(n)) if (sent..sent + count).contains(&n) => {
                Some(n - sent)
            }
            _ => None,
        };
        let trickle = dir == Direction::ServerToClient && fault == Fault::Trickle;
        match dir {
            Direction::ServerToClient => st.server_bytes += count,
            Direction::ClientToServer => st.client_bytes += count,
        }
        Plan::Forward {
            count,
            corrupt,
            trickle,
            then,
        }
    }

    /// Closes a link and forgets it, waking anything stalled on it.
    fn finish(&self, link: &Link, action: Action) {
        match action {
            Action::Cut => link.cut(),
            Action::Reset => link.reset(),
        }
        lock(&self.state).links.remove(&link.id);
        self.changed.notify_all();
    }
}

/// Copies one direction of a link until EOF, an error or a fault.
fn pump(shared: Arc<ProxyShared>, link: Arc<Link>, dir: Direction) {
    let (mut from, mut to) = match dir {
        Direction::ServerToClient => (&link.upstream, &link.client),
        Direction::ClientToServer => (&link.client, &link.upstream),
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = Action::Cut;
    'read: loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = &mut buf[..n];
        while !chunk.is_empty() {
            let (count, corrupt, trickle, then) = match shared.plan(&link, dir, chunk.len()) {
                Plan::Stop => break 'read,
                Plan::Forward {
                    count,
                    corrupt,
                    trickle,
                    then,
                } => (count, corrupt, trickle, then),
            };
            if let Some(i) = corrupt {
                chunk[i] ^= 0xFF;
            }
            let wrote = if trickle {
                chunk[..count].chunks(1).try_for_each(|b| to.write_all(b))
            } else {
                to.write_all(&chunk[..count])
            };
            if wrote.is_err() {
                break 'read;
            }
            if let Some(action) = then {
                end = action;
                break 'read;
            }
            chunk = &mut chunk[count..];
        }
    }
    // EOF or an error on either side ends the whole link: the proxy models a
    // connection, not two independent half-streams.
    shared.finish(&link, end);
}

impl Proxy {
    /// Listens on `127.0.0.1:<free port>`, forwards every accepted connection
    /// to `upstream_host:upstream_port`.
    pub fn start(upstream_host: &str, upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind 127.0.0.1:0");
        let port = listener.local_addr().expect("proxy: local address").port();
        let upstream: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(upstream_host, upstream_port))
            .unwrap_or_else(|e| panic!("proxy: cannot resolve {upstream_host}:{upstream_port}: {e}"))
            .collect();
        let shared = Arc::new(ProxyShared {
            state: Mutex::new(ProxyState {
                fault: Fault::None,
                server_bytes: 0,
                client_bytes: 0,
                stalled: false,
                fired_at: None,
                stopping: false,
                links: HashMap::new(),
                pumps: Vec::new(),
            }),
            changed: Condvar::new(),
            next_id: AtomicU64::new(0),
        });
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("proxy-accept-{port}"))
                .spawn(move || accept_loop(listener, upstream, shared))
                .expect("proxy: spawn acceptor")
        };
        Proxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// A connection URL through the proxy, built from a server URL such as
    /// `TestServer::url()` (`postgres://user[:pw]@host:port/db?params`):
    /// host and port replaced by `127.0.0.1:<proxy port>`, and
    /// `local_socket=disable` added (duet otherwise prefers a local Unix
    /// socket, which would bypass the proxy). A libpq `key=value` string is
    /// accepted too (a later key overrides an earlier one).
    pub fn url(&self, server_url: &str) -> String {
        let s = server_url.trim();
        let Some(scheme_end) = s.find("://") else {
            return format!("{s} host=127.0.0.1 port={} local_socket=disable", self.port);
        };
        let (scheme, rest) = (&s[..scheme_end + 3], &s[scheme_end + 3..]);
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], &before_query[i..]),
            None => (before_query, ""),
        };
        let userinfo = authority.rsplit_once('@').map(|(u, _)| u);
        // Options that would route around the proxy are dropped.
        let mut params: Vec<&str> = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let key = p.split('=').next().unwrap_or("");
                !matches!(key, "host" | "port" | "local_socket")
            })
            .collect();
        params.push("local_socket=disable");
        let mut url = String::from(scheme);
        if let Some(u) = userinfo {
            url.push_str(u);
            url.push('@');
        }
        url.push_str(&format!("127.0.0.1:{}{path}?{}", self.port, params.join("&")));
        url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets the fault for the bytes that flow from now on; byte counts
    /// restart at 0 at each arm (and a stall is lifted). Applies to all
    /// connections currently open and later ones.
    pub fn arm(&self, fault: Fault) {
        let mut st = lock(&self.shared.state);
        st.fault = fault;
        st.server_bytes = 0;
        st.client_bytes = 0;
        st.stalled = false;
        st.fired_at = None;
        drop(st);
        self.shared.changed.notify_all();
    }

    /// Bytes forwarded server->client since the last [`arm`](Self::arm).
    pub fn server_bytes(&self) -> usize {
        lock(&self.shared.state).server_bytes
    }

    /// Bytes forwarded client->server since the last [`arm`](Self::arm).
    pub fn client_bytes(&self) -> usize {
        lock(&self.shared.state).client_bytes
    }

    /// Cuts every open connection now (both sides closed).
    pub fn cut_all(&self) {
        let links: Vec<Arc<Link>> = lock(&self.shared.state).links.drain().map(|(_, l)| l).collect();
        for link in links {
            link.cut();
        }
        self.shared.changed.notify_all();
    }
}

fn accept_loop(listener: TcpListener, upstream: Vec<SocketAddr>, shared: Arc<ProxyShared>) {
    for client in listener.incoming() {
        if lock(&shared.state).stopping {
            return;
        }
        let Ok(client) = client else { continue };
        // Without an upstream the client just sees its connection closed.
        let Some(upstream) = upstream
            .iter()
            .find_map(|a| TcpStream::connect_timeout(a, Duration::from_secs(5)).ok())
        else {
            continue;
        };
        // NODELAY both ways: Trickle needs each byte in its own segment, and
        // no fault should be blurred by Nagle's coalescing.
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let link = Arc::new(Link {
            id: shared.next_id.fetch_add(1, Ordering::Relaxed),
            client,
            upstream,
            closed: AtomicBool::new(false),
        });
        let mut st = lock(&shared.state);
        if st.stopping {
            link.cut();
            return;
        }
        st.links.insert(link.id, link.clone());
        st.pumps.retain(|h| !h.is_finished());
        for dir in [Direction::ServerToClient, Direction::ClientToServer] {
            let (shared, pumped) = (shared.clone(), link.clone());
            let spawned = thread::Builder::new()
                .name(format!("proxy-pump-{}", link.id))
                .spawn(move || pump(shared, pumped, dir));
            match spawned {
                Ok(h) => st.pumps.push(h),
                Err(_) => link.cut(),
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let links: Vec<Arc<Link>> = {
            let mut st = lock(&self.shared.state);
            st.stopping = true;
            st.links.drain().map(|(_, l)| l).collect()
        };
        for link in links {
            link.cut();
        }
        self.shared.changed.notify_all();
        wake_acceptor(SocketAddr::from(([127, 0, 0, 1], self.port)));
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        // The acceptor is gone, so no pump is added after this.
        let pumps = std::mem::take(&mut lock(&self.shared.state).pumps);
        for h in pumps {
            let _ = h.join();
        }
    }
}

/// SO_LINGER {on, 0}: closing the socket then sends RST instead of FIN.
/// Declared by hand because std has no stable setter and this crate stays
/// dependency-free; `setsockopt` is in the C library std already links.
fn set_linger_zero(s: &TcpStream) -> io::Result<()> {
    use std::ffi::{c_int, c_void};
    use std::os::fd::AsRawFd;

    #[repr(C)]
    struct Linger {
        l_onoff: c_int,
        l_linger: c_int,
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const LEVEL_OPTION: (c_int, c_int) = (1, 13); // SOL_SOCKET, SO_LINGER
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const LEVEL_OPTION: (c_int, c_int) = (0xffff, 0x0080); // BSD and macOS values
    extern "C" {
        fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: u32) -> c_int;
    }
    let linger = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a live descriptor owned by `s`, and a pointer/length pair
    // describing a valid `struct linger`.
    let rc = unsafe {
        setsockopt(
            s.as_raw_fd(),
            LEVEL_OPTION.0,
            LEVEL_OPTION.1,
            (&linger as *const Linger).cast(),
            std::mem::size_of::<Linger>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------
// Fake server
// ---------------------------------------------------------------------------

/// A scripted fake PostgreSQL server on 127.0.0.1. Dropping it stops
/// accepting, shuts down every connection's socket and wakes scripts held in
/// [`FakeConn::hold`], so their threads end.
pub struct FakeServer {
    port: u16,
    shared: Arc<FakeShared>,
    acceptor: Option<JoinHandle<()>>,
}

struct FakeShared {
    state: Mutex<FakeState>,
    /// Signalled on drop (for [`FakeConn::hold`]) and when a script ends.
    changed: Condvar,
    cancels: AtomicUsize,
}

struct FakeState {
    stopping: bool,
    /// A clone of each live connection's socket, to shut it down on drop.
    conns: HashMap<u64, TcpStream>,
    next_id: u64,
    /// Scripts still running.
    live: usize,
}

/// How long `Drop` waits for scripts to end. Built-in scripts end at once;
/// the bound only keeps a custom script that ignores the shutdown from
/// hanging the test (its thread is then left behind).
const SCRIPT_EXIT_WAIT: Duration = Duration::from_secs(10);

impl FakeServer {
    /// Accepts connections on `127.0.0.1:<free port>`; each accepted
    /// connection runs `script` on its own thread.
    pub fn start(script: impl Fn(FakeConn) + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("fake server: bind 127.0.0.1:0");
        let port = listener.local_addr().expect("fake server: local address").port();
        let shared = Arc::new(FakeShared {
            state: Mutex::new(FakeState {
                stopping: false,
                conns: HashMap::new(),
                next_id: 0,
                live: 0,
            }),
            changed: Condvar::new(),
            cancels: AtomicUsize::new(0),
        });
        let script = Arc::new(script);
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("fake-accept-{port}"))
                .spawn(move || {
                    for stream in listener.incoming() {
                        let Ok(stream) = stream else { continue };
                        let Ok(clone) = stream.try_clone() else { continue };
                        let id = {
                            let mut st = lock(&shared.state);
                            if st.stopping {
                                return;
                            }
                            st.next_id += 1;
                            st.live += 1;
                            let id = st.next_id;
                            st.conns.insert(id, clone);
                            id
                        };
                        let _ = stream.set_nodelay(true);
                        let conn = FakeConn {
                            negotiate_down: false,
                            stream,
                            shared: shared.clone(),
                        };
                        let (script, guard) = (script.clone(), ScriptGuard(shared.clone(), id));
                        let spawned = thread::Builder::new().name(format!("fake-conn-{id}")).spawn(move || {
                            let _guard = guard;
                            script(conn);
                        });
                        // If the thread could not start, its closure (and so
                        // the guard) was dropped: the bookkeeping is undone.
                        drop(spawned);
                    }
                })
                .expect("fake server: spawn acceptor")
        };
        FakeServer {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres?local_socket=disable`
    /// followed by `extra` (e.g. `"&connect_timeout=2"`, or `""`).
    pub fn url(&self, extra: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?local_socket=disable{extra}",
            self.port
        )
    }

    /// How many CancelRequests were received so far.
    pub fn cancels(&self) -> usize {
        self.shared.cancels.load(Ordering::SeqCst)
    }
}

/// Ends a script's bookkeeping however its thread ends (a panic included):
/// closes the registry's copy of the socket, so the connection really
/// closes when the script lets go of it.
struct ScriptGuard(Arc<FakeShared>, u64);

impl Drop for ScriptGuard {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        st.conns.remove(&self.1);
        st.live -= 1;
        drop(st);
        self.0.changed.notify_all();
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        let conns: Vec<TcpStream> = {
            let mut st = lock(&self.shared.state);
            st.stopping = true;
            st.conns.drain().map(|(_, s)| s).collect()
        };
        for s in &conns {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.shared.changed.notify_all();
        wake_acceptor(SocketAddr::from(([127, 0, 0, 1], self.port)));
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        let until = Instant::now() + SCRIPT_EXIT_WAIT;
        let mut st = lock(&self.shared.state);
        while st.live > 0 && Instant::now() < until {
            st = self
                .shared
                .changed
                .wait_timeout(st, until.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The first message of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opening {
    /// StartupMessage (protocol 3.x) with its parameters.
    Startup(Vec<(String, String)>),
    Cancel {
        process_id: i32,
        secret_key: i32,
    },
    /// Any other request code (GSSENCRequest, another protocol version).
    Other(i32),
}

const PROTOCOL_3_0: i32 = 196_608;
const CANCEL_REQUEST_CODE: i32 = 80_877_102;
const SSL_REQUEST_CODE: i32 = 80_877_103;

/// Largest frontend message the fake server accepts; a driver never sends
/// more in these tests, and garbage must not make it allocate gigabytes.
const MAX_FRONTEND_MESSAGE: usize = 64 << 20;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// One accepted connection of a [`FakeServer`], handed to its script.
pub struct FakeConn {
    pub stream: TcpStream,
    shared: Arc<FakeShared>,
    /// The client asked for a protocol newer than 3.0: the greeting starts
    /// with NegotiateProtocolVersion, as PostgreSQL before 18 answers.
    negotiate_down: bool,
}

impl FakeConn {
    /// Reads the first message: startup (of any 3.x protocol) or cancel
    /// (code 80877102; also counted in [`FakeServer::cancels`]). An
    /// SSLRequest is refused with `N` first, as a server without TLS does.
    pub fn read_opening(&mut self) -> io::Result<Opening> {
        loop {
            let len = self.read_i32()?;
            if !(8..=10_000).contains(&len) {
                return Err(invalid(format!("opening message length {len}")));
            }
            let code = self.read_i32()?;
            let mut body = vec![0u8; len as usize - 8];
            self.stream.read_exact(&mut body)?;
            return Ok(match code {
                code if code >> 16 == 3 => {
                    self.negotiate_down = code != PROTOCOL_3_0;
                    Opening::Startup(parse_startup_params(&body)?)
                }
                CANCEL_REQUEST_CODE if body.len() >= 8 => {
                    self.shared.cancels.fetch_add(1, Ordering::SeqCst);
                    Opening::Cancel {
                        process_id: i32::from_be_bytes(body[0..4].try_into().unwrap()),
                        secret_key: i32::from_be_bytes(body[4..8].try_into().unwrap()),
                    }
                }
                CANCEL_REQUEST_CODE => return Err(invalid(format!("CancelRequest of {len} bytes"))),
                SSL_REQUEST_CODE => {
                    self.send(b"N")?;
                    continue;
                }
                other => Opening::Other(other),
            });
        }
    }

    /// [`read_opening`](Self::read_opening) expecting a Startup, then
    /// [`greet`](Self::greet).
    pub fn handshake(&mut self) -> io::Result<()> {
        match self.read_opening()? {
            Opening::Startup(_) => self.greet(),
            other => Err(invalid(format!("expected a startup message, got {other:?}"))),
        }
    }

    /// What a trusting server answers a startup with: NegotiateProtocolVersion
    /// 3.0 when a newer one was asked for, AuthenticationOk,
    /// BackendKeyData (pid 4242, key 7), ParameterStatus server_version=15.0
    /// and client_encoding=UTF8, ReadyForQuery 'I'.
    pub fn greet(&mut self) -> io::Result<()> {
        let mut out = Vec::new();
        if self.negotiate_down {
            // NegotiateProtocolVersion: newest supported 3.0, no options refused.
            out.push(b'v');
            out.extend_from_slice(&12i32.to_be_bytes());
            out.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
            out.extend_from_slice(&0i32.to_be_bytes());
        }
        out.extend(backend::auth_ok());
        out.extend(backend::backend_key_data(4242, 7));
        out.extend(backend::parameter_status("server_version", "15.0"));
        out.extend(backend::parameter_status("client_encoding", "UTF8"));
        out.extend(backend::ready_for_query(b'I'));
        self.send(&out)
    }

    /// Reads one frontend message: (type byte, body).
    pub fn read_message(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let mut kind = [0u8; 1];
        self.stream.read_exact(&mut kind)?;
        let len = self.read_i32()?;
        if len < 4 || len as usize - 4 > MAX_FRONTEND_MESSAGE {
            return Err(invalid(format!(
                "frontend message {:?} of length {len}",
                kind[0] as char
            )));
        }
        let mut body = vec![0u8; len as usize - 4];
        self.stream.read_exact(&mut body)?;
        Ok((kind[0], body))
    }

    /// Reads frontend messages up to and including the next Sync (`S`) or a
    /// simple Query (`Q`); returns them.
    pub fn read_until_sync(&mut self) -> io::Result<Vec<(u8, Vec<u8>)>> {
        let mut messages = Vec::new();
        loop {
            let m = self.read_message()?;
            let end = matches!(m.0, b'S' | b'Q');
            messages.push(m);
            if end {
                return Ok(messages);
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Whether the [`FakeServer`] was dropped; loops in scripts check it.
    pub fn stopping(&self) -> bool {
        lock(&self.shared.state).stopping
    }

    /// Keeps the connection open, doing nothing, until the [`FakeServer`] is
    /// dropped: a peer that neither reads nor answers.
    pub fn hold(&self) {
        let mut st = lock(&self.shared.state);
        while !st.stopping {
            st = wait(&self.shared.changed, st);
        }
    }

    /// Reads and discards until EOF, an error or the server's drop: a peer
    /// that accepts everything and answers nothing.
    pub fn drain(&mut self) {
        let mut buf = [0u8; 8192];
        while !self.stopping() {
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    fn read_i32(&mut self) -> io::Result<i32> {
        let mut b = [0u8; 4];
        self.stream.read_exact(&mut b)?;
        Ok(i32::from_be_bytes(b))
    }
}

fn parse_startup_params(body: &[u8]) -> io::Result<Vec<(String, String)>> {
    // NUL-terminated name/value pairs, ended by an empty name.
    let mut fields = body.split(|&b| b == 0).map(|f| String::from_utf8_lossy(f).into_owned());
    let mut params = Vec::new();
    loop {
        match fields.next() {
            Some(name) if !name.is_empty() => {
                let value = fields
                    .next()
                    .ok_or_else(|| invalid(format!("startup parameter {name:?} has no value")))?;
                params.push((name, value));
            }
            _ => return Ok(params),
        }
    }
}

/// Backend message encoders; each returns the whole framed message.
pub mod backend {
    /// Frames any message, malformed ones included: type byte, then a length
    /// counting itself and `body`.
    pub fn raw(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(5 + body.len());
        m.push(kind);
        m.extend(((body.len() + 4) as i32).to_be_bytes());
        m.extend(body);
        m
    }

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend(s.as_bytes());
        out.push(0);
    }

    pub fn auth_ok() -> Vec<u8> {
        auth_request(0, &[])
    }

    /// AuthenticationRequest with any code (0 = Ok, 3 = cleartext, 5 = MD5
    /// with a 4-byte salt in `extra`, 10 = SASL, …).
    pub fn auth_request(code: i32, extra: &[u8]) -> Vec<u8> {
        let mut body = code.to_be_bytes().to_vec();
        body.extend(extra);
        raw(b'R', &body)
    }

    pub fn backend_key_data(pid: i32, key: i32) -> Vec<u8> {
        let mut body = pid.to_be_bytes().to_vec();
        body.extend(key.to_be_bytes());
        raw(b'K', &body)
    }

    pub fn parameter_status(name: &str, value: &str) -> Vec<u8> {
        let mut body = Vec::new();
        cstr(&mut body, name);
        cstr(&mut body, value);
        raw(b'S', &body)
    }

    pub fn ready_for_query(status: u8) -> Vec<u8> {
        raw(b'Z', &[status])
    }

    pub fn parse_complete() -> Vec<u8> {
        raw(b'1', &[])
    }

    pub fn bind_complete() -> Vec<u8> {
        raw(b'2', &[])
    }

    pub fn no_data() -> Vec<u8> {
        raw(b'n', &[])
    }

    /// RowDescription with binary format codes, as duet requests; the type
    /// length is the real one for common fixed-size types, -1 otherwise.
    pub fn row_description(cols: &[(&str, u32)]) -> Vec<u8> {
        let mut body = (cols.len() as i16).to_be_bytes().to_vec();
        for &(name, oid) in cols {
            let typlen: i16 = match oid {
                16 | 18 => 1,                       // bool, "char"
                21 => 2,                            // int2
                23 | 26 | 700 | 1082 => 4,          // int4, oid, float4, date
                20 | 701 | 1083 | 1114 | 1184 => 8, // int8, float8, time, timestamp(tz)
                2950 => 16,                         // uuid
                _ => -1,
            };
            cstr(&mut body, name);
            body.extend(0i32.to_be_bytes()); // table oid
            body.extend(0i16.to_be_bytes()); // column number
            body.extend(oid.to_be_bytes());
            body.extend(typlen.to_be_bytes());
            body.extend((-1i32).to_be_bytes()); // type modifier
            body.extend(1i16.to_be_bytes()); // binary
        }
        raw(b'T', &body)
    }

    /// DataRow; `None` is SQL NULL.
    pub fn data_row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut body = (values.len() as i16).to_be_bytes().to_vec();
        for v in values {
            match v {
                Some(bytes) => {
                    body.extend((bytes.len() as i32).to_be_bytes());
                    body.extend(*bytes);
                }
                None => body.extend((-1i32).to_be_bytes()),
            }
        }
        raw(b'D', &body)
    }

    pub fn command_complete(tag: &str) -> Vec<u8> {
        let mut body = Vec::new();
        cstr(&mut body, tag);
        raw(b'C', &body)
    }

    fn fields(kind: u8, fields: &[(u8, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for &(code, value) in fields {
            body.push(code);
            cstr(&mut body, value);
        }
        body.push(0);
        raw(kind, &body)
    }

    /// ErrorResponse with severity (localized `S` and plain `V`), SQLSTATE
    /// and message.
    pub fn error_response(severity: &str, code: &str, message: &str) -> Vec<u8> {
        fields(
            b'E',
            &[(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)],
        )
    }

    /// NoticeResponse of severity NOTICE, SQLSTATE 00000.
    pub fn notice_response(message: &str) -> Vec<u8> {
        fields(
            b'N',
            &[(b'S', "NOTICE"), (b'V', "NOTICE"), (b'C', "00000"), (b'M', message)],
        )
    }
}

// ---------------------------------------------------------------------------
// Ready-made scripts
// ---------------------------------------------------------------------------

/// Sends NoticeResponses in large batches until a write fails or the server
/// is dropped: a server that talks faster than the client can read.
fn flood(conn: &mut FakeConn) {
    let notice = backend::notice_response("flood");
    let batch: Vec<u8> = notice.iter().copied().cycle().take(notice.len() * 1000).collect();
    while !conn.stopping() && conn.send(&batch).is_ok() {}
}

/// Handshake, then after reading the first request sends NoticeResponses in
/// an endless loop as fast as possible (until a write fails), never
/// answering.
pub fn notice_flood() -> impl Fn(FakeConn) + Send + Sync + 'static {
    |mut conn: FakeConn| {
        if conn.handshake().is_ok() && conn.read_until_sync().is_ok() {
            flood(&mut conn);
        }
    }
}

/// Reads the opening, then floods notices forever without ever sending
/// AuthenticationOk.
pub fn flood_during_startup() -> impl Fn(FakeConn) + Send + Sync + 'static {
    |mut conn: FakeConn| {
        if conn.read_opening().is_ok() {
            flood(&mut conn);
        }
    }
}

/// Greets a startup and then answers nothing; a CancelRequest is closed at
/// once (what a real server does) or, with `hold_cancels`, kept open.
fn silent(conn: &mut FakeConn, hold_cancels: bool) {
    match conn.read_opening() {
        Ok(Opening::Startup(_)) if conn.greet().is_ok() => conn.drain(),
        Ok(Opening::Cancel { .. }) if hold_cancels => conn.hold(),
        _ => {}
    }
}

/// Handshake, then reads and discards forever, answering nothing. A
/// CancelRequest connection is read and then closed (normal server
/// behaviour; the cancel is counted).
pub fn silent_after_handshake() -> impl Fn(FakeConn) + Send + Sync + 'static {
    |mut conn: FakeConn| silent(&mut conn, false)
}

/// Like [`silent_after_handshake`], but a CancelRequest connection is read
/// and then held open without a reply or close until the server is dropped.
pub fn unanswered_cancel() -> impl Fn(FakeConn) + Send + Sync + 'static {
    |mut conn: FakeConn| silent(&mut conn, true)
}

/// Handshake, then never reads again and never answers: the client's sends
/// eventually block once the socket buffers are full.
pub fn stops_reading() -> impl Fn(FakeConn) + Send + Sync + 'static {
    |mut conn: FakeConn| {
        if conn.handshake().is_ok() {
            conn.hold();
        }
    }
}

/// Answers whatever arrives with `HTTP/1.1 400 Bad Request`, then closes:
/// the wrong kind of server on the port.
pub fn http_server() -> impl Fn(FakeConn) + Send + Sync + 'static {
    |mut conn: FakeConn| {
        let mut buf = [0u8; 8192];
        if matches!(conn.stream.read(&mut buf), Ok(n) if n > 0) {
            let body = "Bad Request\n";
            let reply = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.send(reply.as_bytes());
            // FIN, then read until the client leaves: closing with unread
            // input would send RST and could destroy the reply in flight.
            let _ = conn.stream.shutdown(Shutdown::Write);
            conn.drain();
        }
    }
}

/// Handshake, then answers the first request with the header of a 2 GiB
/// DataRow (`D`, length 0x7fff_ffff) and nothing more; the connection stays
/// open, so only the header can make the client give up.
pub fn oversized_message() -> impl Fn(FakeConn) + Send + Sync + 'static {
    |mut conn: FakeConn| {
        if conn.handshake().is_ok()
            && conn.read_until_sync().is_ok()
            && conn.send(&[b'D', 0x7f, 0xff, 0xff, 0xff]).is_ok()
        {
            conn.drain();
        }
    }
}

/// On startup sends AuthenticationRequest code 99 (no such method), then
/// waits for the client to leave.
pub fn unknown_auth() -> impl Fn(FakeConn) + Send + Sync + 'static {
    |mut conn: FakeConn| {
        if matches!(conn.read_opening(), Ok(Opening::Startup(_))) && conn.send(&backend::auth_request(99, &[])).is_ok()
        {
            conn.drain();
        }
    }
}

// ---------------------------------------------------------------------------
// Tests of the harness itself
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::TestServer;

    fn proxy() -> (Proxy, String) {
        let server = TestServer::shared();
        let proxy = Proxy::start(&server.host(), server.port());
        let url = proxy.url(&server.url());
        (proxy, url)
    }

    /// The messages a real server sends for `SELECT 1` the first time a
    /// connection runs it (the statement is parsed and described then).
    fn first_select_one_reply() -> Vec<Vec<u8>> {
        vec![
            backend::parse_complete(),
            backend::bind_complete(),
            backend::row_description(&[("?column?", 23)]),
            backend::data_row(&[Some(&1i32.to_be_bytes())]),
            backend::command_complete("SELECT 1"),
            backend::ready_for_query(b'I'),
        ]
    }

    #[test]
    fn url_rewrites_host_port_and_disables_local_socket() {
        let p = Proxy::start("127.0.0.1", 1);
        let port = p.port();
        assert_eq!(
            p.url("postgres://u:p%40w@db.example:5432/app?sslmode=disable&local_socket=prefer"),
            format!("postgres://u:p%40w@127.0.0.1:{port}/app?sslmode=disable&local_socket=disable")
        );
        assert_eq!(
            p.url("postgresql://[::1]:5433"),
            format!("postgresql://127.0.0.1:{port}?local_socket=disable")
        );
        let kv = p.url("host=db user=u");
        assert_eq!(
            kv,
            format!("host=db user=u host=127.0.0.1 port={port} local_socket=disable")
        );
        let c = duet_core::Config::parse(&kv).unwrap();
        assert_eq!(
            (c.host, c.port),
            (vec![duet_core::Host::Tcp("127.0.0.1".into())], vec![port])
        );
    }

    #[test]
    fn connects_and_queries_through_the_proxy() {
        let (proxy, url) = proxy();
        let mut c = duet_sync::Client::connect(&url).expect("connect through the proxy");
        let row = c.query_one("SELECT 1", &[]).unwrap();
        assert_eq!(row.get::<i32>(0), 1);
        assert!(proxy.server_bytes() > 0 && proxy.client_bytes() > 0);
    }

    #[test]
    fn cut_server_after_forwards_exactly_n_bytes() {
        let (proxy, url) = proxy();
        let mut c = duet_sync::Client::connect(&url).unwrap();
        proxy.arm(Fault::CutServerAfter(3));
        assert!(c.query("SELECT 1", &[]).is_err(), "the reply was cut");
        assert_eq!(proxy.server_bytes(), 3);
        assert!(proxy.client_bytes() > 0, "the request reached the server");
    }

    #[test]
    fn server_bytes_count_the_whole_reply() {
        let (proxy, url) = proxy();
        let mut c = duet_sync::Client::connect(&url).unwrap();
        proxy.arm(Fault::None);
        assert_eq!(c.query("SELECT 1", &[]).unwrap().len(), 1);
        let reply: usize = first_select_one_reply().iter().map(Vec::len).sum();
        assert!(reply > 0);
        assert_eq!(proxy.server_bytes(), reply);
    }

    #[test]
    fn cut_client_before_the_first_byte() {
        let (proxy, url) = proxy();
        let mut c = duet_sync::Client::connect(&url).unwrap();
        proxy.arm(Fault::CutClientAfter(0));
        assert!(c.query("SELECT 1", &[]).is_err());
        assert_eq!((proxy.client_bytes(), proxy.server_bytes()), (0, 0));
    }

    #[test]
    fn trickle_delivers_everything() {
        let (proxy, url) = proxy();
        let mut c = duet_sync::Client::connect(&url).unwrap();
        proxy.arm(Fault::Trickle);
        assert_eq!(c.query_one("SELECT 1", &[]).unwrap().get::<i32>(0), 1);
        assert_eq!(c.query_one("SELECT 2", &[]).unwrap().get::<i32>(0), 2);
    }

    #[test]
    fn corruption_hits_exactly_the_chosen_byte() {
        let (proxy, url) = proxy();
        let mut c = duet_sync::Client::connect(&url).unwrap();
        // The last byte of the DataRow is the low byte of the int4 value.
        let reply = first_select_one_reply();
        let value_low_byte = reply[..4].iter().map(Vec::len).sum::<usize>() - 1;
        proxy.arm(Fault::CorruptServerAt(value_low_byte));
        assert_eq!(c.query_one("SELECT 1", &[]).unwrap().get::<i32>(0), 1 ^ 0xFF);
    }

    #[test]
    fn reset_and_cut_all_end_the_connection() {
        let (proxy, url) = proxy();
        let mut c = duet_sync::Client::connect(&url).unwrap();
        proxy.arm(Fault::ResetServerAfter(5));
        assert!(c.query("SELECT 1", &[]).is_err());
        assert_eq!(proxy.server_bytes(), 5);

        proxy.arm(Fault::None);
        let mut c = duet_sync::Client::connect(&url).unwrap();
        proxy.cut_all();
        assert!(c.query("SELECT 1", &[]).is_err());
        let mut c = duet_sync::Client::connect(&url).expect("new connections still work");
        c.query("SELECT 1", &[]).unwrap();
    }

    #[test]
    fn stall_holds_bytes_until_rearmed() {
        let (proxy, url) = proxy();
        let mut c = duet_sync::Client::connect(&url).unwrap();
        proxy.arm(Fault::StallServerAfter(0));
        let query = thread::spawn(move || c.query_one("SELECT 1", &[]).map(|r| r.get::<i32>(0)));
        // Wait (bounded only so a broken proxy cannot hang the run) for the
        // reply's first byte to have been held back.
        let until = Instant::now() + Duration::from_secs(60);
        while !lock(&proxy.shared.state).stalled {
            assert!(Instant::now() < until, "the stall never fired");
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(proxy.server_bytes(), 0);
        assert!(!query.is_finished(), "no byte of the reply was forwarded");
        proxy.arm(Fault::None);
        assert_eq!(query.join().unwrap().unwrap(), 1, "the held reply was released");
        assert!(proxy.server_bytes() > 0);
    }

    #[test]
    fn fake_server_answers_a_query() {
        let fake = FakeServer::start(|mut conn: FakeConn| {
            conn.handshake().unwrap();
            while let Ok(request) = conn.read_until_sync() {
                assert!(request.iter().any(|(k, _)| *k == b'P'), "an extended-protocol query");
                let mut reply = backend::parse_complete();
                reply.extend(backend::bind_complete());
                reply.extend(backend::row_description(&[("?column?", 23)]));
                reply.extend(backend::data_row(&[Some(&1i32.to_be_bytes())]));
                reply.extend(backend::command_complete("SELECT 1"));
                reply.extend(backend::ready_for_query(b'I'));
                if conn.send(&reply).is_err() {
                    return;
                }
            }
        });
        let mut c = duet_sync::Client::connect(&fake.url("&connect_timeout=5")).expect("connect to the fake");
        assert_eq!(c.query_one("SELECT 1", &[]).unwrap().get::<i32>(0), 1);
        assert!(c.cancel_token().is_some(), "BackendKeyData was read");
    }

    #[test]
    fn fake_server_counts_cancels_and_drops_promptly() {
        let fake = FakeServer::start(silent_after_handshake());
        let c = duet_sync::Client::connect(&fake.url("")).unwrap();
        c.cancel_token()
            .unwrap()
            .cancel()
            .expect("the fake closes after reading the cancel");
        assert_eq!(fake.cancels(), 1);
        drop(fake); // would hang here if a script thread outlived it
        let mut c = c;
        assert!(
            c.query("SELECT 1", &[]).is_err(),
            "the connection was closed by the drop"
        );
    }
}
