//! What `makemigrations` writes from two schemas, without a server: the
//! rename questions, the marks on destructive steps, the order of steps, and
//! the cases the live tests (conformance/tests/makemigrations.rs) do not
//! reach. The SQL itself is proven against a server there.

use duet_core::migrate::schema::{Column, Constraint, Index, Table};
use duet_core::migrate::{changes, draft, Rename, Schema};

fn col(name: &str, sql_type: &str) -> Column {
    Column {
        name: name.into(),
        sql_type: sql_type.into(),
        not_null: true,
        default: None,
        generated: None,
        identity: false,
    }
}

fn table(name: &str, columns: Vec<Column>) -> (String, Table) {
    let pk = Constraint {
        name: format!("{name}_pkey"),
        columns: vec![columns[0].name.clone()],
    };
    (
        name.to_string(),
        Table {
            columns,
            primary_key: Some(pk),
            ..Table::default()
        },
    )
}

fn schema(tables: Vec<(String, Table)>) -> Schema {
    Schema {
        tables: tables.into_iter().collect(),
        ..Schema::default()
    }
}

#[test]
fn equal_schemas_need_nothing() {
    let s = schema(vec![table("t", vec![col("id", "bigint"), col("a", "text")])]);
    let d = draft(&s, &s, &[]).unwrap();
    assert!(d.empty && d.up.is_empty() && d.down.is_empty());
}

#[test]
fn a_table_that_may_be_renamed_is_asked_about_then_renamed_or_dropped() {
    let from = schema(vec![table("people", vec![col("id", "bigint"), col("name", "text")])]);
    let to = schema(vec![table("persons", vec![col("id", "bigint"), col("name", "text")])]);
    let q = Rename::Table {
        from: "people".into(),
        to: "persons".into(),
    };
    assert_eq!(draft(&from, &to, &[]).unwrap_err(), vec![q.clone()]);
    let yes = draft(&from, &to, &[(q.clone(), true)]).unwrap();
    assert_eq!(
        yes.up,
        "ALTER TABLE \"people\" RENAME TO \"persons\";\n\
         ALTER TABLE \"persons\" RENAME CONSTRAINT \"people_pkey\" TO \"persons_pkey\";\n"
    );
    assert_eq!(
        yes.down,
        "ALTER TABLE \"persons\" RENAME TO \"people\";\n\
         ALTER TABLE \"people\" RENAME CONSTRAINT \"persons_pkey\" TO \"people_pkey\";\n"
    );
    assert!(yes.destructive.is_empty());
    let no = draft(&from, &to, &[(q, false)]).unwrap();
    assert!(no.up.contains("CREATE TABLE \"persons\"") && no.up.contains("DROP TABLE \"people\""));
    assert_eq!(no.destructive, ["drops table people and its rows"]);
    // Columns of other types: not a rename candidate, nothing to ask.
    let other = schema(vec![table(
        "persons",
        vec![col("id", "bigint"), col("name", "varchar(9)")],
    )]);
    assert!(draft(&from, &other, &[]).is_ok());
}

#[test]
fn a_column_rename_inside_a_renamed_table_is_undone_in_order() {
    let from = schema(vec![table("a", vec![col("id", "bigint"), col("x", "text")])]);
    let to = schema(vec![table("b", vec![col("id", "bigint"), col("y", "text")])]);
    let table = Rename::Table {
        from: "a".into(),
        to: "b".into(),
    };
    assert_eq!(draft(&from, &to, &[]).unwrap_err(), vec![table.clone()]);
    // The column is asked about once the table is known to be the same.
    let column = Rename::Column {
        table: "b".into(),
        from: "x".into(),
        to: "y".into(),
    };
    assert_eq!(
        draft(&from, &to, &[(table.clone(), true)]).unwrap_err(),
        vec![column.clone()]
    );
    let d = draft(&from, &to, &[(table, true), (column, true)]).unwrap();
    assert_eq!(
        d.up,
        "ALTER TABLE \"a\" RENAME TO \"b\";\n\
         ALTER TABLE \"b\" RENAME CONSTRAINT \"a_pkey\" TO \"b_pkey\";\n\
         ALTER TABLE \"b\" RENAME COLUMN \"x\" TO \"y\";\n"
    );
    assert_eq!(
        d.down,
        "ALTER TABLE \"b\" RENAME TO \"a\";\n\
         ALTER TABLE \"a\" RENAME CONSTRAINT \"b_pkey\" TO \"a_pkey\";\n\
         ALTER TABLE \"a\" RENAME COLUMN \"y\" TO \"x\";\n"
    );
}

