//! The receiving side: each server message is matched, by order, to the
//! request at the front of the queue; results are collected per sync group
//! and finished at its `ReadyForQuery`, errors fail or skip the rest of the
//! group, and writes a rolled-back group did are voided.

use std::sync::Arc;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::copy::CopyRole;
use super::{
    entry_ticket, io_to_encode, proto, Connection, Entry, Event, Phase, Portal, PortalInner, QueryResult, Response,
    Statement, StatementInner, TransactionStatus,
};
use crate::row::{Column, Row, RowBlock, SimpleMessage, SimpleRow};
use crate::{DbError, Error};

impl Connection {
    pub(super) fn handle_message(&mut self, msg: Message) -> Result<(), Error> {
        match msg {
            // Asynchronous messages may arrive at any time.
            Message::NoticeResponse(body) => {
                let e = DbError::parse_notice(&body)?;
                self.push_event(Event::Notice(Box::new(e)));
                return Ok(());
            }
            Message::NotificationResponse(body) => {
                let ev = Event::Notification {
                    process_id: body.process_id(),
                    channel: body.channel().map_err(proto)?.to_string(),
                    payload: body.message().map_err(proto)?.to_string(),
                };
                self.push_event(ev);
                return Ok(());
            }
            Message::ParameterStatus(body) => {
                let name = body.name().map_err(proto)?.to_string();
                let value = body.value().map_err(proto)?.to_string();
                self.parameters.insert(name.clone(), value.clone());
                if self.is_ready() {
                    self.push_event(Event::ParameterStatus { name, value });
                }
                return Ok(());
            }
            _ => {}
        }
        match self.phase {
            Phase::Ready => self.handle_response(msg),
            Phase::Closed(_) => Ok(()),
            _ => self.handle_startup(msg),
        }
    }

