//! [`pipeline`]: independent operations sent together in one sync group.

use std::time::Instant;

use super::{Operation, Step};
use crate::error::sqlstate;
use crate::{Connection, Error};

/// Runs independent operations together: every request they can submit goes
/// out in one batch with one `Sync`, so the whole pipeline costs one round
/// trip. The output is the tuple (or `Vec`) of their outputs, in order.
///
/// A batch is one sync group, which the server runs as one implicit
/// transaction: if one statement fails, it fails, the later ones are
/// skipped ([`Error::Skipped`]), the earlier ones of the group are rolled
/// back, and the pipeline returns the first error. The connection stays
/// usable.
///
/// ```
/// use duet_core::ops::{pipeline, query};
/// let (a, b): ([duet_core::Param; 1], [duet_core::Param; 1]) = ([&1i32], [&2i32]);
/// let both = pipeline((query("SELECT $1", &a).one(), query("SELECT $1", &b).one()));
/// # let _ = both;
/// ```
pub fn pipeline<P: PipelineOps>(ops: P) -> Pipeline<P> {
    Pipeline { state: P::start(ops) }
}

/// See [`pipeline`].
pub struct Pipeline<P: PipelineOps> {
    state: P::State,
}

/// Implemented for tuples of operations (up to 10) and for `Vec`s of one
/// operation type.
pub trait PipelineOps {
    type State;
    type Output;
    fn start(self) -> Self::State;
    /// Polls every unfinished child once: whether all are finished, and
    /// whether one was refused in the client during this poll.
    fn poll_all(state: &mut Self::State, conn: &mut Connection, now: Instant) -> (bool, bool);
    fn submitted_all(state: &Self::State) -> bool;
    fn finish(state: &mut Self::State) -> Result<Self::Output, Error>;
    fn abandon(state: &mut Self::State, conn: &mut Connection);
    /// A child was refused: the unfinished ones are given up (a sibling
    /// transaction's unsent COMMIT taken back) and marked skipped.
    fn give_up(state: &mut Self::State, conn: &mut Connection);
}

/// One child of a pipeline: the operation and, once finished, its result.
pub struct Slot<O: Operation> {
    op: O,
    result: Option<Result<O::Output, Error>>,
}

impl<O: Operation> Slot<O> {
    fn new(op: O) -> Self {
        Slot { op, result: None }
    }
    /// Polls the child if unfinished: (finished, refused in the client now).
    fn poll(&mut self, conn: &mut Connection, now: Instant) -> (bool, bool) {
        let mut refused = false;
        if self.result.is_none() {
            if let Step::Ready(r) = self.op.poll(conn, now) {
                refused = matches!(r, Err(Error::Misuse(_) | Error::Encode(_) | Error::Invalid(_)));
                self.result = Some(r);
            }
        }
        (self.result.is_some(), refused)
    }
    fn submitted_all(&self) -> bool {
        match &self.result {
            Some(r) => r.is_ok(),
            None => self.op.submitted_all(),
        }
    }
    fn abandon(&mut self, conn: &mut Connection) {
        if self.result.is_none() {
            self.op.abandon(conn);
        }
    }
    fn give_up(&mut self, conn: &mut Connection) {
        if self.result.is_none() {
            self.op.abandon(conn);
            self.result = Some(Err(Error::Skipped));
        }
    }
    fn take(&mut self) -> Result<O::Output, Error> {
        self.result
            .take()
            .unwrap_or_else(|| Err(Error::misuse("pipeline result taken twice")))
    }
    /// This child's own failure, the one to report.
    fn first_error(&self) -> Option<&Error> {
        match &self.result {
            Some(Err(e)) if !is_consequence(e) => Some(e),
            _ => None,
        }
    }
    /// A failure caused by another child's (see [`is_consequence`]).
    fn skipped(&self) -> Option<&Error> {
        match &self.result {
            Some(Err(e)) if is_consequence(e) => Some(e),
            _ => None,
        }
    }
}

/// An error that only follows from an earlier failure: a statement the
/// server skipped in the failed sync group, or one a child sent after the
/// group (an `after_save` hook's insert, say) into a transaction a sibling's
/// failure had already aborted (25P02). Children are polled in order, so
/// such a follow-up can fail before the sibling that caused it is looked at:
/// reporting it would hide the cause (a unique violation behind "current
/// transaction is aborted").
pub(super) fn is_consequence(e: &Error) -> bool {
    matches!(e, Error::Skipped | Error::RolledBack) || e.code() == Some(sqlstate::IN_FAILED_SQL_TRANSACTION)
}

