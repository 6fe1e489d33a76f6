//! COPY in both directions, written once for both drivers: [`CopyIn`]
//! frames what the caller writes and says when to wait for the socket;
//! [`CopyOut`] hands over the data as they arrive. Either may carry rows in
//! PostgreSQL's binary COPY format, encoded from `ToSql` values and decoded
//! into [`Row`]s (a binary COPY row is laid out like a DataRow's values).
//!
//! Memory stays bounded whatever passes through: a writer waits once more
//! than [`HIGH_WATER`] bytes are queued, and a reader takes what one socket
//! read brought before the next is made.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

pub use bytes::Bytes;
use bytes::{Buf, BufMut, BytesMut};
use postgres_types::{IsNull, Type};

use crate::connection::copy_data_header;
use crate::ops::{Operation, Step};
use crate::row::RowBlock;
use crate::{Column, Connection, Error, Param, Response, Row, Ticket};

/// Data gathered into one CopyData message before it is queued.
const FRAME: usize = 64 * 1024;
/// Queued bytes above which a writer waits for the socket to take them.
pub const HIGH_WATER: usize = 512 * 1024;
/// What a waiting writer lets the socket drain to before it goes on.
const LOW_WATER: usize = 128 * 1024;

/// The signature that opens a binary COPY stream, with its flags and
/// header-extension length (both zero).
const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// A `COPY … FROM STDIN` in progress.
///
/// A driver's writer calls [`CopyIn::write`] (or [`CopyIn::write_row`]),
/// runs [`CopyIn::flush`] whenever [`CopyIn::must_flush`] says so, and ends
/// with [`CopyIn::finish`]; dropped unfinished, it calls
/// [`CopyIn::abandon`] and the server is sent CopyFail, so none of the data
/// is kept.
pub struct CopyIn {
    ticket: Ticket,
    /// A CopyData frame being filled: a header slot, then data.
    frame: BytesMut,
    /// Column types, for rows written in the binary format.
    binary: Option<Vec<Type>>,
    header_written: bool,
    /// Finished or abandoned.
    over: bool,
    /// CopyDone was queued (or the copy ended otherwise).
    done_sent: bool,
    /// Why the copy failed, once known (given again to `finish`).
    failed: Option<Error>,
}

impl CopyIn {
    /// Sends the statement; its data may be written at once.
    pub fn start(conn: &mut Connection, sql: &str, now: Instant) -> Result<CopyIn, Error> {
        let ticket = conn.submit_copy_in(sql, now)?;
        Ok(CopyIn {
            ticket,
            frame: BytesMut::new(),
            binary: None,
            header_written: false,
            over: false,
            done_sent: false,
            failed: None,
        })
    }

    /// A time limit for the whole copy: when it passes the server is sent
    /// CopyFail, nothing is kept, and the copy fails with
    /// [`Error::Timeout`] (seen at the next wait for the socket or at
    /// [`CopyIn::finish`]).
    pub fn deadline(&mut self, conn: &mut Connection, at: Option<Instant>) {
        conn.set_deadline(self.ticket, at);
    }

    /// Rows are to be written with [`CopyIn::write_row`] in the binary
    /// format (the statement must say `FORMAT binary`), one value per
    /// type, in the statement's column order.
    pub fn binary(&mut self, types: &[Type]) {
        self.binary = Some(types.to_vec());
    }

    /// Queues raw COPY data (text, csv or binary, as the statement says):
    /// any split, rows may straddle calls.
    pub fn write(&mut self, conn: &mut Connection, mut data: &[u8]) {
        while !data.is_empty() {
            if self.frame.is_empty() {
                if data.len() >= FRAME {
                    // Large enough to be a frame of its own, copied once.
                    let n = data.len().min(16 * FRAME);
                    conn.copy_in_frame(self.ticket, &data[..n]);
                    data = &data[n..];
                    continue;
                }
                self.frame.reserve(FRAME + 5);
                self.frame.put_bytes(0, 5);
            }
            let n = (FRAME + 5 - self.frame.len()).min(data.len());
            self.frame.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.frame.len() >= FRAME + 5 {
                self.emit(conn);
            }
        }
    }

