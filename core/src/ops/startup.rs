//! [`Startup`]: waiting for the session to be ready, then judging it
//! against `target_session_attrs` as libpq does.

use std::time::Instant;

use super::{simple_query, Operation, Single, Step};
use crate::row::SimpleMessage;
use crate::{Connection, Error, TargetSessionAttrs};

/// Asked of servers that do not report `in_hot_standby` (before 14).
const SESSION_QUERY: &str =
    "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('default_transaction_read_only')";

/// Waits for the session to be authenticated and ready, and checks it is
/// the kind of server `target_session_attrs` asks for (from the
/// `in_hot_standby` and `default_transaction_read_only` the server reports
/// at startup, or, from servers before 14, one query). A session that will
/// not do is closed, with [`Error::Rejected`] saying why.
#[derive(Default)]
pub struct Startup {
    query: Option<Single<'static, Vec<SimpleMessage>>>,
}

/// Waits for the session and judges it; what a driver runs on a new socket.
pub fn startup() -> Startup {
    Startup::default()
}

impl Operation for Startup {
    type Output = ();
    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<()> {
        if let Some(e) = conn.closed_reason() {
            return Step::Ready(Err(e.clone()));
        }
        if !conn.is_ready() {
            return Step::Pending;
        }
        let attrs = conn.session_attrs();
        if matches!(attrs, TargetSessionAttrs::Any | TargetSessionAttrs::PreferStandby) {
            return Step::Ready(Ok(()));
        }
        let reported = conn
            .parameter("in_hot_standby")
            .zip(conn.parameter("default_transaction_read_only"))
            .map(|(h, r)| (h == "on", r == "on"));
        let (standby, read_only) = match reported {
            Some(r) => r,
            None => {
                let q = self.query.get_or_insert_with(|| simple_query(SESSION_QUERY, None));
                match q.poll(conn, now) {
                    Step::Pending => return Step::Pending,
                    Step::Ready(Err(e)) => return Step::Ready(Err(e)),
                    Step::Ready(Ok(messages)) => {
                        let row = messages.iter().find_map(|m| match m {
                            SimpleMessage::Row(r) => Some((r.get(0) == Some("t"), r.get(1) == Some("on"))),
                            _ => None,
                        });
                        match row {
                            Some(r) => r,
                            None => return Step::Ready(Err(Error::protocol("the session check returned no row"))),
                        }
                    }
                }
            }
        };
        match judge(attrs, standby, read_only) {
            Ok(()) => Step::Ready(Ok(())),
            Err(why) => {
                conn.close();
                Step::Ready(Err(Error::Rejected(why.into())))
            }
        }
    }
    fn submitted_all(&self) -> bool {
        true
    }
    fn abandon(&mut self, conn: &mut Connection) {
        if let Some(q) = &mut self.query {
            q.abandon(conn);
        }
    }
}

/// libpq's rules: read-write needs a server that is neither a standby nor
/// read-only by default; primary and standby look at recovery alone.
fn judge(attrs: TargetSessionAttrs, standby: bool, read_only: bool) -> Result<(), String> {
    let what = || match (standby, read_only) {
        (true, _) => "a hot standby",
        (false, true) => "read-only (default_transaction_read_only is on)",
        (false, false) => "a read-write primary",
    };
    let (ok, wanted) = match attrs {
        TargetSessionAttrs::Any | TargetSessionAttrs::PreferStandby => (true, ""),
        TargetSessionAttrs::ReadWrite => (!standby && !read_only, "read-write"),
        TargetSessionAttrs::ReadOnly => (standby || read_only, "read-only"),
        TargetSessionAttrs::Primary => (!standby, "primary"),
        TargetSessionAttrs::Standby => (standby, "standby"),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("the server is {}, and target_session_attrs={wanted}", what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_session_rules() {
        use TargetSessionAttrs::*;
        // (standby, read_only) for a primary, a read-only primary, a standby.
        let servers = [(false, false), (false, true), (true, true)];
        let accepted = |a| servers.iter().map(|&(s, r)| judge(a, s, r).is_ok()).collect::<Vec<_>>();
        assert_eq!(accepted(ReadWrite), [true, false, false]);
        assert_eq!(accepted(ReadOnly), [false, true, true]);
        assert_eq!(accepted(Primary), [true, true, false]);
        assert_eq!(accepted(Standby), [false, false, true]);
        assert_eq!(accepted(Any), [true, true, true]);
        let e = judge(ReadWrite, true, true).unwrap_err();
        assert!(e.contains("hot standby") && e.contains("read-write"), "{e}");
    }
}