#[test]
fn a_column_that_may_be_renamed_is_asked_about() {
    let from = schema(vec![table("a", vec![col("id", "bigint"), col("x", "text")])]);
    let to = schema(vec![table("a", vec![col("id", "bigint"), col("y", "text")])]);
    let q = Rename::Column {
        table: "a".into(),
        from: "x".into(),
        to: "y".into(),
    };
    assert_eq!(draft(&from, &to, &[]).unwrap_err(), vec![q.clone()]);
    let d = draft(&from, &to, &[(q, true)]).unwrap();
    assert_eq!(d.up, "ALTER TABLE \"a\" RENAME COLUMN \"x\" TO \"y\";\n");
    assert_eq!(d.down, "ALTER TABLE \"a\" RENAME COLUMN \"y\" TO \"x\";\n");

    // Only columns of one type are candidates; one yes settles both sides.
    let to = schema(vec![table(
        "a",
        vec![
            col("id", "bigint"),
            col("y", "text"),
            col("z", "text"),
            col("n", "integer"),
        ],
    )]);
    let questions = draft(&from, &to, &[]).unwrap_err();
    assert_eq!(questions.len(), 2, "{questions:?}");
    let yes = Rename::Column {
        table: "a".into(),
        from: "x".into(),
        to: "z".into(),
    };
    let d = draft(&from, &to, &[(yes, true)]).unwrap();
    assert!(
        d.up.starts_with("ALTER TABLE \"a\" RENAME COLUMN \"x\" TO \"z\";\n"),
        "{}",
        d.up
    );
    assert!(d.up.contains("ADD COLUMN \"y\" text NOT NULL"), "{}", d.up);
}

#[test]
fn destructive_steps_are_marked_and_widening_is_not() {
    let mut from = schema(vec![table(
        "t",
        vec![
            col("id", "integer"),
            col("a", "character varying(10)"),
            col("b", "text"),
            col("c", "numeric(10,2)"),
            col("gone", "text"),
        ],
    )]);
    from.tables.get_mut("t").unwrap().columns[2].not_null = false;
    let mut to = schema(vec![table(
        "t",
        vec![
            col("id", "bigint"),
            col("a", "text"),
            col("b", "character varying(5)"),
            col("c", "integer"),
            col("fresh", "integer"),
        ],
    )]);
    to.tables.get_mut("t").unwrap().columns[1].default = Some("'x'::text".into());
    let d = draft(&from, &to, &[]).unwrap();
    assert_eq!(
        d.destructive,
        [
            "t.b changes type from text to character varying(5): values that do not convert make it fail, or are cut",
            "t.c changes type from numeric(10,2) to integer: values that do not convert make it fail, or are cut",
            "drops column t.gone and its data",
        ],
        "{}",
        d.up
    );
    assert!(d.up.contains("-- duet:destructive: drops column t.gone"), "{}", d.up);
    // A NOT NULL column without a default fails on a table with rows: said.
    assert!(
        d.up.contains("-- note: NOT NULL without a default: fails while t has rows"),
        "{}",
        d.up
    );
    assert!(d.up.contains("ALTER COLUMN \"b\" SET NOT NULL"), "{}", d.up);
    assert!(
        d.up.contains("ALTER COLUMN \"a\" TYPE text USING \"a\"::text;\nALTER TABLE \"t\" ALTER COLUMN \"a\" SET DEFAULT 'x'::text"),
        "{}",
        d.up
    );
}

