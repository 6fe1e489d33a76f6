//! The `floor` contender: the least any client can do. Statements are
//! prepared once; each operation writes hand-encoded Bind/Execute/Sync
//! bytes to a blocking socket, scans the reply frames for ReadyForQuery
//! and decodes rows by hand straight from the read buffer. No abstraction,
//! no statement cache, no error recovery beyond reporting the message.
//!
//! postgres-protocol is used for the startup and authentication exchange
//! only, which is not timed.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use crate::workload::{self as w, Workload};
use crate::{assoc, BenchError, Contender, Target};

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(buf),
            Stream::Unix(s) => s.write_all(buf),
        }
    }
}

pub struct Floor {
    sock: Stream,
    /// Read buffer: bytes `start..end` are received and not yet consumed.
    inb: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
    prepared: HashMap<String, String>,
    /// Where it connected, for the connect workload's new sessions.
    target: Target,
}

impl Floor {
    pub fn connect(t: &Target) -> Result<Floor, BenchError> {
        let sock = match &t.unix_dir {
            Some(dir) => Stream::Unix(UnixStream::connect(format!("{dir}/.s.PGSQL.{}", t.port))?),
            None => {
                let s = TcpStream::connect((t.host.as_str(), t.port))?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        };
        let mut f = Floor {
            sock,
            inb: vec![0; 1 << 16],
            start: 0,
            end: 0,
            out: Vec::with_capacity(1 << 16),
            prepared: HashMap::new(),
            target: t.clone(),
        };
        f.startup(t)?;
        Ok(f)
    }

    fn startup(&mut self, t: &Target) -> Result<(), BenchError> {
        let mut b = BytesMut::new();
        frontend::startup_message([("user", t.user.as_str()), ("database", t.dbname.as_str())], &mut b)?;
        self.sock.write_all(&b)?;
        let mut scram: Option<ScramSha256> = None;
        let mut pending = BytesMut::new();
        loop {
            let msg = loop {
                if let Some(m) = Message::parse(&mut pending)? {
                    break m;
                }
                let mut chunk = [0u8; 4096];
                let n = self.sock.read(&mut chunk)?;
                if n == 0 {
                    return Err("server closed the connection during startup".into());
                }
                pending.extend_from_slice(&chunk[..n]);
            };
            let password = || {
                t.password
                    .clone()
                    .ok_or_else(|| BenchError::from("the server wants a password"))
            };
            let mut b = BytesMut::new();
            match msg {
                Message::AuthenticationOk | Message::ParameterStatus(_) | Message::BackendKeyData(_) => {}
                Message::AuthenticationCleartextPassword => frontend::password_message(password()?.as_bytes(), &mut b)?,
                Message::AuthenticationMd5Password(body) => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        t.user.as_bytes(),
                        password()?.as_bytes(),
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut b)?;
                }
                Message::AuthenticationSasl(_) => {
                    let s = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut b)?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or("SASL continue without SASL")?;
                    s.update(body.data())?;
                    frontend::sasl_response(s.message(), &mut b)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    scram.as_mut().ok_or("SASL final without SASL")?.finish(body.data())?;
                }
                Message::ErrorResponse(_) => return Err("the server refused the connection".into()),
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
            if !b.is_empty() {
                self.sock.write_all(&b)?;
            }
        }
        // Whatever followed ReadyForQuery belongs to the next exchange.
        self.inb[..pending.len()].copy_from_slice(&pending);
        self.end = pending.len();
        Ok(())
    }

    /// Prepares `sql` once under a name of its own (not timed after the
    /// first use).
    fn stmt(&mut self, sql: &str, types: &[u32]) -> Result<String, BenchError> {
        if let Some(n) = self.prepared.get(sql) {
            return Ok(n.clone());
        }
        let name = format!("f{}", self.prepared.len());
        let mut b = BytesMut::new();
        frontend::parse(&name, sql, types.iter().copied(), &mut b)?;
        frontend::sync(&mut b);
        self.sock.write_all(&b)?;
        self.read_until_ready(1, |_| Ok(()))?;
        self.prepared.insert(sql.to_string(), name.clone());
        Ok(name)
    }

    /// Appends Bind (binary parameters and results) and Execute.
    fn bind_execute(&mut self, stmt: &str, params: &[Option<&[u8]>]) {
        let o = &mut self.out;
        o.push(b'B');
        let len_at = o.len();
        o.extend_from_slice(&[0; 4]);
        o.push(0); // unnamed portal
        o.extend_from_slice(stmt.as_bytes());
        o.push(0);
        o.extend_from_slice(&1i16.to_be_bytes());
        o.extend_from_slice(&1i16.to_be_bytes());
        o.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                Some(v) => {
                    o.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    o.extend_from_slice(v);
                }
                None => o.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        o.extend_from_slice(&1i16.to_be_bytes());
        o.extend_from_slice(&1i16.to_be_bytes());
        let len = (o.len() - len_at) as i32;
        o[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        o.extend_from_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
    }

    fn sync_and_send(&mut self) -> Result<(), BenchError> {
        self.out.extend_from_slice(&[b'S', 0, 0, 0, 4]);
        self.sock.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// Reads frames until `syncs` ReadyForQuery have arrived, handing each
    /// DataRow body to `row`.
    fn read_until_ready(
        &mut self,
        mut syncs: usize,
        mut row: impl FnMut(&[u8]) -> Result<(), BenchError>,
    ) -> Result<(), BenchError> {
        let mut error: Option<String> = None;
        while syncs > 0 {
            let avail = self.end - self.start;
            if avail >= 5 {
                let b = &self.inb[self.start..self.end];
                let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
                if avail > len {
                    let body = &b[5..len + 1];
                    match b[0] {
                        b'D' => row(body)?,
                        b'Z' => syncs -= 1,
                        b'E' => error = Some(error_message(body)),
                        _ => {}
                    }
                    self.start += len + 1;
                    continue;
                }
                if len + 1 > self.inb.len() {
                    self.inb.resize(len + 1, 0);
                }
            }
            // Move the partial frame to the front and read more.
            self.inb.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            let end = self.end;
            let n = self.sock.read(&mut self.inb[end..])?;
            if n == 0 {
                return Err("server closed the connection".into());
            }
            self.end += n;
        }
        match error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    fn simple(&mut self, sql: &str) -> Result<(), BenchError> {
        let mut b = BytesMut::new();
        frontend::query(sql, &mut b)?;
        self.sock.write_all(&b)?;
        self.read_until_ready(1, |_| Ok(()))
    }

    /// Runs one statement and decodes every row with `decode`.
    fn fetch<T>(
        &mut self,
        sql: &str,
        params: &[Option<&[u8]>],
        mut decode: impl FnMut(&mut Fields) -> Result<T, BenchError>,
    ) -> Result<Vec<T>, BenchError> {
        let stmt = self.stmt(sql, &[])?;
        self.bind_execute(&stmt, params);
        self.sync_and_send()?;
        let mut v = Vec::new();
        self.read_until_ready(1, |r| {
            v.push(decode(&mut Fields::new(r))?);
            Ok(())
        })?;
        Ok(v)
    }
}

/// The fields of a DataRow body, decoded by hand.
struct Fields<'a> {
    b: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(body: &'a [u8]) -> Self {
        Fields {
            b: body.get(2..).unwrap_or(&[]),
        }
    }
    fn next(&mut self) -> Result<Option<&'a [u8]>, BenchError> {
        let len = i32::from_be_bytes(self.b.get(..4).ok_or("short row")?.try_into()?);
        self.b = &self.b[4..];
        if len < 0 {
            return Ok(None);
        }
        let (v, rest) = self.b.split_at(len as usize);
        self.b = rest;
        Ok(Some(v))
    }
    fn int4(&mut self) -> Result<i32, BenchError> {
        Ok(i32::from_be_bytes(self.next()?.ok_or("null int4")?.try_into()?))
    }
    fn int8(&mut self) -> Result<i64, BenchError> {
        Ok(i64::from_be_bytes(self.next()?.ok_or("null int8")?.try_into()?))
    }
    fn float8(&mut self) -> Result<f64, BenchError> {
        Ok(f64::from_be_bytes(self.next()?.ok_or("null float8")?.try_into()?))
    }
    fn opt_int4(&mut self) -> Result<Option<i32>, BenchError> {
        self.next()?.map(|v| Ok(i32::from_be_bytes(v.try_into()?))).transpose()
    }
    fn text(&mut self) -> Result<String, BenchError> {
        Ok(std::str::from_utf8(self.next()?.ok_or("null text")?)?.to_owned())
    }
    fn opt_text(&mut self) -> Result<Option<String>, BenchError> {
        self.next()?.map(|v| Ok(std::str::from_utf8(v)?.to_owned())).transpose()
    }
    fn user(&mut self) -> Result<assoc::User, BenchError> {
        Ok(assoc::User {
            id: self.int4()?,
            name: self.text()?,
            hair_color: self.opt_text()?,
        })
    }
    /// A post, or `None` when its key is NULL (an outer join's empty side).
    fn opt_post(&mut self) -> Result<Option<assoc::Post>, BenchError> {
        let Some(id) = self.opt_int4()? else {
            return Ok(None);
        };
        Ok(Some(assoc::Post {
            id,
            user_id: self.int4()?,
            title: self.text()?,
            body: self.opt_text()?,
        }))
    }
    fn comment(&mut self) -> Result<assoc::Comment, BenchError> {
        Ok(assoc::Comment {
            id: self.int4()?,
            post_id: self.int4()?,
            text: self.text()?,
        })
    }
}

