//! Property tests of the protocol core (DESIGN.md, "Testing"), with no
//! server: the bytes come from a recorded transcript, from proptest, or from
//! the fake server in `support`.
//!
//! They exist because the core's promises are universally quantified — *any*
//! split of the server's stream, *any* malformed input, abandoning at *any*
//! moment — and a handful of hand-written transcripts cannot cover that:
//!
//! - any split of a recorded server byte stream gives exactly the results and
//!   events of feeding it whole;
//! - arbitrary bytes (from the first byte, or after a valid startup with
//!   requests in flight) never panic: each call returns `Ok` or `Err`, and
//!   after an `Err` the connection is closed and every ticket resolves;
//! - abandoning requests at random moments, while their responses arrive
//!   in random chunks, never hands out an abandoned result, gives every other
//!   ticket exactly its own result, and leaves the connection idle;
//! - an operation dropped after any number of polls leaves the connection
//!   usable with no transaction open.

mod support;

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::Instant;

use duet_core::ops::{self, Operation, Step};
use duet_core::{Connection, Error, Event, Param, Request, Ticket, TransactionStatus};
use proptest::prelude::*;
use support::*;

// ---------------------------------------------------------------------------
// Any split of the server's stream
// ---------------------------------------------------------------------------

/// Submits the scenario's requests (before startup completes, so they are
/// held and sent at the first ReadyForQuery). Deterministic: a fresh
/// connection always sends the same bytes.
fn submit_scenario(conn: &mut Connection, now: Instant) -> Vec<Ticket> {
    let p: Vec<[Param; 1]> = vec![[&1i32], [&2i32], [&3i32], [&4i32], [&5i32], [&6i32], [&9i32]];
    let mut t = Vec::new();
    let q = |conn: &mut Connection, sql: &str, p: &[Param]| conn.submit(Request::query(sql, p), now).unwrap();
    t.push(q(conn, "SELECT $1::int4", &p[0]));
    t.push(q(conn, "SELECT $1::int4 notice", &p[1]));
    t.push(conn.submit(Request::simple("SELECT 'x'; SELECT 'y'"), now).unwrap());
    conn.begin_batch();
    t.push(q(conn, "SELECT $1::int4 notify", &p[2]));
    t.push(q(conn, "SELECT fail($1::int4)", &p[3]));
    t.push(q(conn, "SELECT $1::int4", &p[4]));
    conn.end_batch();
    t.push(q(conn, "SELECT $1::int4 param", &p[5]));
    t.push(conn.submit(Request::prepare("SELECT $1::int4 AS p", &[]), now).unwrap());
    t.push(conn.submit(Request::simple("SELECT fail"), now).unwrap());
    t.push(q(conn, "SELECT $1::int4", &p[6]));
    t
}

struct Recording {
    stream: Vec<u8>,
    outcomes: Vec<Outcome>,
    events: Vec<Event>,
}

/// Runs the scenario against the fake server once, recording every byte
/// the server sent, then an idle-time notification and notice.
fn recording() -> &'static Recording {
    static R: OnceLock<Recording> = OnceLock::new();
    R.get_or_init(|| {
        let now = Instant::now();
        let mut conn = Connection::new(&config(), now);
        submit_scenario(&mut conn, now);
        let mut server = FakeServer::new();
        let mut stream = Vec::new();
        loop {
            let out = drain(&mut conn);
            server.receive(&out);
            let input = server.take_all_output();
            if out.is_empty() && input.is_empty() {
                break;
            }
            stream.extend_from_slice(&input);
            conn.handle_input(&input, now)
                .expect("the fake server speaks the protocol");
        }
        stream.extend(
            Backend::new()
                .notification(7, "late", "after everything")
                .notice("WARNING", "01000", "idle notice")
                .build(),
        );
        let (outcomes, events) = feed(&stream, &[usize::MAX]);
        Recording {
            stream,
            outcomes,
            events,
        }
    })
}

/// Feeds `stream` to a fresh connection running the scenario, in chunks of
/// the given sizes (cycled; 0 is an empty read), and collects the results.
fn feed(stream: &[u8], sizes: &[usize]) -> (Vec<Outcome>, Vec<Event>) {
    feed_as(stream, sizes, false)
}

