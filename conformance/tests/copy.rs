//! COPY in both directions and formats, in both drivers: data in any split,
//! binary rows, errors the server raises mid-copy, a copy dropped half way
//! (CopyFail: nothing kept), a reader dropped half way (the server is told
//! to stop), and the connection usable after each.

use duet_conformance::{assert_usable, conformance_tests, connect, Driver};
use duet_core::{Error, Type};

/// A fresh table for one test and driver.
fn table<D: Driver>(c: &mut D, name: &str, columns: &str) -> String {
    let t = format!("copy_{name}_{}", D::NAME);
    c.batch_execute(&format!("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} ({columns})"))
        .unwrap();
    t
}

fn count<D: Driver>(c: &mut D, t: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {t}"), &[]).unwrap().get(0)
}

fn text_and_csv_go_in_any_split_and_come_back_out<D: Driver>() {
    let mut c: D = connect();
    let t = table(&mut c, "csv", "id int4, name text");
    // Rows cut mid-value across writes, a quoted comma, an empty string and
    // a NULL.
    let n = c
        .copy_in(
            &format!("COPY {t} FROM STDIN (FORMAT csv)"),
            &[b"1,pe", b"n\n2,\"ink, blue\"\n3,", b"\"\"\n4,\n"],
            true,
        )
        .unwrap();
    assert_eq!(n, 4);
    let n = c
        .copy_in(&format!("COPY {t} FROM STDIN"), &[b"5\tfive\n6\t\\N\n"], true)
        .unwrap();
    assert_eq!(n, 2);
    let (out, rows) = c
        .copy_out_to(&format!("COPY (SELECT * FROM {t} ORDER BY id) TO STDOUT (FORMAT csv)"))
        .unwrap();
    assert_eq!(rows, 6);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "1,pen\n2,\"ink, blue\"\n3,\"\"\n4,\n5,five\n6,\n"
    );
    // Text format through the chunk reader: one chunk per row.
    let (chunks, rows) = c
        .copy_out(
            &format!("COPY (SELECT * FROM {t} WHERE id > 4 ORDER BY id) TO STDOUT"),
            usize::MAX,
        )
        .unwrap();
    assert_eq!(rows, Some(2));
    let chunks: Vec<&[u8]> = chunks.iter().map(|b| &b[..]).collect();
    assert_eq!(chunks, [&b"5\tfive\n"[..], &b"6\t\\N\n"[..]]);
    assert_eq!(
        c.copy_in_from(&format!("COPY {t} FROM STDIN (FORMAT csv)"), b"7,x\n8,y\n")
            .unwrap(),
        2
    );
    assert_eq!(count(&mut c, &t), 8);
    assert_usable(&mut c);
}

fn binary_rows_go_in_and_come_back_typed<D: Driver>() {
    let mut c: D = connect();
    let t = table(
        &mut c,
        "binary",
        "id int8, name text, score float8, tags text[], at timestamptz",
    );
    let types = [
        Type::INT8,
        Type::TEXT,
        Type::FLOAT8,
        Type::TEXT_ARRAY,
        Type::TIMESTAMPTZ,
    ];
    let at = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let tags = vec!["a".to_string(), "b".to_string()];
    let none: Option<String> = None;
    let long = "x".repeat(200_000);
    let n = c
        .copy_in_rows(
            &format!("COPY {t} FROM STDIN (FORMAT binary)"),
            &types,
            &[
                &[&1i64, &"one", &1.5f64, &tags, &at],
                &[&2i64, &none, &f64::NAN, &Vec::<String>::new(), &at],
                &[&3i64, &long, &-0.0f64, &tags, &at],
            ],
        )
        .unwrap();
    assert_eq!(n, 3);
    let rows = c
        .copy_out_rows(
            &format!("COPY (SELECT * FROM {t} ORDER BY id) TO STDOUT (FORMAT binary)"),
            &types,
        )
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].get::<i64>(0), 1);
    assert_eq!(rows[0].get::<&str>(1), "one");
    assert_eq!(rows[0].get::<Vec<String>>(3), tags);
    assert_eq!(rows[0].get::<std::time::SystemTime>(4), at);
    assert_eq!(rows[1].get::<Option<&str>>(1), None);
    assert!(rows[1].get::<f64>(2).is_nan());
    assert_eq!(rows[2].get::<&str>(1).len(), 200_000);
    // A value that does not fit its column's type is refused in the
    // client, naming it, and nothing of its row is sent.
    let err = c
        .copy_in_rows(
            &format!("COPY {t} FROM STDIN (FORMAT binary)"),
            &types,
            &[&[&1i32, &"x", &1.0f64, &tags, &at]],
        )
        .unwrap_err();
    assert!(err.to_string().contains("value 0"), "{err}");
    // No rows at all is still a valid binary stream.
    assert_eq!(
        c.copy_in_rows(&format!("COPY {t} FROM STDIN (FORMAT binary)"), &types, &[])
            .unwrap(),
        0
    );
    assert_eq!(count(&mut c, &t), 3);
    assert_usable(&mut c);
}

