//! The pool's policy (`duet_core::pool`) driven by scripted events: no
//! server, no threads; time is whatever the test says.

use std::time::{Duration, Instant};

use duet_core::pool::{Action, Discard, Pool, PoolOptions, PoolStatus, Pooled, WaiterId};
use duet_core::Error;

const MS: Duration = Duration::from_millis(1);

fn opts(max_size: usize) -> PoolOptions {
    PoolOptions {
        max_size,
        min_idle: 0,
        acquire_timeout: Some(1000 * MS),
        idle_timeout: None,
        max_lifetime: None,
        test_before_acquire: false,
    }
}

/// Drains the actions, naming them: `open`, `grant w<n> c<conn>`,
/// `fail w<n>`, `close c<conn>`; grants are kept in `lent`.
fn drain(p: &mut Pool<u32>, lent: &mut Vec<(WaiterId, Pooled<u32>)>) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(a) = p.poll_action() {
        out.push(match a {
            Action::Open => "open".to_string(),
            Action::Grant { waiter, conn, .. } => {
                let s = format!("grant w{} c{}", waiter.index(), conn.conn);
                lent.push((waiter, conn));
                s
            }
            Action::Fail { waiter, error } => format!("fail w{} {error}", waiter.index()),
            Action::Close(c) => format!("close c{c}"),
        });
    }
    out
}

fn take(lent: &mut Vec<(WaiterId, Pooled<u32>)>, conn: u32) -> Pooled<u32> {
    let i = lent.iter().position(|(_, c)| c.conn == conn).expect("lent");
    lent.remove(i).1
}

#[test]
fn waiters_are_served_in_order_within_max_size() {
    let t0 = Instant::now();
    let mut p = Pool::new(opts(2), t0);
    let mut lent = Vec::new();
    for _ in 0..4 {
        p.acquire(t0);
    }
    assert_eq!(
        drain(&mut p, &mut lent),
        ["open", "open"],
        "two connects for four waiters, max 2"
    );
    p.opened(Ok(1), t0);
    p.opened(Ok(2), t0);
    assert_eq!(drain(&mut p, &mut lent), ["grant w0 c1", "grant w1 c2"]);
    assert_eq!(
        p.status(),
        PoolStatus {
            size: 2,
            idle: 0,
            opening: 0,
            waiting: 2
        }
    );
    // Returned connections go to the oldest waiter.
    let c = take(&mut lent, 2);
    p.release(c, Ok(()), t0);
    assert_eq!(drain(&mut p, &mut lent), ["grant w2 c2"]);
    let c = take(&mut lent, 1);
    p.release(c, Ok(()), t0);
    assert_eq!(drain(&mut p, &mut lent), ["grant w3 c1"]);
}

#[test]
fn a_connection_given_back_while_another_opens_goes_to_the_oldest_waiter() {
    let t0 = Instant::now();
    let mut p = Pool::new(opts(2), t0);
    let mut lent = Vec::new();
    p.acquire(t0);
    drain(&mut p, &mut lent);
    p.opened(Ok(1), t0);
    drain(&mut p, &mut lent);
    // w1 waits; a connect starts for it, slow.
    p.acquire(t0);
    assert_eq!(drain(&mut p, &mut lent), ["open"]);
    // c1 comes back first: w1 gets it at once, not after the connect.
    let c = take(&mut lent, 1);
    p.release(c, Ok(()), t0);
    assert_eq!(drain(&mut p, &mut lent), ["grant w1 c1"]);
    // The connect's result then waits idle for the next caller.
    p.opened(Ok(2), t0);
    assert_eq!(drain(&mut p, &mut lent), Vec::<String>::new());
    assert_eq!(p.status().idle, 1);
    p.acquire(t0);
    assert_eq!(drain(&mut p, &mut lent), ["grant w2 c2"]);
}

#[test]
fn a_connection_not_idle_is_never_lent_again() {
    let t0 = Instant::now();
    let mut p = Pool::new(opts(1), t0);
    let mut lent = Vec::new();
    p.acquire(t0);
    drain(&mut p, &mut lent);
    p.opened(Ok(1), t0);
    drain(&mut p, &mut lent);
    p.acquire(t0);
    assert!(drain(&mut p, &mut lent).is_empty(), "max 1: waits");
    // Given back broken (or with work in flight): dropped, a new one opened.
    let c = take(&mut lent, 1);
    p.release(c, Err(Discard::NotIdle), t0);
    assert_eq!(drain(&mut p, &mut lent), ["open"]);
    p.opened(Ok(2), t0);
    assert_eq!(drain(&mut p, &mut lent), ["grant w1 c2"]);
    assert_eq!(p.status().size, 1);
}