/// [`feed`], the chunks handed over as a driver does (`handle_input`), or
/// written straight into the connection's own buffer (`input_buffer` then
/// `handle_read_in_place`; a 0 there would be the end of the stream, so it
/// is skipped).
fn feed_as(stream: &[u8], sizes: &[usize], in_place: bool) -> (Vec<Outcome>, Vec<Event>) {
    let now = Instant::now();
    let mut conn = Connection::new(&config(), now);
    let tickets = submit_scenario(&mut conn, now);
    drain(&mut conn);
    let mut rest = stream;
    let mut events = Vec::new();
    // Zero is an empty read; all zeros would never finish.
    let sizes = if sizes.iter().all(|s| *s == 0) { &[1][..] } else { sizes };
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).min(rest.len());
        if in_place {
            if n > 0 {
                conn.input_buffer(n)
                    .expect("a plaintext session reads in place")
                    .extend_from_slice(&rest[..n]);
                conn.handle_read_in_place(n, now).expect("the recorded stream is valid");
            }
        } else {
            conn.handle_input(&rest[..n], now)
                .expect("the recorded stream is valid");
        }
        rest = &rest[n..];
        // Sent bytes and events are drained as a driver would.
        drain(&mut conn);
        events.extend(std::iter::from_fn(|| conn.poll_event()));
    }
    assert!(conn.is_idle());
    assert_eq!(conn.in_flight(), 0);
    let outcomes = tickets
        .iter()
        .map(|t| outcome(conn.take_result(*t).expect("finished")))
        .collect();
    (outcomes, events)
}

#[test]
fn recorded_scenario_has_the_expected_results() {
    let r = recording();
    let rows = |v: i32| Outcome::Rows {
        columns: vec![("v".into(), INT4)],
        rows: vec![vec![Some(v.to_be_bytes().to_vec())]],
        tag: Some("SELECT 1".into()),
    };
    assert_eq!(r.outcomes[0], rows(1));
    assert_eq!(r.outcomes[1], rows(2));
    assert!(matches!(&r.outcomes[2], Outcome::Simple(m) if m.len() == 4));
    assert_eq!(r.outcomes[3], rows(3));
    assert!(matches!(&r.outcomes[4], Outcome::Err(e) if e.contains("22012")));
    assert_eq!(r.outcomes[5], Outcome::Err(format!("{:?}", Error::Skipped)));
    assert_eq!(r.outcomes[6], rows(6));
    assert_eq!(
        r.outcomes[7],
        Outcome::Prepared {
            name: "duet_p6".into(),
            params: vec![INT4],
            columns: vec![("v".into(), INT4)]
        }
    );
    assert!(matches!(&r.outcomes[8], Outcome::Err(e) if e.contains("22012")));
    assert_eq!(r.outcomes[9], rows(9));
    let kinds: Vec<&str> = r
        .events
        .iter()
        .map(|e| match e {
            Event::Notice(_) => "notice",
            Event::Notification { .. } => "notification",
            Event::ParameterStatus { .. } => "parameter",
        })
        .collect();
    assert_eq!(
        kinds,
        vec!["notice", "notification", "parameter", "notification", "notice"]
    );
}

proptest! {
    #[test]
    fn any_split_gives_the_same_results_and_events(sizes in prop::collection::vec(0usize..48, 1..64)) {
        let r = recording();
        let (outcomes, events) = feed(&r.stream, &sizes);
        prop_assert_eq!(&outcomes, &r.outcomes);
        prop_assert_eq!(&events, &r.events);
    }

    #[test]
    fn any_split_read_in_place_gives_the_same_results(sizes in prop::collection::vec(0usize..48, 1..64)) {
        let r = recording();
        let (outcomes, events) = feed_as(&r.stream, &sizes, true);
        prop_assert_eq!(&outcomes, &r.outcomes);
        prop_assert_eq!(&events, &r.events);
    }

    #[test]
    fn any_two_way_split_gives_the_same_results(at in 0usize..4096) {
        let r = recording();
        let at = at % (r.stream.len() + 1);
        let (outcomes, events) = feed(&r.stream, &[at.max(1), usize::MAX]);
        prop_assert_eq!(&outcomes, &r.outcomes);
        prop_assert_eq!(&events, &r.events);
    }
}

