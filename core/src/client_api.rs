//! The convenience methods every driver's `Client` offers, defined once.
//! A driver supplies `run` and `run_with_timeout` (its I/O loop); this macro
//! writes the rest inside its `impl Client`, with or without `async`/`.await`,
//! so the two drivers cannot drift apart.

/// Expands to the shared `Client` methods. Use `client_api!(async, .await)`
/// in an async driver and `client_api!(,)` in a blocking one.
#[macro_export]
macro_rules! client_api {
    ($($async:ident)?, $($await:tt)*) => {
        /// All rows of a statement with bound parameters.
        pub $($async)? fn query(&mut self, sql: &str, params: &[$crate::Param<'_>]) -> Result<Vec<$crate::Row>, $crate::Error> {
            self.run($crate::ops::query(sql, params).rows())$($await)*
        }

        /// Hands the rows of a statement to `f` one by one as they arrive,
        /// without collecting them, so memory stays bounded however many
        /// rows come back; returns how many there were. See
        /// [`Query::for_each`]($crate::ops::Query::for_each).
        pub $($async)? fn query_for_each(
            &mut self,
            sql: &str,
            params: &[$crate::Param<'_>],
            f: impl FnMut($crate::Row) -> Result<(), $crate::Error>,
        ) -> Result<u64, $crate::Error> {
            self.run($crate::ops::query(sql, params).for_each(f))$($await)*
        }

        /// All rows, each made into a `T` by column name (a
        /// `#[derive(FromRow)]` struct).
        pub $($async)? fn query_as<T: $crate::FromRow>(&mut self, sql: &str, params: &[$crate::Param<'_>]) -> Result<Vec<T>, $crate::Error> {
            self.run($crate::ops::query(sql, params).rows_as::<T>())$($await)*
        }

        /// Exactly one row; [`Error::NoRows`]($crate::Error::NoRows) or
        /// [`Error::TooManyRows`]($crate::Error::TooManyRows) otherwise.
        pub $($async)? fn query_one(&mut self, sql: &str, params: &[$crate::Param<'_>]) -> Result<$crate::Row, $crate::Error> {
            self.run($crate::ops::query(sql, params).one())$($await)*
        }

        /// At most one row.
        pub $($async)? fn query_opt(&mut self, sql: &str, params: &[$crate::Param<'_>]) -> Result<Option<$crate::Row>, $crate::Error> {
            self.run($crate::ops::query(sql, params).opt())$($await)*
        }

        /// Runs a statement; returns the number of rows it affected.
        pub $($async)? fn execute(&mut self, sql: &str, params: &[$crate::Param<'_>]) -> Result<u64, $crate::Error> {
            self.run($crate::ops::query(sql, params).affected())$($await)*
        }

        /// Runs `;`-separated statements with the simple protocol (no parameters).
        pub $($async)? fn batch_execute(&mut self, sql: &str) -> Result<(), $crate::Error> {
            self.run($crate::ops::simple_query(sql, None))$($await)*.map(|_| ())
        }

        /// Like `batch_execute`, returning the text rows and command tags.
        pub $($async)? fn simple_query(&mut self, sql: &str) -> Result<Vec<$crate::SimpleMessage>, $crate::Error> {
            self.run($crate::ops::simple_query(sql, None))$($await)*
        }

        /// Prepares a named statement (kept until every handle is dropped).
        pub $($async)? fn prepare(&mut self, sql: &str) -> Result<$crate::Statement, $crate::Error> {
            self.run($crate::ops::prepare(sql, &[]))$($await)*
        }

        /// Prepares with explicit parameter types.
        pub $($async)? fn prepare_typed(&mut self, sql: &str, types: &[$crate::Type]) -> Result<$crate::Statement, $crate::Error> {
            self.run($crate::ops::prepare(sql, types))$($await)*
        }

        /// All rows of a prepared statement.
        pub $($async)? fn query_prepared(&mut self, stmt: &$crate::Statement, params: &[$crate::Param<'_>]) -> Result<Vec<$crate::Row>, $crate::Error> {
            self.run($crate::ops::execute(stmt, params, None))$($await)*.map(|r| r.rows)
        }

        /// Binds a query to a portal of the open transaction, to [`fetch`](Self::fetch)
        /// its rows a few at a time; see [`ops::portal`]($crate::ops::portal).
        pub $($async)? fn portal(&mut self, sql: &str, params: &[$crate::Param<'_>]) -> Result<$crate::Portal, $crate::Error> {
            self.run($crate::ops::portal(sql, params))$($await)*
        }

        /// The next `max_rows` rows of a portal (0: all that are left).
        pub $($async)? fn fetch(&mut self, portal: &$crate::Portal, max_rows: u32) -> Result<$crate::ops::Fetched, $crate::Error> {
            self.run($crate::ops::fetch(portal, max_rows))$($await)*
        }

        /// Runs independent operations in one round trip; see
        /// [`ops::pipeline`]($crate::ops::pipeline).
        pub $($async)? fn pipeline<P: $crate::ops::PipelineOps>(&mut self, ops: P) -> Result<P::Output, $crate::Error> {
            self.run($crate::ops::pipeline(ops))$($await)*
        }

        /// Runs an operation in a transaction (a savepoint when nested); see
        /// [`ops::atomic`]($crate::ops::atomic).
        pub $($async)? fn transaction<O: $crate::Operation>(&mut self, op: O) -> Result<O::Output, $crate::Error> {
            self.run($crate::ops::atomic(op))$($await)*
        }

        /// `query` with a time limit: when it passes, the server is asked to
        /// cancel and the call fails with [`Error::Timeout`]($crate::Error::Timeout).
        pub $($async)? fn query_timeout(&mut self, sql: &str, params: &[$crate::Param<'_>], timeout: std::time::Duration) -> Result<Vec<$crate::Row>, $crate::Error> {
            self.run_with_timeout($crate::ops::query(sql, params).rows(), timeout)$($await)*
        }

        /// Takes the next notice, notification or parameter change that has
        /// already arrived, without waiting.
        pub fn poll_event(&mut self) -> Option<$crate::Event> {
            self.conn.poll_event()
        }

        /// The transaction state after the last completed request.
        pub fn transaction_status(&self) -> $crate::TransactionStatus {
            self.conn.transaction_status()
        }

        /// True when nothing is in flight and no transaction is open.
        pub fn is_idle(&self) -> bool {
            self.conn.is_idle()
        }

        /// True once the connection is closed (by either side or an error).
        pub fn is_closed(&self) -> bool {
            self.conn.closed_reason().is_some()
        }

        /// A server parameter (`server_version`, `TimeZone`, …).
        pub fn parameter(&self, name: &str) -> Option<&str> {
            self.conn.parameter(name)
        }

        /// Forgets the types this session looked up (an application's
        /// enums, composites, extension types): they are looked up afresh
        /// when next met. For after a migration changed a type in place.
        pub fn forget_types(&mut self) {
            self.conn.forget_types()
        }

        /// The protocol state machine, for tools and tests.
        pub fn connection(&self) -> &$crate::Connection {
            &self.conn
        }
    };
}