    /// Queues one row in the binary format (see [`CopyIn::binary`]). A
    /// value that cannot be encoded is an error and nothing of its row is
    /// queued.
    pub fn write_row(&mut self, conn: &mut Connection, values: &[Param<'_>]) -> Result<(), Error> {
        let Some(types) = &self.binary else {
            return Err(Error::misuse(
                "write_row needs the column types: start the copy as binary",
            ));
        };
        if values.len() != types.len() {
            return Err(Error::misuse(format!(
                "write_row got {} values for {} columns",
                values.len(),
                types.len()
            )));
        }
        if self.frame.is_empty() {
            self.frame.reserve(FRAME + 5);
            self.frame.put_bytes(0, 5);
        }
        if !self.header_written {
            self.frame.extend_from_slice(BINARY_HEADER);
            self.header_written = true;
        }
        let mark = self.frame.len();
        self.frame.put_i16(values.len() as i16);
        for (i, (v, ty)) in values.iter().zip(types).enumerate() {
            let at = self.frame.len();
            self.frame.put_i32(0);
            match v.to_sql_checked(ty, &mut self.frame) {
                Ok(IsNull::No) => {
                    let len = self.frame.len() - at - 4;
                    let Ok(len) = i32::try_from(len) else {
                        self.frame.truncate(mark);
                        return Err(Error::encode(format!("value {i} is over 2 GiB")));
                    };
                    self.frame[at..at + 4].copy_from_slice(&len.to_be_bytes());
                }
                Ok(IsNull::Yes) => {
                    self.frame.truncate(at);
                    self.frame.put_i32(-1);
                }
                Err(e) => {
                    self.frame.truncate(mark);
                    return Err(Error::encode(format!("value {i} of the row as {ty}: {e}")));
                }
            }
        }
        if self.frame.len() >= FRAME + 5 {
            self.emit(conn);
        }
        Ok(())
    }

    /// Whether the writer should run [`CopyIn::flush`] now: the queue is
    /// long, or the copy ended early (an error from the server, a time
    /// limit), which the flush reports.
    pub fn must_flush(&self, conn: &Connection) -> bool {
        conn.unsent() > HIGH_WATER || !conn.copy_in_open(self.ticket)
    }

    /// Waits until the socket took most of what is queued; fails with the
    /// server's error when the copy ended early.
    pub fn flush(&mut self) -> Flush<'_> {
        Flush { copy: self }
    }

    /// Sends CopyDone and waits for the number of rows copied.
    pub fn finish(&mut self) -> Finish<'_> {
        Finish { copy: self }
    }

    /// The writer is dropped unfinished: the server is sent CopyFail (or,
    /// if it finished already, its answer is no longer awaited).
    pub fn abandon(&mut self, conn: &mut Connection) {
        if !self.over {
            self.over = true;
            conn.abandon(self.ticket);
        }
    }

    /// Whether the copy finished or was abandoned.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// Whether the end of the data was queued: nothing more will be sent.
    pub fn finishing(&self) -> bool {
        self.done_sent
    }

    /// The ticket its result comes under.
    pub fn ticket(&self) -> Ticket {
        self.ticket
    }

    fn emit(&mut self, conn: &mut Connection) {
        if self.frame.len() <= 5 {
            return;
        }
        let len = self.frame.len() - 5;
        let mut header = BytesMut::with_capacity(5);
        copy_data_header(len, &mut header);
        self.frame[..5].copy_from_slice(&header);
        conn.copy_in_send(self.ticket, &mut self.frame);
    }

    /// The copy's outcome once the connection has it.
    fn outcome(&mut self, conn: &mut Connection) -> Option<Result<u64, Error>> {
        if let Some(e) = &self.failed {
            return Some(Err(e.clone()));
        }
        let r = match conn.take_result(self.ticket)? {
            Ok(Response::Rows(q)) => Ok(q.rows_affected()),
            Ok(_) => Err(Error::protocol("internal: a COPY gave another response")),
            Err(e) => Err(e),
        };
        self.over = true;
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        Some(r)
    }
}