#[test]
fn byte_by_byte_gives_the_same_results() {
    let r = recording();
    let (outcomes, events) = feed(&r.stream, &[1]);
    assert_eq!(outcomes, r.outcomes);
    assert_eq!(events, r.events);
}

// ---------------------------------------------------------------------------
// Arbitrary input never panics
// ---------------------------------------------------------------------------

/// Requests of every kind, in flight so that garbage reaches their handlers.
fn submit_some(conn: &mut Connection, now: Instant) -> Vec<Ticket> {
    let p: [Param; 1] = [&1i32];
    let mut t = vec![
        conn.submit(Request::query("SELECT $1::int4", &p), now).unwrap(),
        conn.submit(Request::simple("SELECT 1; SELECT 2"), now).unwrap(),
        conn.submit(Request::prepare("SELECT $1::int4", &[]), now).unwrap(),
    ];
    conn.begin_batch();
    t.push(conn.submit(Request::query("SELECT $1::int4", &p), now).unwrap());
    t.push(conn.submit(Request::query("SELECT 2", &[]), now).unwrap());
    conn.end_batch();
    t
}

/// Feeds `chunks` and checks the error contract after each call; then that
/// every ticket resolves once the connection is closed.
fn feed_garbage(
    mut conn: Connection,
    tickets: &[Ticket],
    chunks: &[Vec<u8>],
    now: Instant,
) -> Result<(), TestCaseError> {
    let mut failed = false;
    for c in chunks {
        let r = conn.handle_input(c, now);
        drain(&mut conn);
        while conn.poll_event().is_some() {}
        let _ = conn.poll_cancel();
        let _ = conn.poll_timeout();
        match r {
            Ok(()) => {
                prop_assert!(!failed, "Ok after an Err");
                prop_assert!(conn.closed_reason().is_none(), "Ok but closed");
            }
            Err(e) => {
                failed = true;
                prop_assert!(conn.closed_reason().is_some(), "Err({:?}) but not closed", e);
                prop_assert!(!conn.wants_input());
            }
        }
    }
    let mut pending: Vec<Ticket> = Vec::new();
    for t in tickets {
        if conn.take_result(*t).is_none() {
            pending.push(*t);
        }
    }
    conn.handle_timeout(now);
    conn.handle_eof(now);
    prop_assert!(conn.closed_reason().is_some());
    for t in pending {
        prop_assert!(conn.take_result(t).is_some(), "ticket {:?} unresolved after close", t);
    }
    prop_assert!(conn.handle_input(b"Z\0\0\0\x05I", now).is_err());
    Ok(())
}

/// Backend tags, valid and not.
const TAGS: &[u8] = b"123ACDEGHIKNRSTZcdnst!\0X";

/// A frame with a correct length, a tag from [`TAGS`] or any byte, and a
/// random body: this gets past the framing into the message handlers.
fn frame() -> impl Strategy<Value = Vec<u8>> {
    let tag = prop_oneof![4 => prop::sample::select(TAGS), 1 => any::<u8>()];
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..24),
        // Bodies that start like the real thing: counts, auth codes, statuses.
        (
            0u32..16,
            prop::collection::vec(prop_oneof![Just(0u8), Just(255u8), any::<u8>()], 0..24)
        )
            .prop_map(|(n, mut rest)| {
                let mut b = n.to_be_bytes().to_vec();
                b.append(&mut rest);
                b
            }),
        prop::sample::select(vec![
            b"I".to_vec(),
            b"T".to_vec(),
            b"E".to_vec(),
            b"SELECT 1\0".to_vec()
        ]),
    ];
    (tag, body).prop_map(|(tag, body)| Backend::new().raw(tag, &body).build())
}

