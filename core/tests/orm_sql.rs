//! The ORM's SQL, rendered without a server: one test per builder shape,
//! checking the exact text and the values bound to its placeholders. The
//! conformance suite runs the same shapes against PostgreSQL; these pin the
//! text down so a change in it is a deliberate one.

mod support;

use std::time::Instant;

use duet_core::ops::Operation;
use duet_core::orm::prelude::*;
use duet_core::orm::{escape_like, Sql};
use support::*;

#[derive(Model, Debug, Clone)]
struct User {
    #[duet(primary_key, auto)]
    id: i32,
    #[duet(unique)]
    email: String,
    name: String,
    #[duet(default = "0")]
    logins: i32,
    hair_color: Option<String>,
}

#[derive(Model, Debug, Clone)]
struct Post {
    #[duet(primary_key, auto)]
    id: i32,
    #[duet(references = User, on_delete = "cascade")]
    user_id: i32,
    title: String,
}

#[derive(Model, Debug, Clone)]
struct Comment {
    #[duet(primary_key, auto)]
    id: i32,
    #[duet(references = Post)]
    post_id: i32,
    text: String,
}

#[derive(Model, Debug, Clone)]
#[duet(table = "we\"ird; DROP TABLE users --")]
struct Hostile {
    #[duet(primary_key, column = "i\"d")]
    id: String,
    #[duet(column = "a b -- c")]
    value: Option<i64>,
}

#[derive(Model, Debug, Clone)]
struct Category {
    #[duet(primary_key)]
    slug: String,
}

#[derive(Model, Debug, Clone)]
struct Address {
    #[duet(primary_key, auto)]
    id: i64,
}

const USER_COLS: &str = r#""users"."id", "users"."email", "users"."name", "users"."logins", "users"."hair_color""#;

fn params(s: &Sql) -> String {
    format!("{:?}", s.params)
}

fn user(id: i32, email: &str) -> User {
    User {
        id,
        email: email.into(),
        name: "N".into(),
        logins: 0,
        hair_color: None,
    }
}

#[test]
fn table_names_and_column_handles() {
    assert_eq!(User::META.table, "users");
    assert_eq!(Category::META.table, "categories");
    assert_eq!(Address::META.table, "addresses");
    assert_eq!(Hostile::META.table, "we\"ird; DROP TABLE users --");
    assert_eq!(User::LOGINS.index, 3);
    assert_eq!(Post::USER.column, "user_id");
}