/// See [`CopyIn::flush`].
pub struct Flush<'a> {
    copy: &'a mut CopyIn,
}

impl Operation for Flush<'_> {
    type Output = ();

    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<()> {
        let copy = &mut *self.copy;
        conn.handle_timeout(now);
        if copy.over {
            return Step::Ready(Err(copy
                .failed
                .clone()
                .unwrap_or_else(|| Error::misuse("the COPY is over: nothing more can be written"))));
        }
        if conn.copy_in_open(copy.ticket) {
            copy.emit(conn);
            return if conn.unsent() <= LOW_WATER {
                Step::Ready(Ok(()))
            } else {
                Step::Pending
            };
        }
        match copy.outcome(conn) {
            None => Step::Pending,
            Some(Err(e)) => Step::Ready(Err(e)),
            Some(Ok(_)) => Step::Ready(Err(Error::protocol("internal: a COPY ended before its data did"))),
        }
    }

    fn abandon(&mut self, _conn: &mut Connection) {
        // The copy outlives a dropped flush; dropping the writer ends it.
    }
}

/// See [`CopyIn::finish`]. Polling a new one where another left off is
/// the same as polling that one.
pub struct Finish<'a> {
    copy: &'a mut CopyIn,
}

impl Operation for Finish<'_> {
    type Output = u64;

    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<u64> {
        let copy = &mut *self.copy;
        if !copy.done_sent {
            copy.done_sent = true;
            // A time limit that passed while the caller produced data ends
            // the copy now (CopyFail), before CopyDone could make it count.
            conn.handle_timeout(now);
            if copy.binary.is_some() && conn.copy_in_open(copy.ticket) {
                if !copy.header_written {
                    copy.write(conn, BINARY_HEADER);
                    copy.header_written = true;
                }
                copy.write(conn, &(-1i16).to_be_bytes());
            }
            copy.emit(conn);
            conn.copy_in_end(copy.ticket, None);
        }
        match copy.outcome(conn) {
            None => Step::Pending,
            Some(r) => Step::Ready(r),
        }
    }

    fn abandon(&mut self, conn: &mut Connection) {
        self.copy.abandon(conn)
    }
}

/// A `COPY … TO STDOUT` in progress: [`CopyOut::next_chunk`] hands over
/// the data as the server sent them, [`CopyOut::next_row`] decodes the
/// binary format into rows. Dropped before the end, [`CopyOut::abandon`]
/// asks the server to stop, and what still arrives is dropped unread.
pub struct CopyOut {
    ticket: Ticket,
    chunks: VecDeque<Bytes>,
    /// The number of rows the server reported, once the copy ended.
    rows: Option<u64>,
    ended: bool,
    binary: Option<BinaryRows>,
}

impl CopyOut {
    pub fn start(conn: &mut Connection, sql: &str, now: Instant) -> Result<CopyOut, Error> {
        let ticket = conn.submit_copy_out(sql, now)?;
        Ok(CopyOut {
            ticket,
            chunks: VecDeque::new(),
            rows: None,
            ended: false,
            binary: None,
        })
    }

    /// A time limit for the whole copy: when it passes the server is asked
    /// to cancel and the copy fails with [`Error::Timeout`].
    pub fn deadline(&mut self, conn: &mut Connection, at: Option<Instant>) {
        conn.set_deadline(self.ticket, at);
    }

