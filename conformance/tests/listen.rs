//! LISTEN/NOTIFY through each driver's `Listener` (an iterator in the
//! blocking driver, a `Stream` in tokio's): notifications in order on the
//! channels listened to, a lost connection replaced and subscribed again
//! with the gap reported, and a full event buffer reported as dropped.

use std::time::Duration;

use duet_conformance::server::TestServer;
use duet_conformance::{conformance_tests, Driver, Listening};
use duet_core::listen::{Heard, Missed};

fn url() -> String {
    TestServer::shared().url()
}

fn with_param(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

fn notify<D: Driver>(c: &mut D, channel: &str, payload: &str) {
    c.execute("SELECT pg_notify($1, $2)", &[&channel, &payload]).unwrap();
}

/// The next notification's (channel, payload), failing on anything else.
fn heard(h: Option<Heard>) -> (String, String) {
    match h {
        Some(Heard::Notification(n)) => (n.channel, n.payload),
        other => panic!("expected a notification, got {other:?}"),
    }
}

const WAIT: Duration = Duration::from_secs(10);

fn notifications_arrive_in_order_on_the_channels_listened_to<D: Driver>() {
    let jobs = format!("jobs_{}", D::NAME);
    let odd = format!("Mixed \"Case\" {}", D::NAME);
    let mut l = D::Listener::connect(&url()).unwrap();
    l.listen(&jobs).unwrap();
    l.listen(&odd).unwrap();
    let mut c = D::connect(&url()).unwrap();
    notify(&mut c, &jobs, "1");
    notify(&mut c, &format!("other_{}", D::NAME), "not listened to");
    notify(&mut c, &odd, "2");
    // Sent at commit, in order; a rolled-back transaction sends nothing.
    c.batch_execute(&format!(
        "BEGIN; SELECT pg_notify('{jobs}', '3'); SELECT pg_notify('{jobs}', '4'); COMMIT;
         BEGIN; SELECT pg_notify('{jobs}', 'rolled back'); ROLLBACK;"
    ))
    .unwrap();
    assert_eq!(heard(l.recv_timeout(WAIT).unwrap()), (jobs.clone(), "1".into()));
    assert_eq!(heard(l.recv_timeout(WAIT).unwrap()), (odd.clone(), "2".into()));
    assert_eq!(heard(l.recv_timeout(WAIT).unwrap()), (jobs.clone(), "3".into()));
    assert_eq!(heard(l.recv_timeout(WAIT).unwrap()), (jobs.clone(), "4".into()));
    assert_eq!(l.recv_timeout(Duration::from_millis(300)).unwrap(), None);
    l.unlisten(&jobs).unwrap();
    notify(&mut c, &jobs, "unheard");
    notify(&mut c, &odd, "5");
    assert_eq!(heard(l.recv_timeout(WAIT).unwrap()), (odd.clone(), "5".into()));
    // The iterator / the Stream.
    notify(&mut c, &odd, "6");
    assert_eq!(heard(Some(l.next_item().unwrap())), (odd, "6".into()));
}

fn a_lost_connection_is_replaced_subscribed_again_and_the_gap_reported<D: Driver>() {
    let app = format!("listener_{}", D::NAME);
    let channel = format!("lost_{}", D::NAME);
    let mut l = D::Listener::connect(&with_param(&url(), "application_name", &app)).unwrap();
    l.listen(&channel).unwrap();
    let mut c = D::connect(&url()).unwrap();
    notify(&mut c, &channel, "before");
    assert_eq!(heard(l.recv_timeout(WAIT).unwrap()), (channel.clone(), "before".into()));
    for round in 0..2 {
        let killed = c
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .unwrap()
            .get::<i64>(0);
        assert_eq!(killed, 1, "round {round}");
        // The gap through the iterator / Stream, then what is sent after
        // (with a time limit: unheard, it would wait forever).
        let gap = l.next_item().unwrap();
        assert_eq!(
            gap,
            Heard::Missed(Missed {
                dropped: 0,
                reconnected: true
            })
        );
        notify(&mut c, &channel, &format!("after {round}"));
        assert_eq!(
            heard(l.recv_timeout(WAIT).unwrap()),
            (channel.clone(), format!("after {round}"))
        );
    }
}

fn more_than_the_buffer_holds_is_reported_as_dropped<D: Driver>() {
    let channel = format!("flood_{}", D::NAME);
    let mut l = D::Listener::connect(&with_param(&url(), "event_capacity", "8")).unwrap();
    l.listen(&channel).unwrap();
    let mut c = D::connect(&url()).unwrap();
    c.execute(
        "SELECT count(pg_notify($1, i::text)) FROM generate_series(1, 50) i",
        &[&channel],
    )
    .unwrap();
    // However the 50 are split across reads, each is either heard, in
    // order, or counted as dropped; the last is always heard.
    let (mut dropped, mut payloads) = (0, Vec::new());
    while payloads.last().map(String::as_str) != Some("50") {
        match l.recv_timeout(WAIT).unwrap() {
            Some(Heard::Missed(m)) => {
                assert!(!m.reconnected);
                dropped += m.dropped;
            }
            Some(Heard::Notification(n)) => payloads.push(n.payload),
            None => panic!("the flood stopped after {payloads:?} and {dropped} dropped"),
        }
    }
    let numbers: Vec<u64> = payloads.iter().map(|p| p.parse().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    assert_eq!(dropped + numbers.len() as u64, 50, "{numbers:?}");
    assert!(dropped > 0, "the buffer holds 8: some were dropped");
}

conformance_tests!(
    notifications_arrive_in_order_on_the_channels_listened_to,
    a_lost_connection_is_replaced_subscribed_again_and_the_gap_reported,
    more_than_the_buffer_holds_is_reported_as_dropped,
);