    fn handle_response(&mut self, msg: Message) -> Result<(), Error> {
        match msg {
            Message::ErrorResponse(body) => {
                let db = DbError::parse(&body)?;
                let fatal = db.severity == "FATAL" || db.severity == "PANIC";
                self.handle_error(Error::Db(Box::new(db.clone())));
                if fatal {
                    return Err(Error::Db(Box::new(db)));
                }
                return Ok(());
            }
            Message::ReadyForQuery(body) => {
                self.tx_status = tx_status(body.status())?;
                if !matches!(self.queue.front(), Some(Entry::Sync | Entry::Simple(_))) {
                    // Left in the queue, the request fails with the
                    // connection instead of vanishing.
                    return Err(Error::protocol("ReadyForQuery with no sync point pending"));
                }
                match self.queue.pop_front() {
                    Some(Entry::Sync) => {}
                    Some(Entry::Simple(s)) => {
                        let r = match s.error {
                            Some(e) => Err(e),
                            None => Ok(Response::Simple(s.messages)),
                        };
                        self.group.push((s.ticket, r));
                    }
                    _ => return Err(Error::protocol("ReadyForQuery with no sync point pending")),
                }
                if self.ending_tx.is_some_and(|e| self.group.iter().any(|(t, _)| *t == e)) {
                    self.ending_tx = None;
                }
                if std::mem::take(&mut self.group_failed) {
                    self.void_rolled_back();
                }
                for (t, r) in std::mem::take(&mut self.group) {
                    self.finish(t, r);
                }
                if !self
                    .queue
                    .iter()
                    .any(|e| entry_ticket(e).is_some_and(|t| self.timed_out.contains(&t)))
                {
                    // Nothing timed out is left: no cancel is owed, and one
                    // sent now would hit whatever runs next.
                    self.cancel_grace_until = None;
                    self.cancel_wanted = false;
                }
                // A cancel stops one statement: if the next one to run is
                // past its deadline too, it needs a cancel of its own.
                let next = self.queue.iter().find_map(entry_ticket);
                if next.is_some_and(|t| self.timed_out.contains(&t)) {
                    self.cancel_wanted = self.backend_key.is_some();
                }
                return Ok(());
            }
            _ => {}
        }
        let front = self
            .queue
            .front_mut()
            .ok_or_else(|| Error::protocol(format!("unexpected message {} with nothing in flight", describe(&msg))))?;
        match (front, msg) {
            (Entry::Stmt(s), Message::ParseComplete) if s.parse_sent && !s.parsed => s.parsed = true,
            (Entry::Stmt(s), Message::BindComplete) if !s.bound => s.bound = true,
            (Entry::Stmt(s), Message::RowDescription(body)) => {
                let mut unknown = Vec::new();
                let columns = columns_of(&body, &self.types, &mut unknown)?;
                if !unknown.is_empty() {
                    // Not cached with placeholders: the next run describes
                    // again and finds the types known.
                    self.types.await_types(s.ticket, unknown);
                } else if let Some(name) = s.parses.as_ref().or(s.learns.as_ref()) {
                    self.cache.set_columns(name, columns.clone());
                }
                s.columns = Some(columns);
                if s.binds.is_some() {
                    self.complete_stmt(None);
                }
            }
            (Entry::Stmt(s), Message::NoData) => {
                let columns: Arc<[Column]> = Arc::from(Vec::new());
                if let Some(name) = s.parses.as_ref().or(s.learns.as_ref()) {
                    self.cache.set_columns(name, columns.clone());
                }
                s.columns = Some(columns);
                if s.binds.is_some() {
                    self.complete_stmt(None);
                }
            }
            (Entry::Stmt(_), Message::CommandComplete(body)) => {
                let tag = body.tag().map_err(proto)?.to_string();
                self.complete_stmt(Some(tag));
            }
            (Entry::Stmt(_), Message::EmptyQueryResponse) | (Entry::Stmt(_), Message::PortalSuspended) => {
                self.complete_stmt(None);
            }
            (Entry::Stmt(s), Message::CopyInResponse(_)) if matches!(s.copy, CopyRole::In) => {
                // Its data are on their way already.
            }
            (Entry::Stmt(s), Message::CopyOutResponse(_)) => {
                if !matches!(s.copy, CopyRole::Out(_)) {
                    s.copy = CopyRole::Unread(match s.copy {
                        CopyRole::In => "copy_in was given a COPY … TO STDOUT: read it with copy_out",
                        _ => "COPY … TO STDOUT runs through copy_out, not query",
                    });
                }
            }
            (Entry::Stmt(s), Message::CopyData(body)) => match &mut s.copy {
                // Nobody will read an abandoned copy's data: not kept.
                CopyRole::Out(chunks) if !self.abandoned.contains(&s.ticket) => chunks.push_back(body.into_bytes()),
                CopyRole::Out(_) | CopyRole::Unread(_) => {}
                _ => return Err(Error::protocol("CopyData for a statement that is not copying out")),
            },
            (Entry::Stmt(s), Message::CopyDone) if matches!(s.copy, CopyRole::Out(_) | CopyRole::Unread(_)) => {}
            (entry @ (Entry::Stmt(_) | Entry::Simple(_)), Message::CopyInResponse(_)) => {
                // Not submitted as a copy in: refused, so the server
                // answers with an error instead of waiting for data.
                let why = match entry {
                    Entry::Stmt(s) if matches!(s.copy, CopyRole::Out(_)) => {
                        "copy_out was given a COPY … FROM STDIN: send its data with copy_in"
                    }
                    _ => "COPY … FROM STDIN runs through copy_in",
                };
                let is_stmt = matches!(entry, Entry::Stmt(_));
                frontend::copy_fail(why, &mut self.out).map_err(io_to_encode)?;
                if is_stmt && self.queue.len() == 2 && matches!(self.queue.get(1), Some(Entry::Sync)) {
                    // The server ignored the Sync that came right after the
                    // statement, being in copy-in mode: the queued sync
                    // point needs a new one. (Had more followed, the server
                    // would have failed the copy on it; `query` refuses
                    // such statements before they leave, see
                    // `refuse_stdio_copy`.)
                    frontend::sync(&mut self.out);
                }
            }
            (Entry::Simple(s), Message::CopyOutResponse(_)) => {
                s.error
                    .get_or_insert_with(|| Error::misuse("COPY … TO STDOUT runs through copy_out, not a simple query"));
            }
            (Entry::Simple(_), Message::CopyData(_)) | (Entry::Simple(_), Message::CopyDone) => {}
            (Entry::Prepare(p), Message::ParseComplete) if !p.parsed => p.parsed = true,
            (Entry::Prepare(p), Message::ParameterDescription(body)) => {
                let oids = body.parameters().collect::<Vec<_>>().map_err(proto)?;
                let mut unknown = Vec::new();
                p.params = Some(oids.into_iter().map(|o| self.types.or_note(o, &mut unknown)).collect());
                if !unknown.is_empty() {
                    self.types.await_types(p.ticket, unknown);
                }
            }
            (Entry::Prepare(p), Message::RowDescription(body)) => {
                let mut unknown = Vec::new();
                let columns = columns_of(&body, &self.types, &mut unknown)?;
                if !unknown.is_empty() {
                    self.types.await_types(p.ticket, unknown);
                }
                self.complete_prepare(columns)?;
            }
            (Entry::Prepare(_), Message::NoData) => self.complete_prepare(Arc::from(Vec::new()))?,
            (Entry::Simple(s), Message::RowDescription(body)) => {
                let mut names = Vec::new();
                let mut fields = body.fields();
                while let Some(f) = fields.next().map_err(proto)? {
                    names.push(f.name().to_string());
                }
                s.columns = Some(names.into());
            }
            (Entry::Simple(s), Message::DataRow(body)) => {
                let columns = s
                    .columns
                    .clone()
                    .ok_or_else(|| Error::protocol("DataRow before RowDescription"))?;
                let buffer = body.buffer();
                let mut values = Vec::with_capacity(columns.len());
                let mut ranges = body.ranges();
                while let Some(r) = ranges.next().map_err(proto)? {
                    values.push(match r {
                        Some(r) => Some(
                            std::str::from_utf8(
                                buffer
                                    .get(r)
                                    .ok_or_else(|| Error::protocol("DataRow range out of bounds"))?,
                            )
                            .map_err(|_| Error::protocol("simple query value is not UTF-8"))?
                            .to_string(),
                        ),
                        None => None,
                    });
                }
                if values.len() != columns.len() {
                    return Err(Error::protocol("DataRow width differs from RowDescription"));
                }
                s.messages.push(SimpleMessage::Row(SimpleRow { columns, values }));
            }
            (Entry::Simple(s), Message::CommandComplete(body)) => {
                s.messages
                    .push(SimpleMessage::CommandComplete(body.tag().map_err(proto)?.to_string()));
                s.columns = None;
            }
            (Entry::Simple(s), Message::EmptyQueryResponse) => s.messages.push(SimpleMessage::Empty),
            (Entry::Close, Message::CloseComplete) => {
                self.queue.pop_front();
            }
            (_, msg) => {
                return Err(Error::protocol(format!(
                    "unexpected message {} for the request in flight",
                    describe(&msg)
                )))
            }
        }
        Ok(())
    }