#[test]
fn plain_select_quotes_every_identifier() {
    let s = User::objects().to_sql();
    assert_eq!(s.text, format!(r#"SELECT {USER_COLS} FROM "users""#));
    assert!(s.params.is_empty());
    let h = Hostile::objects().filter(Hostile::VALUE.eq(1)).to_sql();
    assert_eq!(
        h.text,
        r#"SELECT "we""ird; DROP TABLE users --"."i""d", "we""ird; DROP TABLE users --"."a b -- c" FROM "we""ird; DROP TABLE users --" WHERE ("we""ird; DROP TABLE users --"."a b -- c" = $1)"#
    );
}

#[test]
fn comparisons_bind_every_value() {
    let s = User::objects()
        .filter(User::ID.eq(1))
        .filter(User::ID.ne(2))
        .filter(User::LOGINS.lt(3) | User::LOGINS.le(4))
        .filter(User::LOGINS.gt(5) & User::LOGINS.ge(6))
        .to_sql();
    assert!(s.text.ends_with(
        r#"WHERE (((("users"."id" = $1) AND ("users"."id" <> $2)) AND (("users"."logins" < $3) OR ("users"."logins" <= $4))) AND (("users"."logins" > $5) AND ("users"."logins" >= $6)))"#
    ), "{}", s.text);
    assert_eq!(params(&s), "[1, 2, 3, 4, 5, 6]");
}

#[test]
fn in_is_one_array_parameter() {
    let s = User::objects().filter(User::NAME.in_(["a", "b", "c"])).to_sql();
    assert!(s.text.ends_with(r#"WHERE ("users"."name" = ANY($1))"#), "{}", s.text);
    assert_eq!(params(&s), r#"[["a", "b", "c"]]"#);
    let ids = User::objects().filter(User::ID.in_(vec![1, 2])).to_sql();
    assert_eq!(params(&ids), "[[1, 2]]");
}

#[test]
fn null_like_between_not_and_exclude() {
    let s = User::objects()
        .filter(User::HAIR_COLOR.is_null())
        .filter(User::HAIR_COLOR.is_not_null())
        .filter(User::NAME.like("a%"))
        .filter(User::NAME.ilike("B%"))
        .filter(User::LOGINS.between(1, 9))
        .filter(!User::ID.eq(7))
        .exclude(User::EMAIL.eq("x"))
        .to_sql();
    let w = s.text.split(" WHERE ").nth(1).unwrap();
    assert_eq!(
        w,
        r#"((((((("users"."hair_color" IS NULL) AND ("users"."hair_color" IS NOT NULL)) AND ("users"."name" LIKE $1 ESCAPE E'\\')) AND ("users"."name" ILIKE $2 ESCAPE E'\\')) AND ("users"."logins" BETWEEN $3 AND $4)) AND (NOT ("users"."id" = $5))) AND (("users"."email" = $6) IS NOT TRUE))"#
    );
    assert_eq!(params(&s), r#"["a%", "B%", 1, 9, 7, "x"]"#);
}

#[test]
fn contains_escapes_wildcards() {
    assert_eq!(escape_like(r"50%_\x"), r"50\%\_\\x");
    let s = User::objects().filter(User::NAME.contains("50%")).to_sql();
    assert_eq!(params(&s), r#"["%50\\%%"]"#);
    let s = User::objects().filter(User::NAME.starts_with("a_")).to_sql();
    assert_eq!(params(&s), r#"["a\\_%"]"#);
    let s = User::objects().filter(User::NAME.ends_with("z")).to_sql();
    assert_eq!(params(&s), r#"["%z"]"#);
}

#[test]
fn expressions_on_columns() {
    let s = User::objects()
        .filter((User::LOGINS + 1).gt(User::ID * 2))
        .filter(User::NAME.lower().eq("ada"))
        .filter(User::HAIR_COLOR.or_else("none").ne("red"))
        .filter((User::LOGINS - (-1)).eq(0))
        .to_sql();
    let w = s.text.split(" WHERE ").nth(1).unwrap();
    assert_eq!(
        w,
        r#"((((("users"."logins" + $1) > ("users"."id" * $2)) AND (lower("users"."name") = $3)) AND (COALESCE("users"."hair_color", $4) <> $5)) AND (("users"."logins" - $6) = $7))"#
    );
    // The negative number is a bound value: `- -1` can never become `--1`.
    assert_eq!(params(&s), r#"[1, 2, "ada", "none", "red", -1, 0]"#);
}

#[test]
fn order_limit_offset_distinct() {
    let s = User::objects()
        .order_by(User::NAME)
        .order_by(User::HAIR_COLOR.desc().nulls_last())
        .order_by(User::ID.asc().nulls_first())
        .limit(10)
        .offset(20)
        .distinct()
        .to_sql();
    assert_eq!(
        s.text,
        format!(
            r#"SELECT DISTINCT {USER_COLS} FROM "users" ORDER BY "users"."name", "users"."hair_color" DESC NULLS LAST, "users"."id" NULLS FIRST LIMIT $1 OFFSET $2"#
        )
    );
    assert_eq!(params(&s), "[10, 20]");
}

#[test]
fn determinism_of_limited_sets() {
    assert!(User::objects().filter(User::ID.gt(1)).is_deterministic());
    assert!(!User::objects().limit(5).is_deterministic());
    assert!(!User::objects().order_by(User::NAME).limit(5).is_deterministic());
    assert!(User::objects()
        .order_by(User::NAME)
        .order_by(User::ID)
        .limit(5)
        .is_deterministic());
}

#[test]
fn joins_select_both_models() {
    let s = Post::objects()
        .select_related(Post::USER)
        .filter(User::NAME.eq("ada"))
        .to_sql();
    assert_eq!(
        s.text,
        format!(
            r#"SELECT "posts"."id", "posts"."user_id", "posts"."title", {USER_COLS} FROM "posts" LEFT JOIN "users" ON ("posts"."user_id" = "users"."id") WHERE ("users"."name" = $1)"#
        )
    );
    let s = User::objects().left_join(Post::USER).to_sql();
    assert_eq!(
        s.text,
        format!(
            r#"SELECT {USER_COLS}, "posts"."id", "posts"."user_id", "posts"."title" FROM "users" LEFT JOIN "posts" ON ("posts"."user_id" = "users"."id")"#
        )
    );
}

#[test]
fn create_and_drop_table() {
    assert_eq!(
        User::META.create_table_sql(),
        r#"CREATE TABLE IF NOT EXISTS "users" ("id" integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "email" text NOT NULL UNIQUE, "name" text NOT NULL, "logins" integer NOT NULL DEFAULT 0, "hair_color" text)"#
    );
    assert_eq!(
        Post::META.create_table_sql(),
        r#"CREATE TABLE IF NOT EXISTS "posts" ("id" integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "user_id" integer NOT NULL REFERENCES "users" ("id") ON DELETE CASCADE, "title" text NOT NULL)"#
    );
    assert_eq!(User::META.drop_table_sql(), r#"DROP TABLE IF EXISTS "users" CASCADE"#);
}

#[test]
fn bulk_insert_leaves_out_keys_and_defaults() {
    let ins = User::bulk_insert([user(0, "a"), user(0, "b")]);
    let stmts = ins.to_sql();
    assert_eq!(stmts.len(), 1);
    assert_eq!(
        stmts[0].text,
        r#"INSERT INTO "users" ("email", "name", "hair_color") VALUES ($1, $2, $3), ($4, $5, $6) RETURNING "id", "email", "name", "logins", "hair_color""#
    );
    assert_eq!(params(&stmts[0]), r#"["a", "N", None, "b", "N", None]"#);
    // A model whose key is already set sends it.
    let stmts = User::bulk_insert([user(5, "c")]).to_sql();
    assert!(stmts[0]
        .text
        .starts_with(r#"INSERT INTO "users" ("id", "email", "name", "hair_color")"#));
}

#[test]
fn bulk_insert_chunks_under_the_parameter_limit() {
    // Three inserted columns: 21,845 rows per statement.
    let stmts = User::bulk_insert((0..50_000).map(|i| user(0, &format!("u{i}")))).to_sql();
    let rows: Vec<usize> = stmts.iter().map(|s| s.params.len() / 3).collect();
    assert_eq!(rows, [21_845, 21_845, 6_310]);
    assert!(stmts.iter().all(|s| s.params.len() <= 65_535));
}

#[test]
fn upserts() {
    let s = &User::bulk_insert([user(0, "a")])
        .on_conflict(User::EMAIL)
        .do_nothing()
        .to_sql()[0];
    assert!(
        s.text.contains(r#"ON CONFLICT ("email") DO NOTHING RETURNING"#),
        "{}",
        s.text
    );
    let s = &User::bulk_insert([user(0, "a")])
        .on_conflict(User::EMAIL)
        .do_update((User::NAME, User::HAIR_COLOR))
        .to_sql()[0];
    assert!(
        s.text.contains(
            r#"ON CONFLICT ("email") DO UPDATE SET "name" = EXCLUDED."name", "hair_color" = EXCLUDED."hair_color" RETURNING"#
        ),
        "{}",
        s.text
    );
}

#[test]
fn queryset_update_and_its_subquery_form() {
    let u = User::objects()
        .filter(User::ID.eq(3))
        .update()
        .set(User::LOGINS, User::LOGINS + 1)
        .set(User::HAIR_COLOR, None::<String>);
    let s = u.to_sql();
    assert_eq!(
        s.text,
        r#"UPDATE "users" SET "logins" = ("users"."logins" + $1), "hair_color" = $2 WHERE ("users"."id" = $3)"#
    );
    assert_eq!(params(&s), "[1, None, 3]");
    // UPDATE cannot say LIMIT: the set is selected by key in a subquery.
    let s = User::objects()
        .order_by(User::ID)
        .limit(2)
        .update()
        .set(User::NAME, "x")
        .to_sql();
    assert_eq!(
        s.text,
        r#"UPDATE "users" SET "name" = $1 WHERE ("users"."id" IN (SELECT "users"."id" FROM "users" ORDER BY "users"."id" LIMIT $2))"#
    );
}

#[test]
fn one_trip_prefetch_renders_children_with_parent_subqueries() {
    let q = User::objects()
        .filter(User::NAME.eq("ada"))
        .prefetch(Post::USER, Post::objects().prefetch(Comment::POST, Comment::objects()));
    let mut queries = Vec::new();
    q.queries(&mut queries);
    assert_eq!(queries.len(), 3);
    let sql: Vec<&str> = queries.iter().map(|q| q.sql()).collect();
    assert_eq!(
        sql[0],
        format!(r#"SELECT {USER_COLS} FROM "users" WHERE ("users"."name" = $1)"#)
    );
    assert_eq!(
        sql[1],
        r#"SELECT "posts"."id", "posts"."user_id", "posts"."title" FROM "posts" WHERE ("posts"."user_id" IN (SELECT "users"."id" FROM "users" WHERE ("users"."name" = $1)))"#
    );
    assert_eq!(
        sql[2],
        r#"SELECT "comments"."id", "comments"."post_id", "comments"."text" FROM "comments" WHERE ("comments"."post_id" IN (SELECT "posts"."id" FROM "posts" WHERE ("posts"."user_id" IN (SELECT "users"."id" FROM "users" WHERE ("users"."name" = $1)))))"#
    );
}

/// Parse messages and Syncs the first poll of `op` puts on the wire.
fn first_flight<O: Operation>(mut op: O) -> (usize, usize) {
    let now = Instant::now();
    let mut conn = ready_connection(&config(), now);
    assert!(matches!(op.poll(&mut conn, now), duet_core::Step::Pending));
    let sent = tags(&drain(&mut conn));
    (sent.matches('P').count(), sent.matches('S').count())
}

#[test]
fn one_trip_prefetch_sends_every_level_before_any_result() {
    let q = User::objects().prefetch(Post::USER, Post::objects().prefetch(Comment::POST, Comment::objects()));
    assert_eq!(first_flight(q.clone().mode(PrefetchMode::OneTrip).all()), (3, 1));
    // The two-step form can only send the first level.
    assert_eq!(first_flight(q.mode(PrefetchMode::TwoStep).all()), (1, 1));
    // Auto picks one trip for a deterministic set, two steps otherwise.
    let limited = User::objects().limit(3).prefetch(Post::USER, Post::objects());
    assert_eq!(first_flight(limited.all()), (1, 1));
}

#[test]
fn count_exists_values_aggregate_group_by() {
    let counted = User::objects().filter(User::LOGINS.gt(1)).count();
    assert_eq!(
        counted.inner().sql(),
        r#"SELECT COUNT(*) FROM "users" WHERE ("users"."logins" > $1)"#
    );
    let limited = User::objects().limit(5).count();
    assert_eq!(
        limited.inner().sql(),
        format!(r#"SELECT COUNT(*) FROM (SELECT {USER_COLS} FROM "users" LIMIT $1) AS "duet_counted""#)
    );
    let exists = User::objects().filter(User::ID.eq(1)).exists();
    assert_eq!(
        exists.inner().sql(),
        r#"SELECT EXISTS (SELECT * FROM "users" WHERE ("users"."id" = $1))"#
    );
    let values = User::objects().values((User::ID, User::NAME));
    assert_eq!(
        values.inner().sql(),
        r#"SELECT "users"."id", "users"."name" FROM "users""#
    );
    let agg = User::objects().aggregate((
        count(),
        sum(User::LOGINS),
        avg(User::LOGINS),
        min(User::NAME),
        max(User::ID),
    ));
    assert_eq!(
        agg.inner().sql(),
        r#"SELECT COUNT(*), CAST(SUM("users"."logins") AS int8), CAST(AVG("users"."logins") AS float8), MIN("users"."name"), MAX("users"."id") FROM "users""#
    );
    let grouped = User::objects()
        .group_by(User::HAIR_COLOR)
        .having(count().gt(1))
        .order_by(User::HAIR_COLOR)
        .values((User::HAIR_COLOR, count()));
    assert_eq!(
        grouped.inner().sql(),
        r#"SELECT "users"."hair_color", COUNT(*) FROM "users" GROUP BY "users"."hair_color" HAVING (COUNT(*) > $1) ORDER BY "users"."hair_color""#
    );
    let del = User::objects().filter(User::ID.lt(0)).delete();
    assert_eq!(del.inner().sql(), r#"DELETE FROM "users" WHERE ("users"."id" < $1)"#);
}

#[derive(Model, Debug, Clone)]
#[duet(hooks)]
struct Audited {
    #[duet(primary_key, auto)]
    id: i32,
}

impl Hooks for Audited {}

#[test]
fn a_transaction_around_a_save_commits_only_after_its_checks() {
    let post = Post {
        id: 0,
        user_id: 1,
        title: "t".into(),
    };
    // BEGIN, INSERT and the transaction-id probe riding behind the first
    // statement in the first flight, one Sync. The save still has to read
    // the row back into the model (an update that finds no row is an
    // error), so COMMIT waits for that: a transaction never commits work
    // its caller is told failed.
    assert_eq!(first_flight(atomic(post.into_save())), (3, 1));
    assert_eq!(first_flight(atomic(Audited { id: 0 }.into_save())), (3, 1));
    // Work with nothing to check afterwards commits in the same flight:
    // BEGIN, DELETE, the probe (parsed once, then cached: the second probe
    // before COMMIT is Bind/Execute only) and COMMIT.
    let gone = Post::objects().filter(Post::ID.lt(0)).delete();
    assert_eq!(first_flight(atomic(gone)), (4, 1));
}