/// A well-formed backend message of any kind with random contents: random
/// sequences of these reach every handler in every state.
fn message() -> impl Strategy<Value = Vec<u8>> {
    let small = || prop::collection::vec(any::<u8>(), 0..8);
    let name = || prop::sample::select(vec!["v", "a", "", "server_version", "SCRAM-SHA-256", "x y"]);
    let field =
        (name(), prop::sample::select(vec![INT4, TEXT, 0, 2278, 90001])).prop_map(|(n, oid)| Field::new(n, oid));
    let value = prop::option::of(small());
    prop_oneof![
        Just(Backend::new().auth_ok()),
        Just(Backend::new().auth_cleartext()),
        any::<[u8; 4]>().prop_map(|s| Backend::new().auth_md5(s)),
        prop::collection::vec(name(), 0..3).prop_map(|m| Backend::new().auth_sasl(&m)),
        small().prop_map(|d| Backend::new().auth_sasl_continue(&d)),
        small().prop_map(|d| Backend::new().auth_sasl_final(&d)),
        any::<(i32, i32)>().prop_map(|(p, k)| Backend::new().backend_key_data(p, k)),
        (name(), name()).prop_map(|(n, v)| Backend::new().parameter_status(n, v)),
        prop::sample::select(b"ITEX".to_vec()).prop_map(|s| Backend::new().ready_for_query(s)),
        Just(Backend::new().parse_complete()),
        Just(Backend::new().bind_complete()),
        Just(Backend::new().close_complete()),
        Just(Backend::new().no_data()),
        Just(Backend::new().empty_query_response()),
        Just(Backend::new().portal_suspended()),
        prop::collection::vec(prop::sample::select(vec![INT4, TEXT, 0]), 0..3)
            .prop_map(|o| Backend::new().parameter_description(&o)),
        prop::collection::vec(field, 0..3).prop_map(|f| Backend::new().row_description(&f)),
        prop::collection::vec(value, 0..3).prop_map(|v| {
            let v: Vec<Option<&[u8]>> = v.iter().map(|x| x.as_deref()).collect();
            Backend::new().data_row(&v)
        }),
        name().prop_map(|t| Backend::new().command_complete(t)),
        (
            prop::sample::select(vec!["ERROR", "FATAL", "PANIC", "WARNING"]),
            prop::sample::select(vec!["22012", "57014", "0A000", "26000", "XX000"])
        )
            .prop_map(|(s, c)| Backend::new().error(s, c, "boom")),
        Just(Backend::new().notice("NOTICE", "00000", "hello")),
        (any::<i32>(), name(), name()).prop_map(|(p, c, m)| Backend::new().notification(p, c, m)),
        Just(Backend::new().raw(b'H', &[0, 0, 0])),
        Just(Backend::new().raw(b'G', &[0, 0, 0])),
        small().prop_map(|d| Backend::new().raw(b'd', &d)),
        Just(Backend::new().raw(b'c', &[])),
    ]
    .prop_map(Backend::build)
}

