//! The listener's core: channel names quoted and remembered, the
//! statement that subscribes a new connection, the back-off between
//! failed connects.

use std::time::{Duration, Instant};

use duet_core::listen::Listen;

#[test]
fn channels_are_quoted_remembered_once_and_forgotten() {
    let mut l = Listen::new();
    assert_eq!(l.listen("jobs").unwrap(), "LISTEN \"jobs\"");
    assert_eq!(l.listen("Mixed \"Case\"").unwrap(), "LISTEN \"Mixed \"\"Case\"\"\"");
    l.listen("jobs").unwrap();
    assert_eq!(
        l.subscribe_all().unwrap(),
        "LISTEN \"jobs\"; LISTEN \"Mixed \"\"Case\"\"\""
    );
    assert_eq!(l.unlisten("jobs").unwrap(), "UNLISTEN \"jobs\"");
    assert_eq!(l.channels(), ["Mixed \"Case\""]);
    assert!(l.listen("bad\0name").is_err());
    l.unlisten("Mixed \"Case\"").unwrap();
    assert_eq!(l.subscribe_all(), None);
}

#[test]
fn reconnect_attempts_back_off_and_a_success_resets() {
    let mut l = Listen::new();
    let t = Instant::now();
    l.connect_failed(t);
    assert_eq!(l.retry_at(), Some(t + Duration::from_millis(100)));
    l.connect_failed(t);
    assert_eq!(l.retry_at(), Some(t + Duration::from_millis(200)));
    for _ in 0..40 {
        l.connect_failed(t);
    }
    assert_eq!(l.retry_at(), Some(t + Duration::from_secs(5)));
    let soon = t + Duration::from_secs(1);
    assert_eq!(l.before_connect(Some(soon)), (Some(soon), false));
    assert_eq!(l.before_connect(None), (Some(t + Duration::from_secs(5)), true));
    l.reconnected();
    assert_eq!(l.retry_at(), None);
    assert_eq!(l.before_connect(Some(soon)), (None, true));
}