    /// The data are in the binary format (the statement must say `FORMAT
    /// binary`) with columns of these types: read them with
    /// [`CopyOut::next_row`].
    pub fn binary(&mut self, types: &[Type]) {
        let columns: Arc<[Column]> = types
            .iter()
            .enumerate()
            .map(|(i, t)| Column {
                name: format!("column{}", i + 1),
                type_: t.clone(),
                table_oid: 0,
                column_id: 0,
            })
            .collect();
        self.binary = Some(BinaryRows::new(columns));
    }

    /// The next chunk of data (`None` at the end). Chunks follow the
    /// server's messages: in text and csv, one row each.
    pub fn next_chunk(&mut self) -> NextChunk<'_> {
        NextChunk { copy: self }
    }

    /// The next row of a binary copy (`None` at the end).
    pub fn next_row(&mut self) -> NextRow<'_> {
        NextRow { copy: self }
    }

    /// The number of rows the server copied, once the end was read.
    pub fn rows(&self) -> Option<u64> {
        self.rows
    }

    /// Whether the end was read (or the copy failed).
    pub fn is_over(&self) -> bool {
        self.ended
    }

    /// The reader is dropped before the end: the server is asked to stop.
    pub fn abandon(&mut self, conn: &mut Connection, now: Instant) {
        if !self.ended {
            self.ended = true;
            conn.abandon(self.ticket);
            conn.cancel_abandoned(now);
        }
    }

    fn poll_chunk(&mut self, conn: &mut Connection) -> Step<Option<Bytes>> {
        if let Some(c) = self.chunks.pop_front() {
            return Step::Ready(Ok(Some(c)));
        }
        if self.ended {
            return Step::Ready(Ok(None));
        }
        conn.take_copy_chunks(self.ticket, &mut self.chunks);
        if let Some(c) = self.chunks.pop_front() {
            return Step::Ready(Ok(Some(c)));
        }
        match conn.take_result(self.ticket) {
            None => Step::Pending,
            Some(r) => {
                self.ended = true;
                match r {
                    Ok(Response::CopyOut { rest, tag }) => {
                        self.rows = tag.as_deref().and_then(|t| t.rsplit(' ').next()?.parse().ok());
                        self.chunks = rest;
                        Step::Ready(Ok(self.chunks.pop_front()))
                    }
                    Ok(_) => Step::Ready(Err(Error::protocol("internal: a COPY gave another response"))),
                    Err(e) => Step::Ready(Err(e)),
                }
            }
        }
    }
}

/// See [`CopyOut::next_chunk`].
pub struct NextChunk<'a> {
    copy: &'a mut CopyOut,
}

impl Operation for NextChunk<'_> {
    type Output = Option<Bytes>;

    fn poll(&mut self, conn: &mut Connection, _now: Instant) -> Step<Option<Bytes>> {
        self.copy.poll_chunk(conn)
    }

    fn abandon(&mut self, _conn: &mut Connection) {
        // The copy outlives a dropped read; dropping the reader ends it.
    }
}

/// See [`CopyOut::next_row`].
pub struct NextRow<'a> {
    copy: &'a mut CopyOut,
}

impl Operation for NextRow<'_> {
    type Output = Option<Row>;

    fn poll(&mut self, conn: &mut Connection, _now: Instant) -> Step<Option<Row>> {
        loop {
            let Some(binary) = &mut self.copy.binary else {
                return Step::Ready(Err(Error::misuse(
                    "next_row needs the column types: read the copy as binary",
                )));
            };
            match binary.next() {
                Err(e) => return Step::Ready(Err(e)),
                Ok(Some(row)) => return Step::Ready(Ok(Some(row))),
                Ok(None) => {}
            }
            match self.copy.poll_chunk(conn) {
                Step::Pending => return Step::Pending,
                Step::Ready(Err(e)) => return Step::Ready(Err(e)),
                Step::Ready(Ok(Some(chunk))) => {
                    if let Some(b) = &mut self.copy.binary {
                        b.feed(chunk);
                    }
                }
                Step::Ready(Ok(None)) => {
                    let Some(binary) = &self.copy.binary else { continue };
                    return Step::Ready(binary.finish().map(|()| None));
                }
            }
        }
    }

    fn abandon(&mut self, _conn: &mut Connection) {}
}