#[test]
fn enum_labels_are_added_in_place_or_the_type_is_made_again() {
    let mut from = schema(vec![table("t", vec![col("id", "bigint"), col("m", "mood")])]);
    from.enums.insert("mood".into(), vec!["sad".into(), "ok".into()]);
    let mut to = from.clone();
    to.enums.insert(
        "mood".into(),
        vec!["meh".into(), "sad".into(), "ok".into(), "great".into()],
    );
    let steps = changes(&from, &to, &[]).unwrap();
    let sql: Vec<&str> = steps.iter().map(|c| c.sql.as_str()).collect();
    assert_eq!(
        sql,
        [
            "ALTER TYPE \"mood\" ADD VALUE 'meh' BEFORE 'sad'",
            "ALTER TYPE \"mood\" ADD VALUE 'great' AFTER 'ok'",
        ]
    );
    // The way back removes labels: the type is made again and the column
    // converted through text, the old type dropped last.
    let back = changes(&to, &from, &[]).unwrap();
    let sql: Vec<&str> = back.iter().map(|c| c.sql.as_str()).collect();
    assert_eq!(
        sql,
        [
            "ALTER TYPE \"mood\" RENAME TO \"mood_duet_old\"",
            "CREATE TYPE \"mood\" AS ENUM ('sad', 'ok')",
            "ALTER TABLE \"t\" ALTER COLUMN \"m\" TYPE \"mood\" USING \"m\"::text::\"mood\"",
            "DROP TYPE \"mood_duet_old\"",
        ]
    );
    assert_eq!(
        back[2].destructive.as_deref(),
        Some("enum mood loses 'meh', 'great' (a row holding one makes this fail)")
    );
    // An enum nothing uses any more goes; one still used stays.
    let mut unused = schema(vec![table("t", vec![col("id", "bigint")])]);
    unused.enums.clear();
    let steps = changes(&from, &unused, &[]).unwrap();
    assert_eq!(steps.last().unwrap().sql, "DROP TYPE \"mood\"");
}

#[test]
fn identity_generated_keys_and_indexes() {
    let mut from = schema(vec![table(
        "t",
        vec![col("id", "bigint"), col("a", "integer"), col("g", "integer")],
    )]);
    {
        let t = from.tables.get_mut("t").unwrap();
        t.columns[2].generated = Some("(a * 2)".into());
        t.columns[2].not_null = false;
        // An index the application made by hand is left alone; one named as
        // duet names them is duet's.
        t.indexes.push(Index {
            name: "t_a_by_hand".into(),
            columns: vec!["a".into()],
            unique: false,
        });
        t.indexes.push(Index {
            name: "t_g_idx".into(),
            columns: vec!["g".into()],
            unique: false,
        });
    }
    let mut to = from.clone();
    {
        let t = to.tables.get_mut("t").unwrap();
        t.columns[0].identity = true;
        t.columns[2].generated = Some("(a * 3)".into());
        t.indexes.clear();
        t.uniques.push(Constraint {
            name: "t_a_key".into(),
            columns: vec!["a".into()],
        });
    }
    let sql: Vec<String> = changes(&from, &to, &[]).unwrap().into_iter().map(|c| c.sql).collect();
    assert_eq!(
        sql,
        [
            // t_g_idx goes with the column made again, and is not wanted back.
            "ALTER TABLE \"t\" ALTER COLUMN \"id\" ADD GENERATED BY DEFAULT AS IDENTITY",
            "SELECT setval(pg_get_serial_sequence('\"t\"', 'id'), coalesce(max(\"id\"), 0) + 1, false) FROM \"t\"",
            "ALTER TABLE \"t\" DROP COLUMN \"g\"",
            "ALTER TABLE \"t\" ADD COLUMN \"g\" integer GENERATED ALWAYS AS ((a * 3)) STORED",
            "ALTER TABLE \"t\" ADD CONSTRAINT \"t_a_key\" UNIQUE (\"a\")",
        ]
    );
}

