//! duet's conformance suite: every behaviour is written once, generic over
//! [`Driver`], and instantiated for `duet-sync` and `duet-async` by
//! [`conformance_tests!`]. [`server`] starts the throwaway PostgreSQL the
//! tests, examples and benches share.

pub mod faults;
pub mod pgbouncer;
pub mod pools;
pub mod server;
pub mod tls;
pub mod traces;

use std::future::Future;
use std::time::Duration;

use duet_core::copy::Bytes;
use duet_core::listen::Heard;
use duet_core::ops::TxOptions;
use duet_core::{Error, Event, Operation, Param, Row, TransactionStatus, Type};

/// What a test needs from a driver. Blocking on purpose: the async
/// implementation drives its client on a current-thread runtime, so one test
/// body exercises both.
pub trait Driver: Sized {
    const NAME: &'static str;
    /// The driver's LISTEN/NOTIFY listener.
    type Listener: Listening;
    fn connect(url: &str) -> Result<Self, Error>;
    fn run<O: Operation + Send>(&mut self, op: O) -> Result<O::Output, Error>
    where
        O::Output: Send;
    fn run_with_timeout<O: Operation + Send>(&mut self, op: O, timeout: Duration) -> Result<O::Output, Error>
    where
        O::Output: Send;
    /// Polls the operation's future (async) or pumps its I/O loop (sync) at
    /// most `steps` times, then drops/abandons it. `Some` if it finished.
    fn run_steps<O: Operation + Send>(&mut self, op: O, steps: usize) -> Option<Result<O::Output, Error>>
    where
        O::Output: Send;
    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, Error>;
    fn query_one(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Row, Error>;
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, Error>;
    fn batch_execute(&mut self, sql: &str) -> Result<(), Error>;
    fn wait_event(&mut self, timeout: Duration) -> Result<Option<Event>, Error>;
    fn poll_event(&mut self) -> Option<Event>;
    fn forget_types(&mut self);
    /// Something that cancels the running statement from another thread.
    fn canceller(&self) -> Box<dyn Fn() -> Result<(), Error> + Send>;
    fn transaction_status(&self) -> TransactionStatus;
    fn is_closed(&self) -> bool;
    fn cached_statements(&self) -> usize;
    /// The protocol machine, for what a session is (TLS, protocol version).
    fn connection(&self) -> &duet_core::Connection;
    fn close(self) -> Result<(), Error>;
    /// Runs `script` inside the driver's interactive `atomic(|tx| …)`;
    /// returns the log of what ran (see [`TxStep`]).
    fn atomic_script(&mut self, script: &[TxStep]) -> Result<Vec<String>, Error>;
    /// Opens an interactive transaction, runs `sql` in it, then leaves the
    /// closure abnormally: a panic (blocking driver) or a dropped future
    /// (tokio). The transaction must roll back.
    fn atomic_abandoned(&mut self, sql: &str);
    /// The driver's `retry(attempts, |c| c.atomic_with(options, |tx| …))`,
    /// the transaction running `sql` and giving its first column.
    fn retry_atomic(&mut self, attempts: u32, options: TxOptions, sql: &str) -> Result<String, Error>;
    /// `COPY … FROM STDIN` with `chunks` written in turn, then finished —
    /// or, when `finish` is false, the writer dropped unfinished (`Ok(0)`).
    /// The first error a write or the finish gave.
    fn copy_in(&mut self, sql: &str, chunks: &[&[u8]], finish: bool) -> Result<u64, Error> {
        self.copy_in_counted(sql, chunks, finish).1
    }
    /// [`Driver::copy_in`], also saying how many writes succeeded.
    fn copy_in_counted(&mut self, sql: &str, chunks: &[&[u8]], finish: bool) -> (usize, Result<u64, Error>);
    /// A binary `COPY … FROM STDIN` of `rows` (`write_row` each).
    fn copy_in_rows(&mut self, sql: &str, types: &[Type], rows: &[&[Param<'_>]]) -> Result<u64, Error>;
    /// The driver's `copy_in_from` reading `data` (a `Read` / `AsyncRead`).
    fn copy_in_from(&mut self, sql: &str, data: &[u8]) -> Result<u64, Error>;
    /// `copy_in` of `data` inside the driver's interactive `atomic`, whose
    /// closure then fails when `fail` is set.
    fn copy_in_atomic(&mut self, sql: &str, data: &[u8], fail: bool) -> Result<u64, Error>;
    /// `COPY … TO STDOUT`: the chunks read, at most `limit` (the reader is
    /// dropped there), and the row count when the end was read.
    fn copy_out(&mut self, sql: &str, limit: usize) -> Result<(Vec<Bytes>, Option<u64>), Error>;
    /// The driver's `copy_out_to` into a `Vec` (a `Write` / `AsyncWrite`).
    fn copy_out_to(&mut self, sql: &str) -> Result<(Vec<u8>, u64), Error>;
    /// The rows of a binary `COPY … TO STDOUT`.
    fn copy_out_rows(&mut self, sql: &str, types: &[Type]) -> Result<Vec<Row>, Error>;
    /// `copy_in(sql).timeout(limit)`: writes `first`, waits `pause` (a slow
    /// producer), writes `rest`, finishes.
    fn copy_in_timed(
        &mut self,
        sql: &str,
        limit: Duration,
        first: &[u8],
        pause: Duration,
        rest: &[u8],
    ) -> Result<u64, Error>;
    /// `copy_out(sql).timeout(limit)`, read to the end; the bytes read.
    fn copy_out_timed(&mut self, sql: &str, limit: Duration) -> Result<usize, Error>;
}

/// A driver's `Listener`, driven blocking.
pub trait Listening: Sized {
    fn connect(url: &str) -> Result<Self, Error>;
    fn listen(&mut self, channel: &str) -> Result<(), Error>;
    fn unlisten(&mut self, channel: &str) -> Result<(), Error>;
    /// Waits up to `timeout` (`recv_timeout`).
    fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Heard>, Error>;
    /// The next item of the iterator (blocking) or the `Stream` (tokio);
    /// after it, `listen` and `unlisten` are gone (the stream owns the
    /// listener) and `recv_timeout` reads the stream.
    fn next_item(&mut self) -> Result<Heard, Error>;
}

impl Listening for duet_sync::Listener {
    fn connect(url: &str) -> Result<Self, Error> {
        duet_sync::Listener::connect(url)
    }
    fn listen(&mut self, channel: &str) -> Result<(), Error> {
        duet_sync::Listener::listen(self, channel)
    }
    fn unlisten(&mut self, channel: &str) -> Result<(), Error> {
        duet_sync::Listener::unlisten(self, channel)
    }
    fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Heard>, Error> {
        duet_sync::Listener::recv_timeout(self, timeout)
    }
    fn next_item(&mut self) -> Result<Heard, Error> {
        Iterator::next(self).expect("the listener's iterator never ends")
    }
}

type HeardStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Heard, Error>> + Send>>;

/// The tokio listener, on a runtime of its own; turned into its `Stream`
/// at the first `next_item`.
pub struct TokioListener {
    rt: tokio::runtime::Runtime,
    listener: Option<duet_async::Listener>,
    stream: Option<HeardStream>,
}

impl TokioListener {
    /// Runs `f`'s future on the listener (before it became a stream).
    fn on<T>(&mut self, f: impl AsyncFnOnce(&mut duet_async::Listener) -> T) -> T {
        let listener = self.listener.as_mut().expect("still a listener, not yet a stream");
        self.rt.block_on(f(listener))
    }
}

impl Listening for TokioListener {
    fn connect(url: &str) -> Result<Self, Error> {
        let rt = runtime();
        let listener = rt.block_on(duet_async::Listener::connect(url))?;
        Ok(TokioListener {
            rt,
            listener: Some(listener),
            stream: None,
        })
    }
    fn listen(&mut self, channel: &str) -> Result<(), Error> {
        self.on(async |l| l.listen(channel).await)
    }
    fn unlisten(&mut self, channel: &str) -> Result<(), Error> {
        self.on(async |l| l.unlisten(channel).await)
    }
    fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Heard>, Error> {
        use futures_util::StreamExt;
        match &mut self.stream {
            // Waiting on the stream's next item is cancel safe: the wait
            // goes on at the next poll.
            Some(stream) => match self
                .rt
                .block_on(async { tokio::time::timeout(timeout, stream.next()).await })
            {
                Ok(item) => item.expect("the listener's stream never ends").map(Some),
                Err(_) => Ok(None),
            },
            None => self.on(async |l| l.recv_timeout(timeout).await),
        }
    }
    fn next_item(&mut self) -> Result<Heard, Error> {
        use futures_util::StreamExt;
        if let Some(l) = self.listener.take() {
            self.stream = Some(Box::pin(l.into_stream()));
        }
        let stream = self.stream.as_mut().expect("a stream");
        self.rt
            .block_on(stream.next())
            .expect("the listener's stream never ends")
    }
}

/// The first column of the first row of a simple query, as text.
pub fn first_value(messages: &[duet_core::SimpleMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        duet_core::SimpleMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

/// One step of an interactive transaction script.
#[derive(Clone, Debug)]
pub enum TxStep {
    /// Runs a statement; logs `"<sql> -> <rows affected>"`.
    Execute(String),
    /// A nested `atomic`; its failure is logged (`"nested failed: …"`) and
    /// the outer transaction goes on, as a savepoint allows.
    Nested(Vec<TxStep>),
    /// Returns this error from the closure: the scope rolls back.
    Fail(String),
    /// Runs a statement and ignores its error (logs `"ignored: …"`): the
    /// transaction is then failed and must not report a commit.
    Swallow(String),
}

fn script_sync(c: &mut duet_sync::Client, script: &[TxStep]) -> Result<Vec<String>, Error> {
    c.atomic(|tx| {
        let mut log = Vec::new();
        for step in script {
            match step {
                TxStep::Execute(sql) => log.push(format!("{sql} -> {}", tx.execute(sql, &[])?)),
                TxStep::Nested(inner) => match script_sync(tx, inner) {
                    Ok(l) => log.extend(l),
                    Err(e) => log.push(format!("nested failed: {e}")),
                },
                TxStep::Fail(m) => return Err(Error::invalid(m.clone())),
                TxStep::Swallow(sql) => {
                    if let Err(e) = tx.execute(sql, &[]) {
                        log.push(format!("ignored: {e}"));
                    }
                }
            }
        }
        Ok(log)
    })
}

fn script_tokio<'a>(
    c: &'a mut duet_async::Client,
    script: &'a [TxStep],
) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<String>, Error>> + 'a>> {
    Box::pin(async move {
        c.atomic(async |tx| {
            let mut log = Vec::new();
            for step in script {
                match step {
                    TxStep::Execute(sql) => log.push(format!("{sql} -> {}", tx.execute(sql, &[]).await?)),
                    TxStep::Nested(inner) => match script_tokio(tx, inner).await {
                        Ok(l) => log.extend(l),
                        Err(e) => log.push(format!("nested failed: {e}")),
                    },
                    TxStep::Fail(m) => return Err(Error::invalid(m.clone())),
                    TxStep::Swallow(sql) => {
                        if let Err(e) = tx.execute(sql, &[]).await {
                            log.push(format!("ignored: {e}"));
                        }
                    }
                }
            }
            Ok(log)
        })
        .await
    })
}

/// The blocking driver.
pub struct Sync(pub duet_sync::Client);

impl Driver for Sync {
    const NAME: &'static str = "sync";
    type Listener = duet_sync::Listener;
    fn connect(url: &str) -> Result<Self, Error> {
        duet_sync::Client::connect(url).map(Sync)
    }
    fn run<O: Operation + Send>(&mut self, op: O) -> Result<O::Output, Error> {
        self.0.run(op)
    }
    fn run_with_timeout<O: Operation + Send>(&mut self, op: O, timeout: Duration) -> Result<O::Output, Error> {
        self.0.run_with_timeout(op, timeout)
    }
    fn run_steps<O: Operation + Send>(&mut self, op: O, steps: usize) -> Option<Result<O::Output, Error>> {
        self.0.run_steps(op, steps)
    }
    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, Error> {
        self.0.query(sql, params)
    }
    fn query_one(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Row, Error> {
        self.0.query_one(sql, params)
    }
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, Error> {
        self.0.execute(sql, params)
    }
    fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        self.0.batch_execute(sql)
    }
    fn wait_event(&mut self, timeout: Duration) -> Result<Option<Event>, Error> {
        self.0.wait_event(timeout)
    }
    fn forget_types(&mut self) {
        self.0.forget_types()
    }
    fn poll_event(&mut self) -> Option<Event> {
        self.0.poll_event()
    }
    fn canceller(&self) -> Box<dyn Fn() -> Result<(), Error> + Send> {
        let token = self.0.cancel_token().expect("server sent BackendKeyData");
        Box::new(move || token.cancel())
    }
    fn transaction_status(&self) -> TransactionStatus {
        self.0.transaction_status()
    }
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
    fn cached_statements(&self) -> usize {
        self.0.connection().cached_statements()
    }
    fn connection(&self) -> &duet_core::Connection {
        self.0.connection()
    }
    fn close(self) -> Result<(), Error> {
        self.0.close()
    }
    fn atomic_script(&mut self, script: &[TxStep]) -> Result<Vec<String>, Error> {
        script_sync(&mut self.0, script)
    }
    fn retry_atomic(&mut self, attempts: u32, options: TxOptions, sql: &str) -> Result<String, Error> {
        self.0.retry(attempts, |c| {
            c.atomic_with(
                options,
                |tx| Ok(first_value(&tx.simple_query(sql)?).unwrap_or_default()),
            )
        })
    }
    fn copy_in_counted(&mut self, sql: &str, chunks: &[&[u8]], finish: bool) -> (usize, Result<u64, Error>) {
        let mut copy = match self.0.copy_in(sql) {
            Ok(c) => c,
            Err(e) => return (0, Err(e)),
        };
        for (i, c) in chunks.iter().enumerate() {
            if let Err(e) = copy.write(c) {
                return (i, Err(e));
            }
        }
        (chunks.len(), if finish { copy.finish() } else { Ok(0) })
    }
    fn copy_in_rows(&mut self, sql: &str, types: &[Type], rows: &[&[Param<'_>]]) -> Result<u64, Error> {
        let mut copy = self.0.copy_in_binary(sql, types)?;
        for r in rows {
            copy.write_row(r)?;
        }
        copy.finish()
    }
    fn copy_in_from(&mut self, sql: &str, data: &[u8]) -> Result<u64, Error> {
        self.0.copy_in_from(sql, data)
    }
    fn copy_in_atomic(&mut self, sql: &str, data: &[u8], fail: bool) -> Result<u64, Error> {
        self.0.atomic(|tx| {
            let mut copy = tx.copy_in(sql)?;
            copy.write(data)?;
            let n = copy.finish()?;
            if fail {
                return Err(Error::Misuse("the closure fails after its copy".into()));
            }
            Ok(n)
        })
    }
    fn copy_out(&mut self, sql: &str, limit: usize) -> Result<(Vec<Bytes>, Option<u64>), Error> {
        let mut copy = self.0.copy_out(sql)?;
        let mut chunks = Vec::new();
        while chunks.len() < limit {
            match copy.chunk()? {
                Some(c) => chunks.push(c),
                None => break,
            }
        }
        Ok((chunks, copy.rows()))
    }
    fn copy_out_to(&mut self, sql: &str) -> Result<(Vec<u8>, u64), Error> {
        let mut out = Vec::new();
        let n = self.0.copy_out_to(sql, &mut out)?;
        Ok((out, n))
    }
    fn copy_out_rows(&mut self, sql: &str, types: &[Type]) -> Result<Vec<Row>, Error> {
        self.0.copy_out_binary(sql, types)?.collect()
    }
    fn copy_in_timed(
        &mut self,
        sql: &str,
        limit: Duration,
        first: &[u8],
        pause: Duration,
        rest: &[u8],
    ) -> Result<u64, Error> {
        let mut copy = self.0.copy_in(sql)?.timeout(limit);
        copy.write(first)?;
        std::thread::sleep(pause);
        copy.write(rest)?;
        copy.finish()
    }
    fn copy_out_timed(&mut self, sql: &str, limit: Duration) -> Result<usize, Error> {
        let mut copy = self.0.copy_out(sql)?.timeout(limit);
        let mut n = 0;
        while let Some(c) = copy.chunk()? {
            n += c.len();
        }
        Ok(n)
    }
    fn atomic_abandoned(&mut self, sql: &str) {
        let client = &mut self.0;
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = client.atomic(|tx| -> Result<(), Error> {
                tx.execute(sql, &[]).expect("statement inside the transaction");
                panic!("leaving the transaction by a panic");
            });
        }));
        assert!(unwound.is_err(), "the closure panicked");
    }
}

/// The tokio driver, on a current-thread runtime of its own.
pub struct Tokio {
    pub client: duet_async::Client,
    rt: tokio::runtime::Runtime,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

impl Driver for Tokio {
    const NAME: &'static str = "tokio";
    type Listener = TokioListener;
    fn connect(url: &str) -> Result<Self, Error> {
        let rt = runtime();
        let client = rt.block_on(duet_async::Client::connect(url))?;
        Ok(Tokio { client, rt })
    }
    fn run<O: Operation + Send>(&mut self, op: O) -> Result<O::Output, Error> {
        self.rt.block_on(self.client.run(op))
    }
    fn run_with_timeout<O: Operation + Send>(&mut self, op: O, timeout: Duration) -> Result<O::Output, Error> {
        self.rt.block_on(self.client.run_with_timeout(op, timeout))
    }
    fn run_steps<O: Operation + Send>(&mut self, op: O, steps: usize) -> Option<Result<O::Output, Error>> {
        let client = &mut self.client;
        self.rt.block_on(async move {
            let mut fut = std::pin::pin!(client.run(op));
            for _ in 0..steps {
                let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
                if let std::task::Poll::Ready(r) = polled {
                    return Some(r);
                }
                // Let the socket make progress between polls.
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            None // the future is dropped here, mid-flight
        })
    }
    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, Error> {
        self.rt.block_on(self.client.query(sql, params))
    }
    fn query_one(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Row, Error> {
        self.rt.block_on(self.client.query_one(sql, params))
    }
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, Error> {
        self.rt.block_on(self.client.execute(sql, params))
    }
    fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        self.rt.block_on(self.client.batch_execute(sql))
    }
    fn wait_event(&mut self, timeout: Duration) -> Result<Option<Event>, Error> {
        self.rt.block_on(self.client.wait_event(timeout))
    }
    fn forget_types(&mut self) {
        self.client.forget_types()
    }
    fn poll_event(&mut self) -> Option<Event> {
        self.client.poll_event()
    }
    fn canceller(&self) -> Box<dyn Fn() -> Result<(), Error> + Send> {
        let token = self.client.cancel_token().expect("server sent BackendKeyData");
        Box::new(move || runtime().block_on(token.cancel()))
    }
    fn transaction_status(&self) -> TransactionStatus {
        self.client.transaction_status()
    }
    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
    fn cached_statements(&self) -> usize {
        self.client.connection().cached_statements()
    }
    fn connection(&self) -> &duet_core::Connection {
        self.client.connection()
    }
    fn close(self) -> Result<(), Error> {
        let Tokio { client, rt } = self;
        rt.block_on(client.close())
    }
    fn atomic_script(&mut self, script: &[TxStep]) -> Result<Vec<String>, Error> {
        self.rt.block_on(script_tokio(&mut self.client, script))
    }
    fn retry_atomic(&mut self, attempts: u32, options: TxOptions, sql: &str) -> Result<String, Error> {
        let client = &mut self.client;
        self.rt.block_on(client.retry(attempts, async |c| {
            c.atomic_with(options, async |tx| {
                Ok(first_value(&tx.simple_query(sql).await?).unwrap_or_default())
            })
            .await
        }))
    }
    fn copy_in_counted(&mut self, sql: &str, chunks: &[&[u8]], finish: bool) -> (usize, Result<u64, Error>) {
        self.rt.block_on(async {
            let mut copy = match self.client.copy_in(sql).await {
                Ok(c) => c,
                Err(e) => return (0, Err(e)),
            };
            for (i, c) in chunks.iter().enumerate() {
                if let Err(e) = copy.write(c).await {
                    return (i, Err(e));
                }
            }
            (chunks.len(), if finish { copy.finish().await } else { Ok(0) })
        })
    }
    fn copy_in_rows(&mut self, sql: &str, types: &[Type], rows: &[&[Param<'_>]]) -> Result<u64, Error> {
        self.rt.block_on(async {
            let mut copy = self.client.copy_in_binary(sql, types).await?;
            for r in rows {
                copy.write_row(r).await?;
            }
            copy.finish().await
        })
    }
    fn copy_in_from(&mut self, sql: &str, data: &[u8]) -> Result<u64, Error> {
        self.rt.block_on(self.client.copy_in_from(sql, data))
    }
    fn copy_in_atomic(&mut self, sql: &str, data: &[u8], fail: bool) -> Result<u64, Error> {
        self.rt.block_on(self.client.atomic(async |tx| {
            let mut copy = tx.copy_in(sql).await?;
            copy.write(data).await?;
            let n = copy.finish().await?;
            if fail {
                return Err(Error::Misuse("the closure fails after its copy".into()));
            }
            Ok(n)
        }))
    }
    fn copy_out(&mut self, sql: &str, limit: usize) -> Result<(Vec<Bytes>, Option<u64>), Error> {
        self.rt.block_on(async {
            let mut copy = self.client.copy_out(sql).await?;
            let mut chunks = Vec::new();
            while chunks.len() < limit {
                match copy.chunk().await? {
                    Some(c) => chunks.push(c),
                    None => break,
                }
            }
            Ok((chunks, copy.rows()))
        })
    }
    fn copy_out_to(&mut self, sql: &str) -> Result<(Vec<u8>, u64), Error> {
        let mut out = Vec::new();
        let n = self.rt.block_on(self.client.copy_out_to(sql, &mut out))?;
        Ok((out, n))
    }
    fn copy_out_rows(&mut self, sql: &str, types: &[Type]) -> Result<Vec<Row>, Error> {
        self.rt.block_on(async {
            let mut copy = self.client.copy_out_binary(sql, types).await?;
            let mut rows = Vec::new();
            while let Some(r) = copy.next_row().await? {
                rows.push(r);
            }
            Ok(rows)
        })
    }
    fn copy_in_timed(
        &mut self,
        sql: &str,
        limit: Duration,
        first: &[u8],
        pause: Duration,
        rest: &[u8],
    ) -> Result<u64, Error> {
        self.rt.block_on(async {
            let mut copy = self.client.copy_in(sql).await?.timeout(limit);
            copy.write(first).await?;
            tokio::time::sleep(pause).await;
            copy.write(rest).await?;
            copy.finish().await
        })
    }
    fn copy_out_timed(&mut self, sql: &str, limit: Duration) -> Result<usize, Error> {
        self.rt.block_on(async {
            let mut copy = self.client.copy_out(sql).await?.timeout(limit);
            let mut n = 0;
            while let Some(c) = copy.chunk().await? {
                n += c.len();
            }
            Ok(n)
        })
    }
    fn atomic_abandoned(&mut self, sql: &str) {
        let client = &mut self.client;
        self.rt.block_on(async move {
            let (ran_tx, ran_rx) = tokio::sync::oneshot::channel::<()>();
            let tx_future = client.atomic(async |tx| -> Result<(), Error> {
                tx.execute(sql, &[]).await?;
                let _ = ran_tx.send(());
                std::future::pending::<()>().await;
                Ok(())
            });
            // Drop the transaction's future once its statement has run.
            tokio::select! {
                _ = tx_future => panic!("the transaction future never completes"),
                _ = ran_rx => {}
            }
        });
    }
}

/// A connection to the shared test server with driver `D`.
pub fn connect<D: Driver>() -> D {
    D::connect(&server::TestServer::shared().url()).unwrap_or_else(|e| panic!("{}: connect: {e}", D::NAME))
}

/// A connection to the shared test server whose `search_path` is `schema`,
/// dropped and created afresh: a test's own tables, apart from every
/// other test's.
pub fn connect_in_fresh_schema<D: Driver>(schema: &str) -> D {
    let mut c = connect::<D>();
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path TO {schema}"
    ))
    .unwrap_or_else(|e| panic!("{}: schema {schema}: {e}", D::NAME));
    c
}

/// The connection answers a query and holds no transaction open.
pub fn assert_usable<D: Driver>(c: &mut D) {
    let row = c.query_one("SELECT 1 + $1", &[&1i32]).expect("connection usable");
    assert_eq!(row.get::<i32>(0), 2);
    assert_eq!(c.transaction_status(), TransactionStatus::Idle);
}

/// Instantiates each named generic test for both drivers, as
/// `name::sync` and `name::tokio`.
#[macro_export]
macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sync() {
                    super::$name::<$crate::Sync>();
                }
                #[test]
                fn tokio() {
                    super::$name::<$crate::Tokio>();
                }
            }
        )*
    };
}
