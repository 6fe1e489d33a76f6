//! COPY: statements whose data stream between client and server outside
//! the request/response shape.
//!
//! `FROM STDIN`: Parse, Bind and Execute leave with no Sync, and the data
//! follow at once rather than after the server's CopyInResponse (a round
//! trip saved: should the statement fail before copying, the server drops
//! the data with everything else up to the Sync). CopyDone or CopyFail,
//! then a Sync, end it. Until then nothing else may be sent: the server
//! would read it as the end of the copy, so other submits are refused. A
//! copy may join a batch (an `atomic` around a bulk load): its writer then
//! ends it before the batch goes on, and the batch's Sync follows.
//!
//! `TO STDOUT`: the data are kept as chunks the caller takes while they
//! arrive ([`Connection::take_copy_chunks`]); what was not taken comes with
//! the result, [`Response::CopyOut`](super::Response::CopyOut).

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::message::frontend;

use super::{io_to_encode, Connection, Entry, Phase, StmtState, Ticket};
use crate::params::{self, Encoded};
use crate::{trace, Error};

/// What a statement does with COPY data.
pub(super) enum CopyRole {
    /// Not submitted as a COPY.
    None,
    /// The server started a COPY the caller did not ask for, or in the
    /// other direction: its data go by unread and the statement fails so.
    Unread(&'static str),
    /// `FROM STDIN`, submitted by [`Connection::submit_copy_in`].
    In,
    /// `TO STDOUT`, submitted by [`Connection::submit_copy_out`]; the
    /// chunks arrived and not yet taken.
    Out(VecDeque<Bytes>),
}

/// Which way a COPY goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Direction {
    In,
    Out,
}

/// The header of a CopyData frame carrying `len` bytes.
pub(crate) fn copy_data_header(len: usize, out: &mut BytesMut) {
    out.put_u8(b'd');
    out.put_i32((len + 4) as i32);
}

impl Connection {
    /// Starts `COPY … FROM STDIN`: the caller then hands over the data and
    /// ends with [`Connection::copy_in_end`] (through
    /// [`crate::copy::CopyIn`]). Refused while another copy is open.
    pub fn submit_copy_in(&mut self, sql: &str, now: std::time::Instant) -> Result<Ticket, Error> {
        self.now = now;
        self.submit_copy(sql, Direction::In)
    }

    /// Starts `COPY … TO STDOUT`; its data arrive as chunks
    /// ([`Connection::take_copy_chunks`]).
    pub fn submit_copy_out(&mut self, sql: &str, now: std::time::Instant) -> Result<Ticket, Error> {
        self.now = now;
        self.submit_copy(sql, Direction::Out)
    }

    fn submit_copy(&mut self, sql: &str, dir: Direction) -> Result<Ticket, Error> {
        if let Phase::Closed(e) = &self.phase {
            return Err(e.clone());
        }
        if !super::request::first_word(sql).eq_ignore_ascii_case("COPY") {
            // Anything else would run, and its result be lost.
            return Err(Error::misuse(match dir {
                Direction::In => "copy_in takes a COPY … FROM STDIN statement",
                Direction::Out => "copy_out takes a COPY … TO STDOUT statement",
            }));
        }
        self.refuse_during_copy()?;
        if !self.is_ready() {
            return Err(Error::misuse("a COPY cannot start before the session is ready"));
        }
        self.forget_stale_types();
        let ticket = Ticket(self.next_ticket);
        let mut buf = std::mem::take(&mut self.out);
        let mark = buf.len();
        let encoded = self.encode_copy(sql, &mut buf);
        match encoded {
            Ok(()) => {
                let span = self.span_of_copy(mark, buf.len());
                let mut s = StmtState::plain(ticket, true, Some(Vec::new().into()), span);
                s.copy = match dir {
                    Direction::In => CopyRole::In,
                    Direction::Out => CopyRole::Out(VecDeque::new()),
                };
                self.queue.push_back(Entry::Stmt(Box::new(s)));
                match dir {
                    Direction::In => self.copy_in = Some(ticket),
                    Direction::Out => self.end_request(&mut buf),
                }
                self.out = buf;
            }
            Err(e) => {
                buf.truncate(mark);
                self.out = buf;
                return Err(e);
            }
        }
        self.next_ticket += 1;
        if let Some(span) = trace::statement(sql, &self.config, self.now) {
            self.traces.push((ticket, span));
        }
        if let Some(d) = self.default_deadline {
            self.deadlines.push((ticket, d));
        }
        Ok(ticket)
    }

