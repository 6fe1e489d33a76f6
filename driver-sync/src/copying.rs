//! COPY through this driver: [`CopyIn`] is an [`io::Write`], [`CopyOut`]
//! an [`io::Read`]. The core frames, decodes and decides when to wait for
//! the socket; this file only runs its operations.

use std::io::{self, Read, Write};
use std::time::Instant;

use duet_core::copy::{self, Bytes};
use duet_core::{Error, Param, Row, Type};

use crate::Client;

/// Data for a running `COPY … FROM STDIN`. Written data leave in frames of
/// 64 KiB; a write waits for the socket only when 512 KiB are queued, so
/// memory stays bounded however much passes. [`CopyIn::finish`] ends it;
/// dropped unfinished, the server is sent CopyFail and keeps none of it.
pub struct CopyIn<'c> {
    client: &'c mut Client,
    copy: copy::CopyIn,
}

/// The data of a running `COPY … TO STDOUT`, as the server sends them.
/// Dropped before the end, the server is asked to stop and what still
/// comes is dropped unread.
pub struct CopyOut<'c> {
    client: &'c mut Client,
    copy: copy::CopyOut,
    /// The chunk being read through [`Read`].
    current: Bytes,
}

impl Client {
    /// Starts `COPY … FROM STDIN` (text, csv or binary, as `sql` says):
    ///
    /// ```no_run
    /// # use duet_sync::prelude::*;
    /// # fn f(client: &mut Client) -> Result<(), Error> {
    /// use std::io::Write;
    /// let mut copy = client.copy_in("COPY items (id, name) FROM STDIN (FORMAT csv)")?;
    /// copy.write_all(b"1,pen\n2,ink\n").map_err(Error::from)?;
    /// assert_eq!(copy.finish()?, 2);
    /// # Ok(()) }
    /// ```
    pub fn copy_in(&mut self, sql: &str) -> Result<CopyIn<'_>, Error> {
        let copy = copy::CopyIn::start(&mut self.conn, sql, Instant::now())?;
        Ok(CopyIn { client: self, copy })
    }

    /// Starts `COPY … FROM STDIN (FORMAT binary)` for rows written with
    /// [`CopyIn::write_row`], one value per type:
    ///
    /// ```no_run
    /// # use duet_sync::prelude::*;
    /// # fn f(client: &mut Client) -> Result<(), Error> {
    /// let mut copy = client.copy_in_binary("COPY items (id, name) FROM STDIN (FORMAT binary)", &[Type::INT4, Type::TEXT])?;
    /// copy.write_row(&[&1i32, &"pen"])?;
    /// copy.write_row(&[&2i32, &None::<&str>])?;
    /// assert_eq!(copy.finish()?, 2);
    /// # Ok(()) }
    /// ```
    pub fn copy_in_binary(&mut self, sql: &str, types: &[Type]) -> Result<CopyIn<'_>, Error> {
        let mut copy = self.copy_in(sql)?;
        copy.copy.binary(types);
        Ok(copy)
    }

    /// Runs `COPY … FROM STDIN` with everything `reader` gives; returns the
    /// number of rows copied.
    pub fn copy_in_from(&mut self, sql: &str, mut reader: impl Read) -> Result<u64, Error> {
        let mut copy = self.copy_in(sql)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return copy.finish(),
                Ok(n) => copy.write(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::from(e)),
            }
        }
    }

    /// Starts `COPY … TO STDOUT`: read the data with [`Read`] or
    /// [`CopyOut::chunk`].
    ///
    /// ```no_run
    /// # use duet_sync::prelude::*;
    /// # fn f(client: &mut Client) -> Result<(), Error> {
    /// let mut csv = String::new();
    /// use std::io::Read;
    /// client.copy_out("COPY items TO STDOUT (FORMAT csv)")?.read_to_string(&mut csv).map_err(Error::from)?;
    /// # Ok(()) }
    /// ```
    pub fn copy_out(&mut self, sql: &str) -> Result<CopyOut<'_>, Error> {
        let copy = copy::CopyOut::start(&mut self.conn, sql, Instant::now())?;
        Ok(CopyOut {
            client: self,
            copy,
            current: Bytes::new(),
        })
    }

    /// Starts `COPY … TO STDOUT (FORMAT binary)` whose columns have these
    /// types: read it with [`CopyOut::next_row`].
    pub fn copy_out_binary(&mut self, sql: &str, types: &[Type]) -> Result<CopyOut<'_>, Error> {
        let mut copy = self.copy_out(sql)?;
        copy.copy.binary(types);
        Ok(copy)
    }

    /// Runs `COPY … TO STDOUT` into `writer`; returns the number of rows.
    pub fn copy_out_to(&mut self, sql: &str, mut writer: impl Write) -> Result<u64, Error> {
        let mut copy = self.copy_out(sql)?;
        while let Some(chunk) = copy.chunk()? {
            writer.write_all(&chunk)?;
        }
        Ok(copy.rows().unwrap_or(0))
    }
}