#[test]
fn acquire_timeout_fails_the_waiter_naming_the_counts() {
    let t0 = Instant::now();
    let mut p = Pool::new(opts(1), t0);
    let mut lent = Vec::new();
    p.acquire(t0);
    drain(&mut p, &mut lent);
    p.opened(Ok(1), t0);
    drain(&mut p, &mut lent);
    p.acquire(t0);
    assert_eq!(p.poll_timeout(), Some(t0 + 1000 * MS));
    p.handle_timeout(t0 + 999 * MS);
    assert!(drain(&mut p, &mut lent).is_empty(), "spurious wake-ups change nothing");
    p.handle_timeout(t0 + 1000 * MS);
    let out = drain(&mut p, &mut lent);
    assert_eq!(out.len(), 1);
    assert!(
        out[0].starts_with("fail w1 pool: no connection within acquire_timeout (1 of 1 lent"),
        "{out:?}"
    );
    assert_eq!(p.status().waiting, 0);
}

#[test]
fn a_failing_connect_does_not_starve_waiters_a_returned_connection_can_serve() {
    let t0 = Instant::now();
    let mut p = Pool::new(opts(3), t0);
    let mut lent = Vec::new();
    p.acquire(t0);
    drain(&mut p, &mut lent);
    p.opened(Ok(1), t0);
    drain(&mut p, &mut lent);
    // The server is unreachable for new connects.
    p.acquire(t0);
    assert_eq!(drain(&mut p, &mut lent), ["open"]);
    p.opened(Err(Error::closed("refused")), t0);
    assert!(
        drain(&mut p, &mut lent).is_empty(),
        "c1 is lent and may come back: w1 keeps waiting"
    );
    // Backing off: no connect storm.
    assert_eq!(p.poll_timeout(), Some(t0 + 10 * MS));
    p.acquire(t0);
    assert!(drain(&mut p, &mut lent).is_empty());
    // c1 comes back during the back-off: served at once, in order.
    let c = take(&mut lent, 1);
    p.release(c, Ok(()), t0 + MS);
    assert_eq!(drain(&mut p, &mut lent), ["grant w1 c1"]);
    // After the back-off, a connect for w2; its failure is named when w2 times out.
    p.handle_timeout(t0 + 10 * MS);
    assert_eq!(drain(&mut p, &mut lent), ["open"]);
    p.opened(Err(Error::closed("refused")), t0 + 11 * MS);
    p.handle_timeout(t0 + 1000 * MS);
    let out = drain(&mut p, &mut lent);
    assert!(
        out.iter()
            .any(|s| s.starts_with("fail w2") && s.contains("the last connect failed")),
        "{out:?}"
    );
}

#[test]
fn with_nothing_lent_a_failed_connect_fails_the_waiters_at_once() {
    let t0 = Instant::now();
    let mut p = Pool::new(opts(2), t0);
    let mut lent = Vec::new();
    p.acquire(t0);
    p.acquire(t0);
    assert_eq!(drain(&mut p, &mut lent), ["open", "open"]);
    p.opened(Err(Error::closed("refused")), t0);
    let out = drain(&mut p, &mut lent);
    // One connect is still under way, which may serve w0: nobody fails yet.
    assert!(out.is_empty(), "{out:?}");
    p.opened(Err(Error::closed("refused")), t0);
    let out = drain(&mut p, &mut lent);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out.iter().all(|s| s.contains("refused")), "{out:?}");
}

#[test]
fn idle_and_lifetime_limits_close_connections_and_min_idle_refills() {
    let t0 = Instant::now();
    let o = PoolOptions {
        min_idle: 1,
        idle_timeout: Some(100 * MS),
        max_lifetime: Some(1000 * MS),
        ..opts(3)
    };
    let mut p = Pool::new(o, t0);
    let mut lent = Vec::new();
    assert_eq!(drain(&mut p, &mut lent), ["open"], "min_idle opens ahead");
    p.opened(Ok(1), t0);
    p.acquire(t0);
    p.acquire(t0);
    // w1 needs a connect, and min_idle another.
    assert_eq!(drain(&mut p, &mut lent), ["grant w0 c1", "open", "open"]);
    p.opened(Ok(2), t0);
    p.opened(Ok(3), t0);
    assert_eq!(drain(&mut p, &mut lent), ["grant w1 c2"], "c3 stays idle for min_idle");
    for c in [1, 2] {
        let c = take(&mut lent, c);
        p.release(c, Ok(()), t0 + 10 * MS);
    }
    assert_eq!(p.status().idle, 3);
    // Past idle_timeout, idle ones close down to min_idle.
    p.handle_timeout(t0 + 150 * MS);
    let out = drain(&mut p, &mut lent);
    assert_eq!(out.iter().filter(|s| s.starts_with("close")).count(), 2, "{out:?}");
    assert_eq!(p.status().idle, 1);
    // Past max_lifetime, the last one closes too and min_idle opens anew.
    p.handle_timeout(t0 + 1000 * MS);
    let out = drain(&mut p, &mut lent);
    assert_eq!(out.iter().filter(|s| s.starts_with("close")).count(), 1, "{out:?}");
    assert!(out.contains(&"open".to_string()), "{out:?}");
}

