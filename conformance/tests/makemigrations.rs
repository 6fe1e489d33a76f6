//! Migrations written from the models, run by both drivers: from an empty
//! database to a first set of models; then a second set with added, renamed,
//! changed and dropped columns, a new enum, a new table and a dropped one;
//! then a third that takes a label out of the enum. Each migration is
//! applied, the schema read back must match the models exactly (a new
//! draft is empty), the data must survive the rename and the type change,
//! and reverting must bring back the schema before it.

use duet_conformance::{conformance_tests, connect_in_fresh_schema, Driver};
use duet_core::migrate::{draft, inspect, live_and_models, Draft, Migrations, Rename, Schema, VERSION_TABLE};
use duet_core::orm::prelude::*;
use duet_core::orm::ModelMeta;
use postgres_types::{FromSql, ToSql};

mod v1 {
    use super::*;

    #[derive(Model, Debug, Clone)]
    #[duet(table = "authors")]
    pub struct Author {
        #[duet(primary_key, auto)]
        pub id: i64,
        pub name: String,
        #[duet(unique)]
        pub email: String,
        pub nick: Option<String>,
        pub legacy: Option<i32>,
    }

    #[derive(Model, Debug, Clone)]
    #[duet(table = "books")]
    pub struct Book {
        #[duet(primary_key, auto)]
        pub id: i64,
        #[duet(references = Author, on_delete = "cascade")]
        pub author_id: i64,
        pub title: String,
        pub pages: i32,
        #[duet(sql_type = "varchar(40)")]
        pub code: String,
    }

    #[derive(Model, Debug, Clone)]
    #[duet(table = "drafts")]
    pub struct Draft {
        #[duet(primary_key)]
        pub slug: String,
        pub body: String,
    }

    pub fn models() -> Vec<&'static ModelMeta> {
        vec![Author::META, Book::META, Draft::META]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, ToSql, FromSql, PgEnum)]
#[postgres(name = "mm_genre")]
enum Genre {
    #[postgres(name = "fiction")]
    Fiction,
    #[postgres(name = "poetry")]
    Poetry,
    #[postgres(name = "essay")]
    Essay,
}

/// The same enum, after `poetry` is taken out.
#[derive(Debug, Clone, Copy, PartialEq, ToSql, FromSql, PgEnum)]
#[postgres(name = "mm_genre")]
enum GenreWithoutPoetry {
    #[postgres(name = "fiction")]
    Fiction,
    #[postgres(name = "essay")]
    Essay,
}

macro_rules! second_models {
    ($module:ident, $genre:ty) => {
        mod $module {
            use super::*;

            #[derive(Model, Debug, Clone)]
            #[duet(table = "authors")]
            pub struct Author {
                #[duet(primary_key, auto)]
                pub id: i64,
                #[duet(default = "'anonymous'", index)]
                pub name: String,
                #[duet(unique)]
                pub email: String,
                pub handle: Option<String>,
                pub bio: Option<String>,
            }

            #[derive(Model, Debug, Clone)]
            #[duet(table = "books")]
            pub struct Book {
                #[duet(primary_key, auto)]
                pub id: i64,
                #[duet(references = Author, on_delete = "restrict")]
                pub author_id: i64,
                #[duet(sql_type = "varchar(200)")]
                pub title: String,
                pub pages: i64,
                #[duet(sql_type = "varchar(80)")]
                pub code: String,
                #[duet(default = "'fiction'")]
                pub genre: $genre,
            }

            #[derive(Model, Debug, Clone)]
            #[duet(table = "reviews")]
            pub struct Review {
                #[duet(primary_key, auto)]
                pub id: i64,
                #[duet(references = Book, on_delete = "cascade", index)]
                pub book_id: i64,
                pub stars: i16,
            }

            /// A composite key, one of its columns also a foreign key.
            #[derive(Model, Debug, Clone)]
            #[duet(table = "shelf_places")]
            pub struct ShelfPlace {
                #[duet(primary_key, references = Book, on_delete = "cascade")]
                pub book_id: i64,
                #[duet(primary_key)]
                pub position: i16,
            }

            pub fn models() -> Vec<&'static ModelMeta> {
                vec![Author::META, Book::META, Review::META, ShelfPlace::META]
            }
        }
    };
}
second_models!(v2, Genre);
second_models!(v3, GenreWithoutPoetry);

#[derive(Debug, Clone, Copy, PartialEq, ToSql, FromSql, PgEnum)]
#[postgres(name = "st")]
enum St {
    #[postgres(name = "new")]
    New,
    #[postgres(name = "done")]
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, ToSql, FromSql, PgEnum)]
#[postgres(name = "st3")]
enum St3 {
    #[postgres(name = "a")]
    A,
    #[postgres(name = "b")]
    B,
}