#[test]
fn a_rename_that_matches_nothing_is_reported() {
    let from = schema(vec![table("a", vec![col("id", "bigint"), col("x", "text")])]);
    let to = schema(vec![table("a", vec![col("id", "bigint"), col("y", "integer")])]);
    // x → y changes type too: not a candidate, so the answer is unused.
    let answer = Rename::Column {
        table: "a".into(),
        from: "x".into(),
        to: "y".into(),
    };
    let d = draft(&from, &to, &[(answer.clone(), true)]).unwrap();
    assert_eq!(d.unmatched, [answer]);
    assert!(d.up.contains("DROP COLUMN \"x\""), "{}", d.up);
}

#[test]
fn renamed_tables_and_columns_take_duet_named_keys_and_indexes_along() {
    let mut from = schema(vec![table("posts", vec![col("id", "bigint"), col("slug", "text")])]);
    {
        let t = from.tables.get_mut("posts").unwrap();
        t.uniques.push(Constraint {
            name: "posts_slug_key".into(),
            columns: vec!["slug".into()],
        });
        t.indexes.push(Index {
            name: "posts_slug_idx".into(),
            columns: vec!["slug".into()],
            unique: false,
        });
    }
    let mut to = schema(vec![table("articles", vec![col("id", "bigint"), col("path", "text")])]);
    {
        let t = to.tables.get_mut("articles").unwrap();
        t.uniques.push(Constraint {
            name: "articles_path_key".into(),
            columns: vec!["path".into()],
        });
        t.indexes.push(Index {
            name: "articles_path_idx".into(),
            columns: vec!["path".into()],
            unique: false,
        });
    }
    let answers = [
        (
            Rename::Table {
                from: "posts".into(),
                to: "articles".into(),
            },
            true,
        ),
        (
            Rename::Column {
                table: "articles".into(),
                from: "slug".into(),
                to: "path".into(),
            },
            true,
        ),
    ];
    let d = draft(&from, &to, &answers).unwrap();
    assert_eq!(
        d.up,
        "ALTER TABLE \"posts\" RENAME TO \"articles\";\n\
         ALTER TABLE \"articles\" RENAME CONSTRAINT \"posts_pkey\" TO \"articles_pkey\";\n\
         ALTER TABLE \"articles\" RENAME CONSTRAINT \"posts_slug_key\" TO \"articles_slug_key\";\n\
         ALTER INDEX \"posts_slug_idx\" RENAME TO \"articles_slug_idx\";\n\
         ALTER TABLE \"articles\" RENAME COLUMN \"slug\" TO \"path\";\n\
         ALTER TABLE \"articles\" RENAME CONSTRAINT \"articles_slug_key\" TO \"articles_path_key\";\n\
         ALTER INDEX \"articles_slug_idx\" RENAME TO \"articles_path_idx\";\n"
    );
    assert!(d.unmatched.is_empty());
}

#[test]
fn a_generated_column_made_again_gets_its_index_back() {
    let mut from = schema(vec![table("t", vec![col("id", "bigint"), col("g", "integer")])]);
    {
        let t = from.tables.get_mut("t").unwrap();
        t.columns[1].generated = Some("(id * 2)".into());
        t.indexes.push(Index {
            name: "t_g_idx".into(),
            columns: vec!["g".into()],
            unique: false,
        });
    }
    let mut to = from.clone();
    to.tables.get_mut("t").unwrap().columns[1].generated = Some("(id * 3)".into());
    let sql: Vec<String> = changes(&from, &to, &[]).unwrap().into_iter().map(|c| c.sql).collect();
    assert_eq!(
        sql,
        [
            "ALTER TABLE \"t\" DROP COLUMN \"g\"",
            "ALTER TABLE \"t\" ADD COLUMN \"g\" integer GENERATED ALWAYS AS ((id * 3)) STORED NOT NULL",
            "CREATE INDEX \"t_g_idx\" ON \"t\" (\"g\")",
        ]
    );
}
