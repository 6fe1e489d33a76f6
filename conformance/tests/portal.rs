//! Portals: a query bound once inside a transaction, its rows fetched a
//! few at a time with other statements (and other portals) in between.

use duet_conformance::{assert_usable, conformance_tests, connect, Driver};
use duet_core::ops::{atomic, fetch, portal, then};
use duet_core::{Operation, Type};

fn ints(rows: &[duet_core::Row]) -> Vec<i32> {
    rows.iter().map(|r| r.get::<i32>(0)).collect()
}

fn a_portal_gives_its_rows_a_few_at_a_time_between_other_statements<D: Driver>() {
    let mut c: D = connect();
    let err = c.run(portal("SELECT 1", &[])).unwrap_err();
    assert!(err.to_string().contains("transaction"), "{err}");

    c.batch_execute("BEGIN").unwrap();
    let p = c
        .run(portal("SELECT i, i * $1 FROM generate_series(1, 10) i", &[&2i32]))
        .unwrap();
    assert_eq!(p.columns()[1].type_, Type::INT4);
    let q = c
        .run(portal("SELECT 'x' || i FROM generate_series(1, 3) i", &[]))
        .unwrap();
    let f = c.run(fetch(&p, 3)).unwrap();
    assert_eq!((ints(&f.rows), f.done), (vec![1, 2, 3], false));
    assert_eq!(f.rows[2].get::<i32>(1), 6);
    assert_eq!(c.query_one("SELECT 42", &[]).unwrap().get::<i32>(0), 42);
    let g = c.run(fetch(&q, 0)).unwrap();
    assert_eq!(
        g.rows.iter().map(|r| r.get::<String>(0)).collect::<Vec<_>>(),
        ["x1", "x2", "x3"]
    );
    assert!(g.done);
    let f = c.run(fetch(&p, 4)).unwrap();
    assert_eq!((ints(&f.rows), f.done), (vec![4, 5, 6, 7], false));
    let f = c.run(fetch(&p, 0)).unwrap();
    assert_eq!((ints(&f.rows), f.done), (vec![8, 9, 10], true));
    // Asking for exactly what is left: done once fewer come than asked.
    let e = c.run(portal("SELECT 1 WHERE false", &[])).unwrap();
    let f = c.run(fetch(&e, 5)).unwrap();
    assert!(f.rows.is_empty() && f.done);
    c.batch_execute("COMMIT").unwrap();

    // The portal ended with its transaction: the server says so.
    c.batch_execute("BEGIN").unwrap();
    let err = c.run(fetch(&p, 1)).unwrap_err();
    assert_eq!(err.code(), Some("34000"), "{err}");
    c.batch_execute("ROLLBACK").unwrap();

    // An error among its rows fails the fetch that reaches it.
    c.batch_execute("BEGIN").unwrap();
    let p = c
        .run(portal("SELECT 12 / (4 - i) FROM generate_series(1, 10) i", &[]))
        .unwrap();
    let f = c.run(fetch(&p, 3)).unwrap();
    assert_eq!(ints(&f.rows), [4, 6, 12]);
    let err = c.run(fetch(&p, 3)).unwrap_err();
    assert_eq!(err.code(), Some("22012"), "{err}");
    c.batch_execute("ROLLBACK").unwrap();
    assert_usable(&mut c);

    // Composed: inside `atomic`, the fetch built from the bound portal.
    let rows = c
        .run(atomic(then(portal("SELECT generate_series(1, 100)", &[]), |p| {
            Ok(fetch(&p, 2).map(|f| Ok(f.rows)))
        })))
        .unwrap();
    assert_eq!(ints(&rows), [1, 2]);
    assert_usable(&mut c);
}

conformance_tests!(a_portal_gives_its_rows_a_few_at_a_time_between_other_statements);