    fn encode_copy(&mut self, sql: &str, buf: &mut BytesMut) -> Result<(), Error> {
        frontend::parse("", sql, std::iter::empty(), buf).map_err(|e| super::request::sql_error(sql, e))?;
        params::write_bind("", "", &Encoded::default(), buf)?;
        frontend::execute("", 0, buf).map_err(io_to_encode)
    }

    fn span_of_copy(&self, start: usize, end: usize) -> Option<(u64, u64)> {
        Some((self.sent + start as u64, (end - start) as u64))
    }

    /// Refuses a request while a `COPY FROM STDIN` is open.
    pub(super) fn refuse_during_copy(&self) -> Result<(), Error> {
        match self.copy_in {
            Some(_) => Err(Error::misuse(
                "a COPY FROM STDIN is in progress: finish or drop it before sending anything else",
            )),
            None => Ok(()),
        }
    }

    /// Whether the `COPY FROM STDIN` of `t` still takes data: false once it
    /// was ended, abandoned, failed by the server or timed out.
    pub fn copy_in_open(&self, t: Ticket) -> bool {
        self.copy_in == Some(t)
    }

    /// Queues one CopyData frame whose header and data the caller wrote in
    /// `frame` (see [`copy_data_header`]); dropped when the copy is no longer
    /// open (its result says why).
    pub(crate) fn copy_in_send(&mut self, t: Ticket, frame: &mut BytesMut) {
        if self.copy_in != Some(t) {
            frame.clear();
            return;
        }
        if self.out.is_empty() {
            // Everything before was sent: the frame becomes the send
            // buffer, without a copy.
            std::mem::swap(&mut self.out, frame);
        } else {
            self.out.extend_from_slice(frame);
            frame.clear();
        }
    }

    /// Queues `data` as one CopyData frame of the copy `t` (dropped when the
    /// copy is no longer open).
    pub(crate) fn copy_in_frame(&mut self, t: Ticket, data: &[u8]) {
        if self.copy_in == Some(t) {
            copy_data_header(data.len(), &mut self.out);
            self.out.extend_from_slice(data);
        }
    }

    /// Ends the `COPY FROM STDIN` of `t`: CopyDone, or CopyFail with `fail`
    /// as the reason the server reports. Then the Sync that ends its group.
    pub fn copy_in_end(&mut self, t: Ticket, fail: Option<&str>) {
        if self.copy_in != Some(t) {
            return;
        }
        match fail {
            None => frontend::copy_done(&mut self.out),
            Some(why) => {
                if frontend::copy_fail(&why.replace('\0', " "), &mut self.out).is_err() {
                    frontend::copy_fail("aborted by the client", &mut self.out).ok();
                }
            }
        }
        self.close_copy_in();
    }

    /// The copy takes no more data. The Sync that ends its group (which
    /// the server waits for after an error it raised mid-copy) goes out now,
    /// or with the batch the copy joined.
    pub(super) fn close_copy_in(&mut self) {
        if self.copy_in.take().is_some() {
            self.unsynced = true;
            if !self.in_batch() {
                self.push_sync();
                // A type lookup held back while the copy was open.
                self.send_type_lookup();
            }
        }
    }

    /// Gives the request `t` a time limit (or none): when it passes, a COPY
    /// FROM STDIN is ended by CopyFail, anything else cancelled, and the
    /// request fails with [`Error::Timeout`].
    pub fn set_deadline(&mut self, t: Ticket, at: Option<std::time::Instant>) {
        self.deadlines.retain(|(d, _)| *d != t);
        let pending = self.queue.iter().any(|e| super::entry_ticket(e) == Some(t));
        if let (Some(at), true) = (at, pending) {
            self.deadlines.push((t, at));
        }
    }

    /// Bytes queued and not yet handed to the socket: a writer waits for
    /// the socket when they pile up.
    pub fn unsent(&self) -> usize {
        self.out.len()
    }

    /// Moves the chunks of `COPY TO STDOUT` data that have arrived for `t`
    /// into `out`, while it is running. The rest come with its result.
    pub fn take_copy_chunks(&mut self, t: Ticket, out: &mut VecDeque<Bytes>) {
        for e in &mut self.queue {
            if let Entry::Stmt(s) = e {
                if s.ticket == t {
                    if let CopyRole::Out(chunks) = &mut s.copy {
                        out.append(chunks);
                    }
                    return;
                }
            }
        }
    }
}