fn many_megabytes_stream_through_in_both_directions<D: Driver>() {
    let mut c: D = connect();
    let t = table(&mut c, "big", "id int4, pad text");
    // 40 MiB in 4 KiB writes: far over the writer's high-water mark, so
    // the writer waits for the socket many times over.
    let pad = "p".repeat(1000);
    let mut data = Vec::new();
    for i in 0..40_000 {
        data.extend_from_slice(format!("{i}\t{pad}\n").as_bytes());
    }
    let chunks: Vec<&[u8]> = data.chunks(4096).collect();
    let n = c.copy_in(&format!("COPY {t} FROM STDIN"), &chunks, true).unwrap();
    assert_eq!(n, 40_000);
    let (out, rows) = c
        .copy_out_to(&format!("COPY (SELECT * FROM {t} ORDER BY id) TO STDOUT"))
        .unwrap();
    assert_eq!(rows, 40_000);
    assert!(out == data, "the data come back as they went in");
    assert_usable(&mut c);
}

fn an_error_mid_copy_fails_it_whole_and_the_connection_lives_on<D: Driver>() {
    let mut c: D = connect();
    let t = table(&mut c, "bad", "id int4 PRIMARY KEY");
    // The bad line comes early; megabytes follow it. The error ends the
    // copy (a write or the finish reports it), nothing is kept.
    let mut data = b"1\n2\nthree\n".to_vec();
    for i in 4..2_000_000 {
        data.extend_from_slice(format!("{i}\n").as_bytes());
    }
    let chunks: Vec<&[u8]> = data.chunks(8192).collect();
    let (written, r) = c.copy_in_counted(&format!("COPY {t} FROM STDIN"), &chunks, true);
    let err = r.unwrap_err();
    // Seen while writing, within a few times the writer's high-water mark,
    // not after the 15 MB that follow the bad line.
    assert!(
        written * 8192 < 8 * duet_core::copy::HIGH_WATER,
        "error seen after {written} writes"
    );
    assert_eq!(err.code(), Some("22P02"), "{err}");
    let Error::Db(db) = &err else { panic!("{err:?}") };
    assert!(db.where_.as_deref().unwrap_or("").contains("line 3"), "{db:?}");
    assert_eq!(count(&mut c, &t), 0);
    // A constraint that fails at the end of the data.
    let err = c
        .copy_in(&format!("COPY {t} FROM STDIN"), &[b"1\n2\n1\n"], true)
        .unwrap_err();
    assert_eq!(err.code(), Some("23505"), "{err}");
    // A statement that fails before copying anything.
    let err = c
        .copy_in("COPY copy_no_such_table FROM STDIN", &[b"1\n"], true)
        .unwrap_err();
    assert_eq!(err.code(), Some("42P01"), "{err}");
    let err = c.copy_out(
        "COPY (SELECT 1 / (3 - i) FROM generate_series(1, 5) i) TO STDOUT",
        usize::MAX,
    );
    assert_eq!(err.unwrap_err().code(), Some("22012"));
    assert_eq!(count(&mut c, &t), 0);
    assert_usable(&mut c);
}

fn a_copy_dropped_half_way_keeps_nothing<D: Driver>() {
    let mut c: D = connect();
    let t = table(&mut c, "dropped", "id int4");
    let data: Vec<u8> = (0..300_000).flat_map(|i| format!("{i}\n").into_bytes()).collect();
    let chunks: Vec<&[u8]> = data.chunks(1000).collect();
    assert_eq!(c.copy_in(&format!("COPY {t} FROM STDIN"), &chunks, false).unwrap(), 0);
    assert_usable(&mut c);
    assert_eq!(count(&mut c, &t), 0);
    // Inside a transaction: kept only if the transaction commits.
    let err = c
        .copy_in_atomic(&format!("COPY {t} FROM STDIN"), b"1\n2\n", true)
        .unwrap_err();
    assert!(err.to_string().contains("fails after its copy"), "{err}");
    assert_eq!(count(&mut c, &t), 0);
    assert_eq!(
        c.copy_in_atomic(&format!("COPY {t} FROM STDIN"), b"1\n2\n", false)
            .unwrap(),
        2
    );
    assert_eq!(count(&mut c, &t), 2);
    assert_usable(&mut c);
}