impl CopyIn<'_> {
    /// A time limit for the whole copy, from now: when it passes the server
    /// is sent CopyFail, nothing is kept, and the next write or the finish
    /// fails with [`Error::Timeout`].
    pub fn timeout(mut self, limit: std::time::Duration) -> Self {
        let at = duet_core::deadline_after(Instant::now(), limit);
        self.copy.deadline(&mut self.client.conn, at);
        self
    }

    /// Queues data (any split; rows may straddle calls), waiting for the
    /// socket when much is queued. Fails with the server's error if the
    /// copy failed already.
    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.copy.write(&mut self.client.conn, data);
        self.settle()
    }

    /// Queues one row of a binary copy ([`Client::copy_in_binary`]).
    pub fn write_row(&mut self, values: &[Param<'_>]) -> Result<(), Error> {
        self.copy.write_row(&mut self.client.conn, values)?;
        self.settle()
    }

    /// Sends the end of the data; returns the number of rows copied, or
    /// the server's error (none of the data is then kept).
    pub fn finish(mut self) -> Result<u64, Error> {
        self.client.run(self.copy.finish())
    }

    fn settle(&mut self) -> Result<(), Error> {
        if self.copy.must_flush(&self.client.conn) {
            self.client.run(self.copy.flush())
        } else {
            Ok(())
        }
    }
}

impl Write for CopyIn<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        CopyIn::write(self, buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.client.run(self.copy.flush()).map_err(io::Error::other)
    }
}

impl Drop for CopyIn<'_> {
    fn drop(&mut self) {
        self.copy.abandon(&mut self.client.conn);
    }
}

impl CopyOut<'_> {
    /// A time limit for the whole copy, from now: when it passes the server
    /// is asked to cancel and the next read fails with [`Error::Timeout`].
    pub fn timeout(mut self, limit: std::time::Duration) -> Self {
        let at = duet_core::deadline_after(Instant::now(), limit);
        self.copy.deadline(&mut self.client.conn, at);
        self
    }

    /// The next chunk of data as the server sent it (`None` at the end).
    pub fn chunk(&mut self) -> Result<Option<Bytes>, Error> {
        if !self.current.is_empty() {
            return Ok(Some(std::mem::take(&mut self.current)));
        }
        self.client.run(self.copy.next_chunk())
    }

    /// The next row of a binary copy ([`Client::copy_out_binary`]).
    pub fn next_row(&mut self) -> Result<Option<Row>, Error> {
        self.client.run(self.copy.next_row())
    }

    /// The number of rows the server copied, once the end was read.
    pub fn rows(&self) -> Option<u64> {
        self.copy.rows()
    }
}

impl Read for CopyOut<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.current.is_empty() {
            match self.client.run(self.copy.next_chunk()).map_err(io::Error::other)? {
                Some(c) => self.current = c,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

impl Iterator for CopyOut<'_> {
    type Item = Result<Row, Error>;

    /// The rows of a binary copy.
    fn next(&mut self) -> Option<Result<Row, Error>> {
        self.next_row().transpose()
    }
}

impl Drop for CopyOut<'_> {
    fn drop(&mut self) {
        self.copy.abandon(&mut self.client.conn, Instant::now());
    }
}