#[test]
fn a_connection_past_its_lifetime_is_closed_when_given_back() {
    let t0 = Instant::now();
    let mut p = Pool::new(
        PoolOptions {
            max_lifetime: Some(100 * MS),
            ..opts(1)
        },
        t0,
    );
    let mut lent = Vec::new();
    p.acquire(t0);
    drain(&mut p, &mut lent);
    p.opened(Ok(1), t0);
    drain(&mut p, &mut lent);
    let c = take(&mut lent, 1);
    p.release(c, Ok(()), t0 + 200 * MS);
    assert_eq!(drain(&mut p, &mut lent), ["close c1"]);
    assert_eq!(p.status().size, 0);
}

#[test]
fn a_waiter_that_leaves_gives_its_grant_back() {
    let t0 = Instant::now();
    let mut p = Pool::new(opts(1), t0);
    let mut lent = Vec::new();
    let w0 = p.acquire(t0);
    drain(&mut p, &mut lent);
    p.opened(Ok(1), t0);
    // The grant is queued, not yet taken, when w0's caller goes away.
    p.cancel_wait(w0, t0);
    assert!(drain(&mut p, &mut lent).is_empty());
    assert_eq!(
        p.status(),
        PoolStatus {
            size: 1,
            idle: 1,
            opening: 0,
            waiting: 0
        }
    );
    let w1 = p.acquire(t0);
    let w2 = p.acquire(t0);
    assert_eq!(drain(&mut p, &mut lent), [format!("grant w{} c1", w1.index())]);
    p.cancel_wait(w2, t0);
    assert_eq!(p.status().waiting, 0);
}

#[test]
fn test_before_acquire_is_asked_for_idle_connections() {
    let t0 = Instant::now();
    let mut p = Pool::new(
        PoolOptions {
            test_before_acquire: true,
            ..opts(1)
        },
        t0,
    );
    p.acquire(t0);
    p.poll_action();
    p.opened(Ok(1), t0);
    assert!(matches!(p.poll_action(), Some(Action::Grant { test: true, .. })));
}

/// Any interleaving of acquires, releases (reusable or not), connect
/// results and time keeps the counts within the limits, and every waiter
/// is answered by its deadline.
#[test]
fn random_schedules_keep_the_limits_and_answer_everyone() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _ in 0..200 {
        let t0 = Instant::now();
        let max = 1 + rand(4) as usize;
        let mut p = Pool::new(
            PoolOptions {
                max_size: max,
                min_idle: rand(2) as usize,
                acquire_timeout: Some(50 * MS),
                idle_timeout: Some(30 * MS),
                max_lifetime: Some(80 * MS),
                test_before_acquire: false,
            },
            t0,
        );
        let mut now = t0;
        let mut lent: Vec<(WaiterId, Pooled<u32>)> = Vec::new();
        let mut waiting: Vec<(WaiterId, Instant)> = Vec::new();
        let mut opening = 0;
        let mut next_conn = 0;
        for _ in 0..200 {
            match rand(6) {
                0 => waiting.push((p.acquire(now), now)),
                1 if !lent.is_empty() => {
                    let (_, c) = lent.remove(rand(lent.len() as u64) as usize);
                    p.release(c, if rand(4) != 0 { Ok(()) } else { Err(Discard::NotIdle) }, now);
                }
                2 if opening > 0 => {
                    opening -= 1;
                    let r = if rand(3) == 0 {
                        Err(Error::closed("refused"))
                    } else {
                        next_conn += 1;
                        Ok(next_conn)
                    };
                    p.opened(r, now);
                }
                _ => {
                    now += rand(20) as u32 * MS;
                    p.handle_timeout(now);
                }
            }
            while let Some(a) = p.poll_action() {
                match a {
                    Action::Open => opening += 1,
                    Action::Grant { waiter, conn, .. } => {
                        waiting.retain(|(w, _)| *w != waiter);
                        lent.push((waiter, conn));
                    }
                    Action::Fail { waiter, .. } => waiting.retain(|(w, _)| *w != waiter),
                    Action::Close(_) => {}
                }
            }
            let s = p.status();
            assert!(s.size <= max, "{s:?} over max {max}");
            assert_eq!(s.size, lent.len() + s.idle + opening, "{s:?}");
            assert_eq!(s.waiting, waiting.len());
            for (_, since) in &waiting {
                assert!(now < *since + 50 * MS, "a waiter outlived its acquire_timeout");
            }
            assert!(
                s.idle == 0 || s.waiting == 0,
                "idle connections while callers wait: {s:?}"
            );
        }
    }
}