fn a_reader_dropped_half_way_stops_the_server<D: Driver>() {
    let mut c: D = connect();
    // Endless unless stopped: the reader takes three rows and is dropped;
    // the next statement answers (the copy was cancelled, not waited out).
    let (chunks, rows) = c
        .copy_out(
            "COPY (SELECT i, pg_sleep(0.001) FROM generate_series(1, 100000000) i) TO STDOUT",
            3,
        )
        .unwrap();
    assert_eq!(chunks.len(), 3);
    assert_eq!(rows, None);
    assert_usable(&mut c);
    assert_eq!(c.query_one("SELECT 7", &[]).unwrap().get::<i32>(0), 7);
}

fn copies_in_the_wrong_direction_or_through_query_are_refused<D: Driver>() {
    let mut c: D = connect();
    let t = table(&mut c, "wrong", "id int4");
    let err = c.copy_in(&format!("COPY {t} TO STDOUT"), &[b"1\n"], true).unwrap_err();
    assert!(err.to_string().contains("copy_out"), "{err}");
    assert_usable(&mut c);
    let err = c.copy_out(&format!("COPY {t} FROM STDIN"), usize::MAX).unwrap_err();
    assert!(err.to_string().contains("copy_in"), "{err}");
    assert_usable(&mut c);
    let err = c.query(&format!("COPY {t} FROM STDIN"), &[]).unwrap_err();
    assert!(err.to_string().contains("copy_in"), "{err}");
    let err = c.query(&format!("COPY {t} TO STDOUT"), &[]).unwrap_err();
    assert!(err.to_string().contains("copy_out"), "{err}");
    let err = c.batch_execute(&format!("COPY {t} FROM STDIN")).unwrap_err();
    assert!(err.to_string().contains("copy_in"), "{err}");
    // Not a COPY at all: refused before it runs (its result would be lost).
    let err = c
        .copy_in(&format!("INSERT INTO {t} VALUES (1)"), &[b"1\n"], true)
        .unwrap_err();
    assert!(err.to_string().contains("copy_in takes a COPY"), "{err}");
    let err = c.copy_out("SELECT 1", usize::MAX).unwrap_err();
    assert!(err.to_string().contains("copy_out takes a COPY"), "{err}");
    assert_eq!(count(&mut c, &t), 0);
    assert_usable(&mut c);
}

fn a_copy_past_its_time_limit_fails_and_keeps_nothing<D: Driver>() {
    let mut c: D = connect();
    let t = table(&mut c, "timed", "id int4");
    let limit = std::time::Duration::from_millis(300);
    // A producer slower than the limit: the copy is ended by CopyFail.
    let started = std::time::Instant::now();
    let err = c
        .copy_in_timed(
            &format!("COPY {t} FROM STDIN"),
            limit,
            b"1\n",
            std::time::Duration::from_millis(600),
            b"2\n",
        )
        .unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    assert_eq!(count(&mut c, &t), 0);
    assert_usable(&mut c);
    // Fast enough: the same limit does not get in the way.
    let n = c
        .copy_in_timed(
            &format!("COPY {t} FROM STDIN"),
            limit,
            b"1\n",
            std::time::Duration::ZERO,
            b"2\n",
        )
        .unwrap();
    assert_eq!(n, 2);
    // A server slower than the limit: cancelled.
    let err = c
        .copy_out_timed("COPY (SELECT pg_sleep(30)) TO STDOUT", limit)
        .unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the sleep was cancelled"
    );
    assert_usable(&mut c);
}

conformance_tests!(
    text_and_csv_go_in_any_split_and_come_back_out,
    binary_rows_go_in_and_come_back_typed,
    many_megabytes_stream_through_in_both_directions,
    an_error_mid_copy_fails_it_whole_and_the_connection_lives_on,
    a_copy_dropped_half_way_keeps_nothing,
    a_reader_dropped_half_way_stops_the_server,
    copies_in_the_wrong_direction_or_through_query_are_refused,
    a_copy_past_its_time_limit_fails_and_keeps_nothing,
);
