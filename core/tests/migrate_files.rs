//! Migration files read without a server: names, versions, checksums, the
//! no-transaction marker, and statements split where PostgreSQL would.

use duet_core::migrate::{split_statements, Migrations};

#[test]
fn files_become_ordered_migrations_with_checksums() {
    let m = Migrations::from_files([
        ("migrations/10_later.up.sql", "SELECT 2"),
        ("2_first.sql", "-- duet:no-transaction\nSELECT 1"),
        ("10_later.down.sql", "SELECT -2"),
        ("notes.txt", "ignored"),
    ])
    .unwrap();
    let list = m.list();
    assert_eq!(
        list.iter().map(|m| (m.version, m.name.as_str())).collect::<Vec<_>>(),
        [(2, "first"), (10, "later")]
    );
    assert!(list[0].no_transaction && !list[1].no_transaction);
    assert_eq!(list[1].down.as_deref(), Some("SELECT -2"));
    assert_eq!(list[0].checksum.len(), 32);
    let again = Migrations::from_files([("2_first.sql", "-- duet:no-transaction\nSELECT 1 ")]).unwrap();
    assert_ne!(
        again.list()[0].checksum,
        list[0].checksum,
        "one byte changes the checksum"
    );
}

#[test]
fn statements_split_outside_quotes_dollar_bodies_and_comments() {
    let sql = "CREATE TABLE t (a text DEFAULT 'x;y');\n\
               -- a comment; with a semicolon\n\
               CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $fn$ SELECT 1; $fn$;\n\
               /* block; /* nested; */ still */ SELECT \"odd;name\" FROM t;\n\
               DO $$ BEGIN PERFORM 1; END $$;\n\
               -- only a comment at the end;\n";
    let parts = split_statements(sql);
    assert_eq!(parts.len(), 4, "{parts:#?}");
    assert!(parts[0].starts_with("CREATE TABLE") && parts[0].contains("'x;y'"));
    assert!(parts[1].ends_with("$fn$ SELECT 1; $fn$"), "{}", parts[1]);
    assert!(parts[2].contains("\"odd;name\""));
    assert!(parts[3].starts_with("DO $$"));
    // Unterminated quotes and bodies never panic.
    for s in ["'open", "$tag$ open", "/* open", "\"open", "$", "$1;"] {
        let _ = split_statements(s);
    }
}