    /// Turns the complete DataRow frames at the front of the input (the
    /// first one is known to be whole and of a sane length) into rows of
    /// the statement in flight, all sharing one block of bytes.
    pub(super) fn data_rows(&mut self) -> Result<(), Error> {
        let max = self.config.max_message_size.min(u32::MAX as usize);
        let input = &self.input[..];
        let mut total = 0;
        // Frames the general path must judge (an insane length, another
        // message) end the batch; so does a block reaching 4 GiB.
        while input.len() >= total + 5 && input[total] == b'D' {
            let len = i32::from_be_bytes([input[total + 1], input[total + 2], input[total + 3], input[total + 4]]);
            let Ok(len) = usize::try_from(len) else { break };
            let end = total + 1 + len;
            if len < 4 || len + 1 > max || end > input.len() || end > u32::MAX as usize {
                break;
            }
            total = end;
        }
        if total == 0 {
            // The caller checked the first frame; never loop on nothing.
            return Err(Error::protocol("internal: no whole DataRow to take"));
        }
        let Some(Entry::Stmt(s)) = self.queue.front_mut() else {
            return Err(Error::protocol("DataRow with no statement in flight"));
        };
        let columns = s
            .columns
            .clone()
            .ok_or_else(|| Error::protocol("DataRow before RowDescription"))?;
        let learnt = self.types.watch(&columns);
        let block = RowBlock::watched(columns, self.input.split_to(total).freeze(), learnt);
        let data = block.data();
        let mut at = 0;
        while at < total {
            let len = u32::from_be_bytes([data[at + 1], data[at + 2], data[at + 3], data[at + 4]]) as usize;
            let end = at + 1 + len;
            if len < 6 {
                return Err(Error::protocol("DataRow shorter than its header"));
            }
            let count = i16::from_be_bytes([data[at + 5], data[at + 6]]);
            let count = usize::try_from(count).map_err(|_| Error::protocol("DataRow with a negative value count"))?;
            s.rows.push(Row::new(&block, at + 7..end, count)?);
            at = end;
        }
        Ok(())
    }