/// Splits binary COPY data into rows. The data come in chunks that need
/// not end on a row (PostgreSQL sends one row a chunk, but nothing says it
/// must): a row's start is kept until its end comes, each byte copied at
/// most once, and a row may not exceed what PostgreSQL can send.
struct BinaryRows {
    columns: Arc<[Column]>,
    /// Data joined from several chunks, not made into rows yet.
    pending: BytesMut,
    /// The current chunk while nothing is pending: rows are taken from its
    /// front without a copy.
    chunk: Bytes,
    header_read: bool,
    trailer_read: bool,
}

/// The most one row (or the header's extension) may take: a value is at
/// most 1 GiB in PostgreSQL.
const MAX_ROW: usize = (1 << 30) + (1 << 20);

/// What the front of binary COPY data holds.
enum Front {
    /// Not enough bytes to tell.
    More,
    /// The header, this many bytes long.
    Header(usize),
    /// A row: its value count, where its values start and where it ends.
    Row(usize, usize, usize),
    /// The trailer (two bytes).
    Trailer,
}

fn front(data: &[u8], header_read: bool) -> Result<Front, Error> {
    if !header_read {
        if data.len() < BINARY_HEADER.len() {
            return Ok(Front::More);
        }
        if data[..11] != BINARY_HEADER[..11] {
            return Err(Error::protocol("binary COPY data without its signature"));
        }
        let ext = u32::from_be_bytes([data[15], data[16], data[17], data[18]]) as usize;
        if ext > MAX_ROW {
            return Err(Error::protocol("binary COPY header extension too long"));
        }
        return Ok(if data.len() < 19 + ext {
            Front::More
        } else {
            Front::Header(19 + ext)
        });
    }
    if data.len() < 2 {
        return Ok(Front::More);
    }
    let count = i16::from_be_bytes([data[0], data[1]]);
    if count == -1 {
        return Ok(Front::Trailer);
    }
    let count = usize::try_from(count).map_err(|_| Error::protocol("binary COPY row with a negative count"))?;
    let mut end = 2usize;
    for _ in 0..count {
        let Some(len) = data.get(end..end + 4) else {
            return Ok(Front::More);
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        if len < -1 {
            return Err(Error::protocol("binary COPY value with a negative length"));
        }
        end = end.saturating_add(4).saturating_add(usize::try_from(len).unwrap_or(0));
        if end > MAX_ROW {
            return Err(Error::protocol("binary COPY row over 1 GiB"));
        }
    }
    Ok(if end > data.len() {
        Front::More
    } else {
        Front::Row(count, 2, end)
    })
}

impl BinaryRows {
    fn new(columns: Arc<[Column]>) -> Self {
        BinaryRows {
            columns,
            pending: BytesMut::new(),
            chunk: Bytes::new(),
            header_read: false,
            trailer_read: false,
        }
    }

    fn feed(&mut self, chunk: Bytes) {
        if self.pending.is_empty() && self.chunk.is_empty() {
            self.chunk = chunk;
        } else {
            let rest = std::mem::take(&mut self.chunk);
            self.pending.extend_from_slice(&rest);
            self.pending.extend_from_slice(&chunk);
        }
    }

    /// The next whole row of what was fed, if there is one.
    fn next(&mut self) -> Result<Option<Row>, Error> {
        loop {
            let joined = self.chunk.is_empty();
            let data: &[u8] = if joined { &self.pending } else { &self.chunk };
            if data.is_empty() {
                return Ok(None);
            }
            if self.trailer_read {
                return Err(Error::protocol("binary COPY data after its trailer"));
            }
            match front(data, self.header_read)? {
                Front::More => {
                    if !joined {
                        // The row's start waits for its end: copied once.
                        let rest = std::mem::take(&mut self.chunk);
                        self.pending.extend_from_slice(&rest);
                    }
                    return Ok(None);
                }
                Front::Header(n) => {
                    self.header_read = true;
                    self.consume(joined, n);
                }
                Front::Trailer => {
                    self.trailer_read = true;
                    self.consume(joined, 2);
                }
                Front::Row(count, start, end) => {
                    let bytes = if joined {
                        self.pending.split_to(end).freeze()
                    } else {
                        self.chunk.split_to(end)
                    };
                    let block = RowBlock::new(self.columns.clone(), bytes);
                    return Row::new(&block, start..end, count).map(Some);
                }
            }
        }
    }

    fn consume(&mut self, joined: bool, n: usize) {
        if joined {
            self.pending.advance(n);
        } else {
            self.chunk.advance(n);
        }
    }

    /// The data ended: they must have ended with the trailer.
    fn finish(&self) -> Result<(), Error> {
        if self.trailer_read && self.pending.is_empty() && self.chunk.is_empty() {
            Ok(())
        } else {
            Err(Error::protocol("binary COPY data ended without their trailer"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(rows: &[(i32, Option<&str>)]) -> Vec<u8> {
        let mut s = BINARY_HEADER.to_vec();
        for (id, name) in rows {
            s.extend_from_slice(&2i16.to_be_bytes());
            s.extend_from_slice(&4i32.to_be_bytes());
            s.extend_from_slice(&id.to_be_bytes());
            match name {
                Some(n) => {
                    s.extend_from_slice(&(n.len() as i32).to_be_bytes());
                    s.extend_from_slice(n.as_bytes());
                }
                None => s.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        s.extend_from_slice(&(-1i16).to_be_bytes());
        s
    }

    fn columns() -> Arc<[Column]> {
        [Type::INT4, Type::TEXT]
            .into_iter()
            .map(|t| Column {
                name: String::new(),
                type_: t,
                table_oid: 0,
                column_id: 0,
            })
            .collect()
    }

    #[test]
    fn rows_come_out_whole_however_the_data_are_cut() {
        let rows = [(1, Some("one")), (2, None), (3, Some("three, a longer one"))];
        let data = stream(&rows);
        for size in 1..=data.len() {
            let mut b = BinaryRows::new(columns());
            let mut got = Vec::new();
            for piece in data.chunks(size) {
                b.feed(Bytes::copy_from_slice(piece));
                while let Some(r) = b.next().unwrap() {
                    got.push((r.get::<i32>(0), r.get::<Option<String>>(1)));
                }
            }
            b.finish().unwrap();
            let want: Vec<_> = rows.iter().map(|(i, n)| (*i, n.map(str::to_string))).collect();
            assert_eq!(got, want, "cut every {size} bytes");
        }
    }

    #[test]
    fn malformed_data_are_errors_not_panics() {
        let data = stream(&[(1, Some("x"))]);
        for cut in 0..data.len() {
            // Truncated: never a row out of bounds; the end says it is cut.
            let mut b = BinaryRows::new(columns());
            b.feed(Bytes::copy_from_slice(&data[..cut]));
            while let Ok(Some(_)) = b.next() {}
            assert!(b.finish().is_err());
            // One byte changed anywhere: an error or a row, never a panic.
            let mut bad = data.clone();
            bad[cut] ^= 0xff;
            let mut b = BinaryRows::new(columns());
            b.feed(Bytes::from(bad));
            while let Ok(Some(r)) = b.next() {
                let _ = (r.try_get::<i32>(0), r.try_get::<Option<String>>(1));
            }
        }
        let mut b = BinaryRows::new(columns());
        let mut huge = BINARY_HEADER.to_vec();
        huge.extend_from_slice(&1i16.to_be_bytes());
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        b.feed(Bytes::from(huge));
        assert!(
            b.next().is_err(),
            "a value over 1 GiB is refused before it is waited for"
        );
    }
}