/// Splits `bytes` at the given cut points.
fn cut(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

proptest! {
    #[test]
    fn arbitrary_bytes_from_the_start(bytes in prop::collection::vec(any::<u8>(), 0..512), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let now = Instant::now();
        let mut conn = Connection::new(&config(), now);
        let tickets = submit_some(&mut conn, now);
        drain(&mut conn);
        feed_garbage(conn, &tickets, &cut(&bytes, &cuts), now)?;
    }

    #[test]
    fn arbitrary_bytes_after_startup(bytes in prop::collection::vec(any::<u8>(), 0..512), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let now = Instant::now();
        let mut conn = ready_connection(&config(), now);
        let tickets = submit_some(&mut conn, now);
        drain(&mut conn);
        feed_garbage(conn, &tickets, &cut(&bytes, &cuts), now)?;
    }

    #[test]
    fn arbitrary_frames_from_the_start(frames in prop::collection::vec(frame(), 0..24), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let now = Instant::now();
        let mut conn = Connection::new(&config(), now);
        let tickets = submit_some(&mut conn, now);
        drain(&mut conn);
        feed_garbage(conn, &tickets, &cut(&frames.concat(), &cuts), now)?;
    }

    #[test]
    fn arbitrary_frames_after_startup(frames in prop::collection::vec(frame(), 0..24), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let now = Instant::now();
        let mut conn = ready_connection(&config(), now);
        let tickets = submit_some(&mut conn, now);
        drain(&mut conn);
        feed_garbage(conn, &tickets, &cut(&frames.concat(), &cuts), now)?;
    }

    #[test]
    fn arbitrary_messages_from_the_start(msgs in prop::collection::vec(message(), 0..32), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let now = Instant::now();
        let mut conn = Connection::new(&config(), now);
        let tickets = submit_some(&mut conn, now);
        drain(&mut conn);
        feed_garbage(conn, &tickets, &cut(&msgs.concat(), &cuts), now)?;
    }

    #[test]
    fn arbitrary_messages_after_startup(msgs in prop::collection::vec(message(), 0..32), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let now = Instant::now();
        let mut conn = ready_connection(&config(), now);
        let tickets = submit_some(&mut conn, now);
        drain(&mut conn);
        feed_garbage(conn, &tickets, &cut(&msgs.concat(), &cuts), now)?;
    }

    /// The valid recorded stream with a few bytes overwritten, inserted or
    /// removed: the closest garbage to what a confused server would send.
    #[test]
    fn mutated_valid_stream(
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut stream = recording().stream.clone();
        for (at, byte, kind) in edits {
            let at = at % stream.len();
            match kind {
                0 => stream[at] = byte,
                1 => stream.insert(at, byte),
                _ => { stream.remove(at); }
            }
        }
        let now = Instant::now();
        let mut conn = Connection::new(&config(), now);
        let tickets = submit_scenario(&mut conn, now);
        drain(&mut conn);
        feed_garbage(conn, &tickets, &cut(&stream, &cuts), now)?;
    }
}

// ---------------------------------------------------------------------------
// Abandoning at random points
// ---------------------------------------------------------------------------

const SQLS: &[&str] = &[
    "SELECT $1::int4",
    "SELECT $1::int4 AS b",
    "SELECT $1::int4 AS c notice",
    "SELECT fail($1::int4)",
    "SELECT badsql($1::int4)",
];

#[derive(Debug, Clone)]
enum Action {
    /// Submit the next group of queries.
    Submit,
    /// Move up to n bytes from the connection to the server.
    Send(usize),
    /// Feed up to n bytes of the server's answers to the connection.
    Feed(usize),
    Abandon(usize),
    Take(usize),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        2 => Just(Action::Submit),
        2 => (1usize..120).prop_map(Action::Send),
        3 => (1usize..120).prop_map(Action::Feed),
        2 => any::<usize>().prop_map(Action::Abandon),
        2 => any::<usize>().prop_map(Action::Take),
    ]
}

/// A query: which SQL, whether it ends its group, whether its group is sent
/// as one batch (one Sync) or statement by statement.
fn query_spec() -> impl Strategy<Value = (usize, bool, bool)> {
    (
        prop_oneof![6 => 0usize..3, 1 => 3usize..5],
        any::<bool>(),
        any::<bool>(),
    )
}