/// Models over a schema made by hand the old way: a serial key, a
/// generated column, varchar keys, enums.
mod tricky {
    use super::*;

    #[derive(Model, Debug, Clone)]
    #[duet(table = "owners")]
    pub struct Owner {
        #[duet(primary_key)]
        pub code: String,
    }

    #[derive(Model, Debug, Clone)]
    #[duet(table = "things")]
    pub struct Thing {
        #[duet(primary_key, auto)]
        pub id: i32,
        #[duet(references = Owner)]
        pub owner_code: Option<String>,
        #[duet(default = "'new'")]
        pub s: St,
        pub k: Option<String>,
        pub g: Option<i32>,
        pub e: Option<St3>,
    }

    pub fn models() -> Vec<&'static ModelMeta> {
        vec![Owner::META, Thing::META]
    }
}

const HAND_MADE: &str = "CREATE TYPE st AS ENUM ('new', 'old', 'done'); \
     CREATE TYPE st2 AS ENUM ('a', 'b'); \
     CREATE TABLE owners (code varchar(10) PRIMARY KEY); \
     CREATE TABLE things (id serial PRIMARY KEY, owner_code varchar(10) REFERENCES owners (code), \
        s st NOT NULL DEFAULT 'new', k st, g integer GENERATED ALWAYS AS (id * 2) STORED, e st2); \
     INSERT INTO owners VALUES ('o1'); \
     INSERT INTO things (owner_code, s, k, e) VALUES ('o1', 'new', 'done', 'b'), (NULL, 'done', NULL, NULL)";

/// The live schema with its columns in name order (a column made again
/// comes back last; order is not compared).
fn snapshot<D: Driver>(c: &mut D) -> Schema {
    let mut s = c.run(inspect(vec![VERSION_TABLE.into()])).unwrap();
    for t in s.tables.values_mut() {
        t.columns.sort_by(|a, b| a.name.cmp(&b.name));
    }
    s
}

fn fresh<D: Driver>(test: &str) -> (D, String) {
    let schema = format!("mm_{test}_{}", D::NAME);
    (connect_in_fresh_schema(&schema), schema)
}