fn error_message(body: &[u8]) -> String {
    // Fields are (type byte, C string) pairs; 'M' is the message.
    let mut rest = body;
    let mut msg = String::from("server error");
    while let Some((&t, tail)) = rest.split_first() {
        if t == 0 {
            break;
        }
        let end = tail.iter().position(|&c| c == 0).unwrap_or(tail.len());
        if t == b'M' {
            msg = String::from_utf8_lossy(&tail[..end]).into_owned();
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    msg
}

/// A one-dimensional int4[] in binary form.
fn int4_array(v: &[i32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + v.len() * 8);
    for x in [1i32, 0, 23, v.len() as i32, 1] {
        b.extend_from_slice(&x.to_be_bytes());
    }
    for x in v {
        b.extend_from_slice(&4i32.to_be_bytes());
        b.extend_from_slice(&x.to_be_bytes());
    }
    b
}

impl Contender for Floor {
    fn run(&mut self, work: Workload, iters: u64, from: u64) -> Result<u64, BenchError> {
        let mut sum = 0u64;
        match work {
            Workload::Point(_) | Workload::Pipeline100(_) => {
                let per = if matches!(work, Workload::Point(_)) { 1 } else { 100 };
                let stmt = self.stmt(w::POINT_SQL, &[])?;
                // Bind/Execute encoded once; only the id's four bytes change.
                self.bind_execute(&stmt, &[Some(&[0; 4])]);
                let template = std::mem::take(&mut self.out);
                let id_at = 1 + 4 + 1 + stmt.len() + 1 + 2 + 2 + 2 + 4;
                for b in from..from + iters {
                    for i in b * per..(b + 1) * per {
                        let at = self.out.len() + id_at;
                        self.out.extend_from_slice(&template);
                        self.out[at..at + 4].copy_from_slice(&w::point_id(i).to_be_bytes());
                    }
                    self.sync_and_send()?;
                    self.read_until_ready(1, |r| {
                        let u = Fields::new(r).user()?;
                        sum += u.sum();
                        Ok(())
                    })?;
                }
            }
            Workload::Fetch10k => {
                for _ in 0..iters {
                    let rows = self.fetch(w::FETCH_SQL, &[], |f| {
                        Ok((f.int4()?, f.int8()?, f.text()?, f.float8()?))
                    })?;
                    sum += rows.iter().map(|(a, b, c, d)| w::row4_sum(*a, *b, c, *d)).sum::<u64>();
                }
            }
            Workload::InsertEach1000 => {
                let stmt = self.stmt(w::INSERT_RETURNING_SQL, &[])?;
                for _ in 0..iters {
                    self.simple("BEGIN")?;
                    for (name, hair) in w::new_users(1000) {
                        self.bind_execute(&stmt, &[Some(name.as_bytes()), hair.as_deref().map(str::as_bytes)]);
                        self.sync_and_send()?;
                        let mut id = 0;
                        self.read_until_ready(1, |r| {
                            id = Fields::new(r).int4()?;
                            Ok(())
                        })?;
                        if id <= 0 {
                            return Err("insert returned no id".into());
                        }
                        sum += w::inserted_sum(std::iter::once(name.len()));
                    }
                    self.simple("COMMIT")?;
                }
            }
            Workload::InsertBulk1000 | Workload::Insert(_) => {
                let (n, returning) = match work {
                    Workload::Insert(n) => (n, false),
                    _ => (1000, true),
                };
                let stmt = self.stmt(&crate::insert_sql(n, returning), &[])?;
                let users = w::new_users(n);
                for _ in 0..iters {
                    let params: Vec<Option<&[u8]>> = users
                        .iter()
                        .flat_map(|(name, hair)| [Some(name.as_bytes()), hair.as_deref().map(str::as_bytes)])
                        .collect();
                    self.bind_execute(&stmt, &params);
                    self.sync_and_send()?;
                    let mut ids = 0usize;
                    self.read_until_ready(1, |r| {
                        ids += (Fields::new(r).int4()? > 0) as usize;
                        Ok(())
                    })?;
                    if returning && ids != users.len() {
                        return Err("insert returned the wrong number of ids".into());
                    }
                    sum += w::inserted_sum(users.iter().map(|(n, _)| n.len()));
                }
            }
            Workload::Trivial(n) => {
                let p = n.to_be_bytes();
                for _ in 0..iters {
                    let users = self.fetch(w::TRIVIAL_SQL, &[Some(&p)], |f| f.user())?;
                    sum += users.iter().map(assoc::User::sum).sum::<u64>();
                }
            }
            Workload::MediumComplex => {
                for _ in 0..iters {
                    let rows = self.fetch(w::MEDIUM_SQL, &[Some(b"black")], |f| Ok((f.user()?, f.opt_post()?)))?;
                    sum += assoc::medium_sum(&rows);
                }
            }
            Workload::Associations(_) => {
                let p = w::ASSOC_USERS.to_be_bytes();
                for _ in 0..iters {
                    let users = self.fetch(w::ASSOC_USERS_SQL, &[Some(&p)], |f| f.user())?;
                    let ids = int4_array(&users.iter().map(|u| u.id).collect::<Vec<_>>());
                    let posts = self.fetch(w::ASSOC_POSTS_SQL, &[Some(&ids)], |f| {
                        f.opt_post()?.ok_or_else(|| "post without a key".into())
                    })?;
                    let ids = int4_array(&posts.iter().map(|p| p.id).collect::<Vec<_>>());
                    let comments = self.fetch(w::ASSOC_COMMENTS_SQL, &[Some(&ids)], |f| f.comment())?;
                    sum += assoc::tree_sum(&assoc::assemble(users, posts, comments));
                }
            }
            Workload::Connect(_) => {
                // Startup and authentication, then Terminate and close.
                for _ in 0..iters {
                    let mut f = Floor::connect(&self.target)?;
                    f.sock.write_all(&[b'X', 0, 0, 0, 4])?;
                    sum += 1;
                }
            }
            Workload::Stream1M => {
                let stmt = self.stmt(w::STREAM_SQL, &[])?;
                let n = w::STREAM_ROWS.to_be_bytes();
                for _ in 0..iters {
                    self.bind_execute(&stmt, &[Some(&n)]);
                    self.sync_and_send()?;
                    self.read_until_ready(1, |r| {
                        let mut f = Fields::new(r);
                        sum += f.int8()? as u64 + f.text()?.len() as u64;
                        Ok(())
                    })?;
                }
            }
        }
        Ok(sum)
    }
}