fn check_abandon_property(
    specs: &[(usize, bool, bool)],
    actions: &[Action],
    capacity: usize,
) -> Result<(), TestCaseError> {
    let now = Instant::now();
    let mut cfg = config();
    cfg.statement_cache_capacity = capacity;
    let mut conn = Connection::new(&cfg, now);
    let mut server = FakeServer::new();
    pump(&mut conn, &mut server, now).unwrap();
    prop_assert!(conn.is_ready());

    // Groups of query indices.
    let mut groups: Vec<(Vec<usize>, bool)> = Vec::new();
    let mut cur = Vec::new();
    for (i, (_, ends, batch)) in specs.iter().enumerate() {
        cur.push(i);
        if *ends || i + 1 == specs.len() {
            groups.push((std::mem::take(&mut cur), *batch));
        }
    }
    let values: Vec<i32> = (0..specs.len() as i32).map(|i| i * 7 + 1).collect();
    let mut next_group = 0;
    let mut tickets: Vec<Ticket> = Vec::new();
    let mut abandoned: HashSet<usize> = HashSet::new();
    let mut taken: Vec<Option<Outcome>> = vec![None; specs.len()];

    let submit_group = |conn: &mut Connection, tickets: &mut Vec<Ticket>, next_group: &mut usize| {
        let (group, batch) = &groups[*next_group];
        *next_group += 1;
        if *batch {
            conn.begin_batch();
        }
        for &i in group {
            let p: [Param; 1] = [&values[i]];
            tickets.push(conn.submit(Request::query(SQLS[specs[i].0], &p), now).unwrap());
        }
        if *batch {
            conn.end_batch();
        }
    };

    let take = |conn: &mut Connection,
                i: usize,
                t: Ticket,
                abandoned: &HashSet<usize>,
                taken: &mut Vec<Option<Outcome>>|
     -> Result<(), TestCaseError> {
        let r = conn.take_result(t);
        if abandoned.contains(&i) {
            prop_assert!(r.is_none(), "abandoned ticket {} returned {:?}", i, r.map(outcome));
        } else if taken[i].is_some() {
            prop_assert!(r.is_none(), "ticket {} returned twice", i);
        } else if let Some(r) = r {
            taken[i] = Some(coarse_outcome(r));
        }
        Ok(())
    };

    for a in actions {
        match a {
            Action::Submit => {
                if next_group < groups.len() {
                    submit_group(&mut conn, &mut tickets, &mut next_group);
                }
            }
            Action::Send(n) => {
                let n = (*n).min(conn.poll_transmit().len());
                server.receive(&conn.poll_transmit()[..n]);
                conn.advance_transmit(n);
            }
            Action::Feed(n) => {
                let bytes = server.take_output(*n);
                conn.handle_input(&bytes, now)
                    .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            }
            Action::Abandon(k) => {
                if !tickets.is_empty() {
                    let i = k % tickets.len();
                    conn.abandon(tickets[i]);
                    if taken[i].is_none() {
                        abandoned.insert(i);
                    }
                }
            }
            Action::Take(k) => {
                if !tickets.is_empty() {
                    let i = k % tickets.len();
                    take(&mut conn, i, tickets[i], &abandoned, &mut taken)?;
                }
            }
        }
    }
    while next_group < groups.len() {
        submit_group(&mut conn, &mut tickets, &mut next_group);
    }
    pump(&mut conn, &mut server, now).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;

    prop_assert_eq!(server.executed.len(), specs.len(), "one Execute per ticket");
    for (i, t) in tickets.iter().enumerate() {
        take(&mut conn, i, *t, &abandoned, &mut taken)?;
        if abandoned.contains(&i) {
            continue;
        }
        let got = taken[i].clone();
        prop_assert!(got.is_some(), "ticket {} has no result", i);
        let expected = expected_outcome(&server.executed[i]);
        prop_assert_eq!(got.as_ref(), Some(&expected), "ticket {} ({})", i, SQLS[specs[i].0]);
        if let Executed::Row(v) = &server.executed[i] {
            prop_assert_eq!(
                v.as_deref(),
                Some(&values[i].to_be_bytes()[..]),
                "the server saw the right parameter"
            );
        }
    }
    prop_assert_eq!(conn.in_flight(), 0);
    prop_assert!(conn.is_idle());
    prop_assert!(!conn.wants_input());
    prop_assert!(conn.poll_transmit().is_empty());
    prop_assert!(conn.closed_reason().is_none());
    prop_assert!(conn.cached_statements() <= capacity);

    // Still in step with the server: one more query gets its own answer.
    let p: [Param; 1] = [&12345i32];
    let t = conn.submit(Request::query(SQLS[0], &p), now).unwrap();
    pump(&mut conn, &mut server, now).unwrap();
    prop_assert_eq!(
        coarse_outcome(conn.take_result(t).unwrap()),
        expected_outcome(&Executed::Row(Some(12345i32.to_be_bytes().to_vec())))
    );
    Ok(())
}

proptest! {
    #[test]
    fn abandon_at_random_points(
        specs in prop::collection::vec(query_spec(), 1..=20),
        actions in prop::collection::vec(action(), 0..80),
        capacity in 0usize..4,
    ) {
        check_abandon_property(&specs, &actions, capacity)?;
    }
}

// ---------------------------------------------------------------------------
// Dropping an operation after any number of polls
// ---------------------------------------------------------------------------

type BoxOp = Box<dyn Operation<Output = ()>>;