    fn complete_stmt(&mut self, tag: Option<String>) {
        if let Some(Entry::Stmt(s)) = self.queue.pop_front() {
            let s = *s;
            let columns = || s.columns.clone().unwrap_or_else(|| Arc::from(Vec::new()));
            if let Some((name, sql)) = &s.binds {
                let portal = Portal(Arc::new(PortalInner {
                    name: name.to_string(),
                    sql: sql.clone(),
                    columns: columns(),
                }));
                self.group.push((s.ticket, Ok(Response::Portal(portal))));
                return;
            }
            let r = match s.copy {
                // The data went by unread: never report that as success.
                CopyRole::Unread(why) => Err(Error::misuse(why)),
                CopyRole::Out(rest) => Ok(Response::CopyOut { rest, tag }),
                CopyRole::None | CopyRole::In => Ok(Response::Rows(QueryResult {
                    columns: s.columns.unwrap_or_else(|| Arc::from(Vec::new())),
                    rows: s.rows,
                    tag,
                })),
            };
            self.group.push((s.ticket, r));
        }
    }

    fn complete_prepare(&mut self, columns: Arc<[Column]>) -> Result<(), Error> {
        if let Some(Entry::Prepare(p)) = self.queue.pop_front() {
            let params = p
                .params
                .ok_or_else(|| Error::protocol("RowDescription before ParameterDescription"))?;
            let stmt = Statement(Arc::new(StatementInner {
                name: p.name,
                sql: p.sql,
                params,
                columns,
                closer: Some(self.to_close.clone()),
            }));
            self.group.push((p.ticket, Ok(Response::Prepared(stmt))));
        }
        Ok(())
    }

    /// An ErrorResponse: fails the request it belongs to; the server then
    /// skips everything up to the next Sync, so those requests are failed
    /// as skipped.
    fn handle_error(&mut self, e: Error) {
        match self.queue.front_mut() {
            Some(Entry::Simple(s)) => {
                s.error.get_or_insert(e);
            }
            Some(Entry::Sync) | None => {
                // Raised at Sync (e.g. implicit commit failed): the whole
                // group's work is void.
                for (_, r) in self.group.iter_mut() {
                    if r.is_ok() {
                        *r = Err(e.clone());
                    }
                }
            }
            Some(_) => {
                self.group_failed = true;
                let stale = matches!(
                    e.code(),
                    Some(crate::error::sqlstate::FEATURE_NOT_SUPPORTED)
                        | Some(crate::error::sqlstate::INVALID_SQL_STATEMENT_NAME)
                ) || e.dropped_type().is_some();
                if stale && self.group.is_empty() && matches!(self.queue.get(1), Some(Entry::Sync)) {
                    if let Some(t) = self.queue.front().and_then(entry_ticket) {
                        self.failed_alone.truncate(15);
                        self.failed_alone.push(t);
                    }
                }
                let mut first = Some(e);
                while let Some(entry) = self.queue.front() {
                    if matches!(entry, Entry::Sync | Entry::Simple(_)) {
                        break;
                    }
                    let entry = self.queue.pop_front().expect("front exists");
                    let err = first.take().unwrap_or(Error::Skipped);
                    match entry {
                        Entry::Stmt(s) => {
                            if let Some(name) = &s.parses {
                                if !s.parsed {
                                    self.cache.remove(name);
                                }
                            }
                            self.group.push((s.ticket, Err(err)));
                        }
                        Entry::Prepare(p) => self.group.push((p.ticket, Err(err))),
                        _ => {}
                    }
                }
                if let Some(t) = self.copy_in {
                    if !self.queue.iter().any(|e| entry_ticket(e) == Some(t)) {
                        // A copy the server gave up on (or skipped): it now
                        // discards what we send until a Sync, which ends
                        // the copy on our side too.
                        self.close_copy_in();
                    }
                }
            }
        }
    }