fn make<D: Driver>(c: &mut D, models: &[&'static ModelMeta], answers: &[(Rename, bool)]) -> Result<Draft, Vec<Rename>> {
    let (live, target) = c.run(live_and_models(models, vec![VERSION_TABLE.into()])).unwrap();
    draft(&live, &target, answers)
}

fn value<D: Driver>(c: &mut D, sql: &str) -> Option<String> {
    c.query_one(sql, &[]).unwrap().get(0)
}

fn files(drafts: &[&Draft]) -> Migrations {
    let mut files = Vec::new();
    for (i, d) in drafts.iter().enumerate() {
        files.push((format!("{}_step.up.sql", i + 1), d.up.clone()));
        files.push((format!("{}_step.down.sql", i + 1), d.down.clone()));
    }
    Migrations::from_files(files).unwrap()
}

fn written_from_models_applied_read_back_and_reverted<D: Driver>() {
    let (mut c, schema) = fresh::<D>("evolve");

    // An empty database: everything is created, nothing is asked.
    let first = make(&mut c, &v1::models(), &[]).expect("no questions on an empty database");
    assert!(!first.empty && first.destructive.is_empty(), "{}", first.up);
    let set = files(&[&first]);
    assert_eq!(c.run(set.run()).unwrap(), [1]);
    let again = make(&mut c, &v1::models(), &[]).unwrap();
    assert!(
        again.empty,
        "the schema read back differs from the models:\n{}",
        again.up
    );
    c.batch_execute(
        "INSERT INTO authors (name, email, nick, legacy) VALUES ('Ann', 'ann@example.com', 'annie', 7); \
         INSERT INTO books (author_id, title, pages, code) SELECT id, 'Dunes', 412, 'D-1' FROM authors; \
         INSERT INTO drafts VALUES ('intro', 'hello')",
    )
    .unwrap();

    // The second models: nick → handle is a rename only when said so.
    let questions = make(&mut c, &v2::models(), &[]).unwrap_err();
    let nick = Rename::Column {
        table: "authors".into(),
        from: "nick".into(),
        to: "handle".into(),
    };
    assert!(questions.contains(&nick), "{questions:?}");
    let second = make(&mut c, &v2::models(), &[(nick.clone(), true)]).expect("every question answered");
    assert!(
        second.up.contains("RENAME COLUMN \"nick\" TO \"handle\""),
        "{}",
        second.up
    );
    assert!(
        second.up.contains("-- duet:destructive: drops column authors.legacy"),
        "{}",
        second.up
    );
    assert!(
        second.up.contains("-- duet:destructive: drops table drafts"),
        "{}",
        second.up
    );
    // A narrower type may cut values; a wider one keeps them all.
    assert!(
        second
            .destructive
            .iter()
            .any(|d| d.contains("books.title changes type from text")),
        "{:?}",
        second.destructive
    );
    assert!(
        !second
            .destructive
            .iter()
            .any(|d| d.contains("books.pages") || d.contains("books.code")),
        "{:?}",
        second.destructive
    );
    let set = files(&[&first, &second]);
    assert_eq!(c.run(set.run()).unwrap(), [2]);
    let again = make(&mut c, &v2::models(), &[]).unwrap();
    assert!(
        again.empty,
        "the schema read back differs from the models:\n{}",
        again.up
    );
    // What the models declare is what the server has, seen from outside.
    let column = |name: &str, table: &str| {
        format!(
            "SELECT data_type || coalesce('(' || character_maximum_length || ')', '') || ' ' || is_nullable || ' ' \
             || coalesce(column_default, '-') FROM information_schema.columns \
             WHERE table_schema = '{schema}' AND table_name = '{table}' AND column_name = '{name}'"
        )
    };
    assert_eq!(value(&mut c, &column("pages", "books")).as_deref(), Some("bigint NO -"));
    assert_eq!(
        value(&mut c, &column("code", "books")).as_deref(),
        Some("character varying(80) NO -")
    );
    assert_eq!(
        value(&mut c, &column("genre", "books")).as_deref(),
        Some("USER-DEFINED NO 'fiction'::mm_genre")
    );
    assert_eq!(
        value(&mut c, &column("name", "authors")).as_deref(),
        Some("text NO 'anonymous'::text")
    );
    let on_delete = "SELECT confdeltype::text FROM pg_constraint WHERE conname = 'books_author_id_fkey' \
                     AND connamespace = current_schema()::regnamespace";
    assert_eq!(value(&mut c, on_delete).as_deref(), Some("r"));
    let index =
        format!("SELECT indexname::text FROM pg_indexes WHERE schemaname = '{schema}' AND tablename = 'reviews'");
    let indexes: Vec<String> = c.query(&index, &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert!(indexes.contains(&"reviews_book_id_idx".to_string()), "{indexes:?}");
    let key = "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'shelf_places_pkey' \
               AND connamespace = current_schema()::regnamespace";
    assert_eq!(
        value(&mut c, key).as_deref(),
        Some("PRIMARY KEY (book_id, \"position\")")
    );
    // The data came along: the renamed column keeps its values, the
    // retyped one converted, the new one took its default.
    let row = c
        .query_one(
            "SELECT handle, pages, genre::text FROM authors JOIN books ON author_id = authors.id",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<Option<&str>>(0), Some("annie"));
    assert_eq!(row.get::<i64>(1), 412);
    assert_eq!(row.get::<&str>(2), "fiction");
    c.batch_execute("UPDATE books SET genre = 'essay'").unwrap();

    // A label taken out of the enum: the type is made again, the rows converted.
    let third = make(&mut c, &v3::models(), &[]).unwrap();
    assert!(
        third
            .destructive
            .iter()
            .any(|d| d.contains("enum mm_genre loses 'poetry'")),
        "{:?}\n{}",
        third.destructive,
        third.up
    );
    let set = files(&[&first, &second, &third]);
    assert_eq!(c.run(set.run()).unwrap(), [3]);
    assert!(make(&mut c, &v3::models(), &[]).unwrap().empty);
    assert_eq!(value(&mut c, "SELECT genre::text FROM books").as_deref(), Some("essay"));

    // Reverting walks back: each step's schema is read back as its models.
    assert_eq!(c.run(set.revert(1)).unwrap(), [3]);
    let back = make(&mut c, &v2::models(), &[]).unwrap();
    assert!(back.empty, "revert did not restore the second schema:\n{}", back.up);
    assert_eq!(c.run(set.revert(1)).unwrap(), [2]);
    let back = make(&mut c, &v1::models(), &[]).unwrap();
    assert!(back.empty, "revert did not restore the first schema:\n{}", back.up);
    assert_eq!(value(&mut c, "SELECT nick FROM authors").as_deref(), Some("annie"));
    assert_eq!(c.run(set.revert(1)).unwrap(), [1]);
    let tables = format!("SELECT count(*)::text FROM pg_tables WHERE schemaname = '{schema}'");
    assert_eq!(
        value(&mut c, &tables).as_deref(),
        Some("1"),
        "only the version table is left"
    );
}

fn answered_no_a_rename_is_a_drop_and_an_add<D: Driver>() {
    let (mut c, _) = fresh::<D>("norename");
    let first = make(&mut c, &v1::models(), &[]).unwrap();
    c.run(files(&[&first]).run()).unwrap();
    let questions = make(&mut c, &v2::models(), &[]).unwrap_err();
    let no: Vec<(Rename, bool)> = questions.into_iter().map(|q| (q, false)).collect();
    let second = make(&mut c, &v2::models(), &no).unwrap();
    assert!(!second.up.contains("RENAME"), "{}", second.up);
    assert!(
        second.up.contains("-- duet:destructive: drops column authors.nick"),
        "{}",
        second.up
    );
    c.run(files(&[&first, &second]).run()).unwrap();
    assert!(make(&mut c, &v2::models(), &[]).unwrap().empty);
}

fn a_models_schema_is_read_without_leaving_anything<D: Driver>() {
    let (mut c, schema) = fresh::<D>("probe");
    // Inside the application's transaction too: nothing is committed or left.
    c.batch_execute("BEGIN").unwrap();
    let d = make(&mut c, &v2::models(), &[]).unwrap();
    assert!(
        d.up.contains("CREATE TYPE \"mm_genre\" AS ENUM ('fiction', 'poetry', 'essay')"),
        "{}",
        d.up
    );
    c.batch_execute("COMMIT").unwrap();
    let left = format!(
        "SELECT count(*)::text FROM pg_class WHERE relnamespace IN ('{schema}'::regnamespace, pg_my_temp_schema())"
    );
    assert_eq!(value(&mut c, &left).as_deref(), Some("0"));
    let types = format!("SELECT count(*)::text FROM pg_type WHERE typnamespace = '{schema}'::regnamespace");
    assert_eq!(value(&mut c, &types).as_deref(), Some("0"));
}

fn a_hand_made_schema_taken_over_and_given_back<D: Driver>() {
    let (mut c, _) = fresh::<D>("tricky");
    c.batch_execute(HAND_MADE).unwrap();
    let before = snapshot(&mut c);
    let d = make(&mut c, &tricky::models(), &[]).expect("nothing to ask");
    // Both ends of the foreign key change type: it is dropped and made again
    // around them; the serial's own sequence gives way to the identity's.
    assert!(d.up.contains("DROP CONSTRAINT \"things_owner_code_fkey\""), "{}", d.up);
    assert!(d.up.contains("DROP SEQUENCE things_id_seq"), "{}", d.up);
    assert!(d.up.contains("ALTER COLUMN \"g\" DROP EXPRESSION"), "{}", d.up);
    assert!(d.up.contains("USING \"e\"::text::st3"), "{}", d.up);
    let set = files(&[&d]);
    assert_eq!(c.run(set.run()).unwrap(), [1], "{}", d.up);
    let again = make(&mut c, &tricky::models(), &[]).unwrap();
    assert!(
        again.empty,
        "the schema read back differs from the models:\n{}",
        again.up
    );
    // The rows came along: the generated values kept, k left the enum as
    // text, e moved to the other enum; new keys follow the old ones.
    type ThingRow = (i32, Option<i32>, Option<String>, Option<String>, String);
    let rows: Vec<ThingRow> = c
        .query("SELECT id, g, k, e::text, s::text FROM things ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        rows,
        [
            (1, Some(2), Some("done".into()), Some("b".into()), "new".into()),
            (2, Some(4), None, None, "done".into())
        ]
    );
    let next = c
        .run(
            tricky::Thing {
                id: 0,
                owner_code: None,
                s: St::Done,
                k: None,
                g: None,
                e: Some(St3::A),
            }
            .into_save(),
        )
        .unwrap();
    assert_eq!(next.id, 3);
    c.batch_execute("DELETE FROM things WHERE id = 3").unwrap();

    // And back: the schema as it was made by hand.
    assert_eq!(c.run(set.revert(1)).unwrap(), [1], "{}", d.down);
    assert_eq!(snapshot(&mut c), before, "down:\n{}", d.down);
    let e: Option<String> = c
        .query_one("SELECT e::text FROM things WHERE id = 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(e.as_deref(), Some("b"));
}

conformance_tests!(
    a_hand_made_schema_taken_over_and_given_back,
    written_from_models_applied_read_back_and_reverted,
    answered_no_a_rename_is_a_drop_and_an_add,
    a_models_schema_is_read_without_leaving_anything,
);