fn unit<T>(_: T) -> Result<(), Error> {
    Ok(())
}

/// Operations that open transactions, nest them, fail inside them.
fn make_op(kind: usize) -> BoxOp {
    match kind {
        0 => Box::new(
            ops::atomic(ops::pipeline((
                ops::query("SELECT $1::int4", &[&1i32]).one(),
                ops::query("SELECT $1::int4 AS b", &[&2i32]).one(),
            )))
            .map(unit),
        ),
        1 => Box::new(
            ops::atomic(ops::pipeline((
                ops::query("SELECT $1::int4", &[&1i32]).one(),
                ops::atomic(ops::query("SELECT $1::int4 AS b", &[&2i32]).one()),
            )))
            .map(unit),
        ),
        2 => Box::new(ops::atomic(ops::query("SELECT fail($1::int4)", &[&3i32]).one()).map(unit)),
        3 => Box::new(
            ops::pipeline((
                ops::query("SELECT $1::int4", &[&1i32]).one(),
                ops::query("SELECT fail($1::int4)", &[&3i32]).one(),
                ops::query("SELECT $1::int4 AS c", &[&4i32]).one(),
            ))
            .map(unit),
        ),
        4 => Box::new(
            ops::atomic(ops::pipeline((
                ops::query("SELECT $1::int4 AS c notice", &[&1i32]).one(),
                ops::atomic(ops::query("SELECT fail($1::int4)", &[&2i32]).one()),
            )))
            .map(unit),
        ),
        _ => Box::new(ops::atomic(ops::atomic(ops::query("SELECT $1::int4", &[&5i32]).one())).map(unit)),
    }
}

const OP_KINDS: usize = 6;

fn check_drop_property(kind: usize, polls: usize, chunks: &[usize]) -> Result<(), TestCaseError> {
    let now = Instant::now();
    let mut conn = Connection::new(&config(), now);
    let mut server = FakeServer::new();
    pump(&mut conn, &mut server, now).unwrap();
    let mut op = make_op(kind);
    let mut finished = false;
    let mut chunks = chunks.iter().cycle();
    for _ in 0..polls {
        if let Step::Ready(_) = op.poll(&mut conn, now) {
            finished = true;
            break;
        }
        server.receive(&drain(&mut conn));
        let bytes = server.take_output(*chunks.next().unwrap());
        conn.handle_input(&bytes, now)
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    }
    if !finished {
        op.abandon(&mut conn);
    }
    drop(op);
    pump(&mut conn, &mut server, now).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    prop_assert_eq!(conn.in_flight(), 0);
    prop_assert_eq!(conn.atomic_depth(), 0);
    prop_assert_eq!(
        conn.transaction_status(),
        TransactionStatus::Idle,
        "a transaction was left open"
    );
    prop_assert!(conn.is_idle());

    // Usable: a query, then a transaction, work.
    let mut q = ops::query("SELECT $1::int4", &[&77i32]).one();
    let row = run(&mut q, &mut conn, &mut server, now).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    prop_assert_eq!(row.get::<i32>(0), 77);
    let mut tx = ops::atomic(ops::query("SELECT $1::int4", &[&78i32]).one());
    let row = run(&mut tx, &mut conn, &mut server, now).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    prop_assert_eq!(row.get::<i32>(0), 78);
    prop_assert!(conn.is_idle());
    Ok(())
}

/// The DESIGN.md procedure, exhaustively: poll i times, drop, for every i
/// until the operation completes, feeding the server's answers whole.
#[test]
fn dropped_after_i_polls_leaves_no_transaction_open() {
    for kind in 0..OP_KINDS {
        for polls in 0..12 {
            check_drop_property(kind, polls, &[usize::MAX])
                .unwrap_or_else(|e| panic!("kind {kind}, {polls} polls: {e}"));
        }
    }
}

proptest! {
    /// The same with the answers arriving in random pieces between polls.
    #[test]
    fn dropped_after_random_polls_and_chunks(
        kind in 0..OP_KINDS,
        polls in 0usize..16,
        chunks in prop::collection::vec(0usize..80, 1..16),
    ) {
        check_drop_property(kind, polls, &chunks)?;
    }
}