impl<P: PipelineOps> Operation for Pipeline<P> {
    type Output = P::Output;
    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<P::Output> {
        conn.begin_batch();
        let (mut all, refused) = P::poll_all(&mut self.state, conn, now);
        if refused {
            // All or nothing: what the siblings queued this round must not
            // take effect (the poison voids the group on the server), and
            // those still running are given up.
            conn.poison_batch();
            P::give_up(&mut self.state, conn);
            all = true;
        }
        conn.end_batch();
        if all {
            Step::Ready(P::finish(&mut self.state))
        } else {
            Step::Pending
        }
    }
    fn submitted_all(&self) -> bool {
        P::submitted_all(&self.state)
    }
    fn abandon(&mut self, conn: &mut Connection) {
        P::abandon(&mut self.state, conn)
    }
}

macro_rules! tuple_pipeline {
    ($($name:ident $idx:tt),+) => {
        impl<$($name: Operation),+> PipelineOps for ($($name,)+) {
            type State = ($(Slot<$name>,)+);
            type Output = ($($name::Output,)+);
            fn start(self) -> Self::State {
                ($(Slot::new(self.$idx),)+)
            }
            fn poll_all(s: &mut Self::State, conn: &mut Connection, now: Instant) -> (bool, bool) {
                let (mut all, mut refused) = (true, false);
                $(
                    let (done, r) = s.$idx.poll(conn, now);
                    all &= done;
                    refused |= r;
                )+
                (all, refused)
            }
            fn submitted_all(s: &Self::State) -> bool {
                true $( && s.$idx.submitted_all() )+
            }
            fn finish(s: &mut Self::State) -> Result<Self::Output, Error> {
                // Report the statement that failed, not the ones it skipped.
                $( if let Some(e) = s.$idx.first_error() { return Err(e.clone()); } )+
                $( if let Some(e) = s.$idx.skipped() { return Err(e.clone()); } )+
                Ok(($(s.$idx.take()?,)+))
            }
            fn abandon(s: &mut Self::State, conn: &mut Connection) {
                $( s.$idx.abandon(conn); )+
            }
            fn give_up(s: &mut Self::State, conn: &mut Connection) {
                $( s.$idx.give_up(conn); )+
            }
        }
    };
}

tuple_pipeline!(A 0);
tuple_pipeline!(A 0, B 1);
tuple_pipeline!(A 0, B 1, C 2);
tuple_pipeline!(A 0, B 1, C 2, D 3);
tuple_pipeline!(A 0, B 1, C 2, D 3, E 4);
tuple_pipeline!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_pipeline!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_pipeline!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
tuple_pipeline!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
tuple_pipeline!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);

impl<O: Operation> PipelineOps for Vec<O> {
    type State = Vec<Slot<O>>;
    type Output = Vec<O::Output>;
    fn start(self) -> Self::State {
        self.into_iter().map(Slot::new).collect()
    }
    fn poll_all(s: &mut Self::State, conn: &mut Connection, now: Instant) -> (bool, bool) {
        let (mut all, mut refused) = (true, false);
        for slot in s.iter_mut() {
            let (done, r) = slot.poll(conn, now);
            all &= done;
            refused |= r;
        }
        (all, refused)
    }
    fn submitted_all(s: &Self::State) -> bool {
        s.iter().all(|x| x.submitted_all())
    }
    fn finish(s: &mut Self::State) -> Result<Self::Output, Error> {
        if let Some(e) = s.iter().find_map(|x| x.first_error()) {
            return Err(e.clone());
        }
        if let Some(e) = s.iter().find_map(|x| x.skipped()) {
            return Err(e.clone());
        }
        s.iter_mut().map(|x| x.take()).collect()
    }
    fn abandon(s: &mut Self::State, conn: &mut Connection) {
        for x in s.iter_mut() {
            x.abandon(conn);
        }
    }
    fn give_up(s: &mut Self::State, conn: &mut Connection) {
        for x in s.iter_mut() {
            x.give_up(conn);
        }
    }
}
