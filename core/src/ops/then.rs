//! [`then`] and [`then_result`]: one operation built from another's output.

use std::time::Instant;

use super::{Operation, Step};
use crate::{Connection, Error};

/// See [`then`] and [`then_result`].
pub struct Then<A: Operation, F, B> {
    first: Option<A>,
    next: Option<F>,
    second: Option<B>,
}

/// Runs `first`, then the operation `next` builds from its output: how a
/// multi-step operation (a prefetch whose second query needs the first
/// result) is composed. The second step goes out as soon as the first
/// result is in, with no driver involvement. An error from `first` is
/// returned as is.
pub fn then<A, F, B>(first: A, next: F) -> impl Operation<Output = B::Output>
where
    A: Operation,
    F: FnOnce(A::Output) -> Result<B, Error>,
    B: Operation,
{
    then_result(first, move |r: Result<A::Output, Error>| r.and_then(next))
}

/// Like [`then`], but `next` also sees `first`'s error and may recover from
/// it (retry after a unique violation, say).
pub fn then_result<A, F, B>(first: A, next: F) -> Then<A, F, B>
where
    A: Operation,
    F: FnOnce(Result<A::Output, Error>) -> Result<B, Error>,
    B: Operation,
{
    Then {
        first: Some(first),
        next: Some(next),
        second: None,
    }
}

impl<A, F, B> Operation for Then<A, F, B>
where
    A: Operation,
    F: FnOnce(Result<A::Output, Error>) -> Result<B, Error>,
    B: Operation,
{
    type Output = B::Output;
    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<B::Output> {
        if let Some(first) = &mut self.first {
            let out = match first.poll(conn, now) {
                Step::Pending => return Step::Pending,
                Step::Ready(r) => r,
            };
            self.first = None;
            let Some(next) = self.next.take() else {
                return Step::Ready(Err(Error::misuse("operation polled after it completed")));
            };
            match next(out) {
                Ok(b) => self.second = Some(b),
                Err(e) => return Step::Ready(Err(e)),
            }
        }
        match &mut self.second {
            Some(second) => {
                let step = second.poll(conn, now);
                if matches!(step, Step::Ready(_)) {
                    self.second = None;
                }
                step
            }
            None => Step::Ready(Err(Error::misuse("operation polled after it completed"))),
        }
    }
    fn submitted_all(&self) -> bool {
        self.first.is_none() && self.second.as_ref().is_none_or(|s| s.submitted_all())
    }
    fn abandon(&mut self, conn: &mut Connection) {
        if let Some(a) = &mut self.first {
            a.abandon(conn);
        }
        if let Some(b) = &mut self.second {
            b.abandon(conn);
        }
        self.first = None;
        self.second = None;
    }
}