    /// A statement of this group failed, so the server rolled back the
    /// transaction that statement ran in, with the statements of the group
    /// that shared it. Their results said "done": writes must say "undone".
    ///
    /// The failed transaction began after the group's last COMMIT or
    /// ROLLBACK. Ended idle, it was the implicit one the group ran in: all
    /// of it is void. Ended in a failed block, an explicit BEGIN in the
    /// group took over the implicit transaction, statements before it
    /// included, and its owner rolls it back: those earlier statements are
    /// void; the block's own are its owner's to report.
    fn void_rolled_back(&mut self) {
        let tag_of = |r: &Result<Response, Error>| match r {
            Ok(Response::Rows(q)) => q.tag.as_deref().map(|t| t.split(' ').next().unwrap_or(t).to_string()),
            _ => None,
        };
        let start = self
            .group
            .iter()
            .rposition(|(_, r)| matches!(tag_of(r).as_deref(), Some("COMMIT" | "ROLLBACK")))
            .map_or(0, |i| i + 1);
        let end = match self.tx_status {
            TransactionStatus::Idle => self.group.len(),
            TransactionStatus::Failed => self.group[start..]
                .iter()
                .position(|(_, r)| matches!(tag_of(r).as_deref(), Some("BEGIN" | "START")))
                .map_or(start, |i| start + i),
            TransactionStatus::InTransaction => start,
        };
        for (_, r) in &mut self.group[start..end] {
            // A read's rows stay true of the snapshot it saw; only writes
            // were undone. (A SELECT calling a function that writes is
            // taken for a read: its tag cannot tell.)
            let read = matches!(tag_of(r).as_deref(), Some("SELECT" | "SHOW" | "FETCH"));
            if matches!(r, Ok(Response::Rows(_))) && !read {
                *r = Err(Error::RolledBack);
            }
        }
    }
}

/// The columns a RowDescription names; OIDs the session does not know yet
/// are noted in `unknown` (their columns carry placeholders until then).
fn columns_of(
    body: &postgres_protocol::message::backend::RowDescriptionBody,
    types: &super::types::Types,
    unknown: &mut Vec<u32>,
) -> Result<Arc<[Column]>, Error> {
    let mut out = Vec::new();
    let mut fields = body.fields();
    while let Some(f) = fields.next().map_err(proto)? {
        out.push(Column {
            name: f.name().to_string(),
            type_: types.or_note(f.type_oid(), unknown),
            table_oid: f.table_oid(),
            column_id: f.column_id(),
        });
    }
    Ok(out.into())
}

pub(super) fn tx_status(b: u8) -> Result<TransactionStatus, Error> {
    match b {
        b'I' => Ok(TransactionStatus::Idle),
        b'T' => Ok(TransactionStatus::InTransaction),
        b'E' => Ok(TransactionStatus::Failed),
        other => Err(Error::protocol(format!("unknown transaction status {other:#x}"))),
    }
}

fn describe(m: &Message) -> &'static str {
    match m {
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::CommandComplete(_) => "CommandComplete",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::NoData => "NoData",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ParseComplete => "ParseComplete",
        Message::PortalSuspended => "PortalSuspended",
        Message::RowDescription(_) => "RowDescription",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::BackendKeyData(_) => "BackendKeyData",
        _ => "(other)",
    }
}
