//! ORM behaviour, each test written once and run against both drivers
//! (`name::sync`, `name::tokio`). Every test works in a schema of its own
//! (named after the test and the driver), so tests run in parallel on the
//! one shared server without seeing each other's tables.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use duet_conformance::server::TestServer;
use duet_conformance::{conformance_tests, Driver};
use duet_core::ops::{ready, then, then_result, Query};
use duet_core::orm::prelude::*;
use duet_core::orm::{Cond, HookCtx, Hooks};
use duet_core::{Error, Operation, TransactionStatus};

// ---- models ----

#[derive(Model, Debug, Clone, PartialEq)]
#[duet(hooks)]
struct User {
    #[duet(primary_key, auto)]
    id: i32,
    #[duet(unique)]
    email: String,
    name: String,
    #[duet(default = "0")]
    logins: i32,
    hair_color: Option<String>,
    /// Bumped by `before_save` on every save.
    version: i32,
}

impl Hooks for User {
    fn before_save(&mut self, _ctx: &mut HookCtx) -> Result<(), Error> {
        if self.email.is_empty() {
            return Err(Error::invalid("a user needs an email"));
        }
        self.version += 1;
        Ok(())
    }

    fn after_save(&mut self, ctx: &mut HookCtx) -> Result<(), Error> {
        let action = if ctx.inserting() { "insert" } else { "update" };
        ctx.queue(AuditLog::entry(self.id, action).into_save());
        Ok(())
    }

    fn before_delete(&self, ctx: &mut HookCtx) -> Result<(), Error> {
        ctx.queue(AuditLog::entry(self.id, "delete").into_save());
        Ok(())
    }
}

impl User {
    fn new(email: &str, name: &str) -> User {
        User {
            id: 0,
            email: email.into(),
            name: name.into(),
            logins: 0,
            hair_color: None,
            version: 0,
        }
    }
}

#[derive(Model, Debug, Clone, PartialEq)]
#[duet(table = "audit_log")]
struct AuditLog {
    #[duet(primary_key, auto)]
    id: i64,
    user_id: i32,
    action: String,
}

impl AuditLog {
    fn entry(user_id: i32, action: &str) -> AuditLog {
        AuditLog {
            id: 0,
            user_id,
            action: action.into(),
        }
    }
}

#[derive(Model, Debug, Clone, PartialEq)]
struct Post {
    #[duet(primary_key, auto)]
    id: i32,
    #[duet(references = User, on_delete = "cascade")]
    user_id: i32,
    title: String,
    body: Option<String>,
    views: i32,
}

impl Post {
    fn new(user: &User, title: &str, views: i32) -> Post {
        Post {
            id: 0,
            user_id: user.id,
            title: title.into(),
            body: None,
            views,
        }
    }
}

#[derive(Model, Debug, Clone, PartialEq)]
struct Comment {
    #[duet(primary_key, auto)]
    id: i32,
    #[duet(references = Post, on_delete = "cascade")]
    post_id: i32,
    text: String,
}

/// A second kind of child of `User`, for two prefetches on one parent.
#[derive(Model, Debug, Clone, PartialEq)]
struct Badge {
    #[duet(primary_key, auto)]
    id: i32,
    #[duet(references = User, on_delete = "cascade")]
    user_id: i32,
    label: String,
}

/// A key the application gives (not `auto`): `save` is an upsert.
#[derive(Model, Debug, Clone, PartialEq)]
struct Tag {
    #[duet(primary_key)]
    name: String,
    uses: i32,
}

/// Nothing to insert but database defaults: every row is `DEFAULT VALUES`.
#[derive(Model, Debug, Clone, PartialEq)]
struct Stamp {
    #[duet(primary_key, auto)]
    id: i64,
    #[duet(default = "'stamped'")]
    label: String,
}

/// Work queued in `before_save` shares the write's batch; `after_delete`.
#[derive(Model, Debug, Clone, PartialEq)]
#[duet(hooks)]
struct Note {
    #[duet(primary_key, auto)]
    id: i32,
    author_id: i32,
    body: String,
}

impl Hooks for Note {
    fn before_save(&mut self, ctx: &mut HookCtx) -> Result<(), Error> {
        if self.body == "fail in the database" {
            // Extended protocol, so it joins the write's sync group.
            ctx.queue(Query::values("SELECT 1 / $1", vec![value(0i32)]));
        }
        let action = if ctx.inserting() { "note insert" } else { "note update" };
        ctx.queue(AuditLog::entry(self.author_id, action).into_save());
        Ok(())
    }

    fn after_delete(&self, ctx: &mut HookCtx) -> Result<(), Error> {
        ctx.queue(AuditLog::entry(self.author_id, "note deleted").into_save());
        Ok(())
    }
}

/// The remaining field attributes, and more column types.
#[derive(Model, Debug, Clone, PartialEq)]
struct Item {
    #[duet(primary_key, auto)]
    id: i64,
    #[duet(sql_type = "varchar(8)")]
    code: String,
    price: i32,
    qty: i32,
    #[duet(generated = "price * qty")]
    total: i32,
    #[duet(skip_insert)]
    note: Option<String>,
    #[duet(references = User, on_delete = "set null")]
    owner_id: Option<i32>,
    #[duet(default = "now()")]
    created: chrono::DateTime<chrono::Utc>,
    meta: serde_json::Value,
}

impl Item {
    fn new(code: &str, price: i32, qty: i32, owner: Option<&User>) -> Item {
        Item {
            id: 0,
            code: code.into(),
            price,
            qty,
            total: 0,
            note: Some("ignored by INSERT".into()),
            owner_id: owner.map(|u| u.id),
            created: chrono::DateTime::default(),
            meta: serde_json::json!({ "code": code, "tags": ["a", "b"] }),
        }
    }
}

/// A UUID key the application gives.
#[derive(Model, Debug, Clone, PartialEq)]
struct Session {
    #[duet(primary_key)]
    id: uuid::Uuid,
    #[duet(references = User, on_delete = "cascade")]
    user_id: i32,
    expires: Option<chrono::NaiveDateTime>,
}

/// Identifiers that break any SQL built by pasting names in unquoted.
#[derive(Model, Debug, Clone, PartialEq)]
#[duet(table = "we\"ird; table -- name")]
struct Weird {
    #[duet(primary_key, auto, column = "i\"d; --")]
    id: i32,
    #[duet(unique, column = "va\"lue; DROP TABLE users; --")]
    value: String,
    #[duet(column = "n -- x")]
    n: i32,
}

#[derive(Model, Debug, Clone, PartialEq)]
#[duet(table = "chi\"ld'); DROP TABLE users; --")]
struct WeirdChild {
    #[duet(primary_key, auto, column = "the id")]
    id: i32,
    #[duet(references = Weird, on_delete = "cascade", column = "par\"ent; --")]
    weird_id: i32,
    #[duet(column = "no'te")]
    note: String,
}

/// A model that references itself: a tree of managers.
#[derive(Model, Debug, Clone, PartialEq)]
struct Employee {
    #[duet(primary_key, auto)]
    id: i32,
    name: String,
    #[duet(references = Employee, on_delete = "cascade")]
    manager_id: Option<i32>,
}

/// Two keys to one table: joining both needs an alias.
#[derive(Model, Debug, Clone, PartialEq)]
struct Message {
    #[duet(primary_key, auto)]
    id: i32,
    #[duet(references = User, on_delete = "cascade")]
    sender_id: i32,
    #[duet(references = User, on_delete = "cascade")]
    recipient_id: Option<i32>,
    body: String,
}

/// A joined row as a struct of its models.
#[derive(FromJoined, Debug)]
struct Envelope {
    message: Message,
    sender: Option<User>,
    recipient: Option<User>,
}

#[derive(FromJoined, Debug)]
struct Thread {
    comment: Comment,
    post: Option<Post>,
    author: Option<User>,
}

/// A composite primary key: one row per (group, user).
#[derive(Model, Debug, Clone, PartialEq)]
struct Membership {
    #[duet(primary_key)]
    group_id: i32,
    #[duet(primary_key)]
    user_id: i32,
    role: String,
}

impl Membership {
    fn new(group_id: i32, user_id: i32, role: &str) -> Membership {
        Membership {
            group_id,
            user_id,
            role: role.into(),
        }
    }
}

// ---- harness ----

fn server() -> &'static TestServer {
    TestServer::shared()
}

fn schema<D: Driver>(test: &str) -> String {
    format!("orm_{test}_{}", D::NAME)
}

/// `url` with one more query parameter.
fn with_param(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

/// A connection to `url` whose `search_path` is the test's schema (which
/// must exist: see [`setup`]).
fn join<D: Driver>(test: &str, url: &str) -> D {
    let mut c = D::connect(url).unwrap_or_else(|e| panic!("{}: connect: {e}", D::NAME));
    c.batch_execute(&format!("SET search_path TO {}", schema::<D>(test)))
        .unwrap();
    c
}

/// A connection whose `search_path` is a fresh schema holding the models'
/// tables.
fn setup<D: Driver>(test: &str) -> D {
    setup_at(test, &server().url())
}

fn setup_at<D: Driver>(test: &str, url: &str) -> D {
    let mut c = D::connect(url).unwrap_or_else(|e| panic!("{}: connect: {e}", D::NAME));
    let schema = schema::<D>(test);
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path TO {schema}"
    ))
    .unwrap();
    c.run(pipeline((
        User::create_table(),
        AuditLog::create_table(),
        Post::create_table(),
        Comment::create_table(),
        Badge::create_table(),
        Tag::create_table(),
        Stamp::create_table(),
    )))
    .unwrap();
    c
}

fn run<D: Driver, O>(c: &mut D, op: O) -> O::Output
where
    O: Operation + Send,
    O::Output: Send,
{
    c.run(op).unwrap_or_else(|e| panic!("{}: {e}", D::NAME))
}

/// Runs `op`, which must fail.
fn fails<D: Driver, O>(c: &mut D, op: O) -> Error
where
    O: Operation + Send,
    O::Output: Send + std::fmt::Debug,
{
    match c.run(op) {
        Ok(v) => panic!("{}: expected an error, got {v:?}", D::NAME),
        Err(e) => e,
    }
}

/// Usable, and not inside a transaction.
fn assert_idle<D: Driver>(c: &mut D) {
    let row = c.query_one("SELECT 1 + $1", &[&1i32]).expect("connection usable");
    assert_eq!(row.get::<i32>(0), 2);
    assert_eq!(c.transaction_status(), TransactionStatus::Idle);
}

/// Whether a table of that exact name is in the test's schema.
fn table_exists<D: Driver>(c: &mut D, name: &str) -> bool {
    let row = c
        .query_one(
            "SELECT count(*) FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace \
             WHERE n.nspname = current_schema() AND k.relname = $1 AND k.relkind = 'r'",
            &[&name],
        )
        .unwrap();
    row.get::<i64>(0) == 1
}

fn user_count<D: Driver>(c: &mut D) -> i64 {
    run(c, User::objects().count())
}

fn audit<D: Driver>(c: &mut D) -> Vec<(i32, String)> {
    run(
        c,
        AuditLog::objects()
            .order_by(AuditLog::ID)
            .values((AuditLog::USER_ID, AuditLog::ACTION)),
    )
}

/// Names of the users matching `cond`, in key order.
fn names<D: Driver>(c: &mut D, cond: Cond) -> Vec<String> {
    run(c, User::objects().filter(cond).order_by(User::ID).values(User::NAME))
}

/// Five users, keys 1 to 5 in this order:
///
/// | name          | logins | hair_color |
/// |---------------|--------|------------|
/// | `Ada`         | 1      | `red`      |
/// | `Bob`         | 2      | NULL       |
/// | `Cy`          | 2      | `RED`      |
/// | `100% _real_` | 4      | NULL       |
/// | `1000 xrealx` | 5      | `brown`    |
///
/// The last two tell a literal `%`/`_` from a wildcard.
fn seed<D: Driver>(c: &mut D) -> Vec<User> {
    let rows = [
        ("ada@x", "Ada", 1, Some("red")),
        ("bob@x", "Bob", 2, None),
        ("cy@x", "Cy", 2, Some("RED")),
        ("pct@x", "100% _real_", 4, None),
        ("wild@x", "1000 xrealx", 5, Some("brown")),
    ];
    let mut users = run(
        c,
        User::bulk_insert(rows.iter().map(|&(email, name, _, hair)| User {
            hair_color: hair.map(Into::into),
            ..User::new(email, name)
        })),
    );
    // `logins` has a database default, so an INSERT leaves it out: set it
    // with a second save (an UPDATE), all in one pipeline.
    for (u, &(_, _, logins, _)) in users.iter_mut().zip(&rows) {
        assert_eq!(u.logins, 0);
        u.logins = logins;
    }
    run(c, pipeline(users.iter_mut().map(|u| u.save()).collect::<Vec<_>>()));
    users
}

const ADA: &str = "Ada";
const BOB: &str = "Bob";
const CY: &str = "Cy";
const PCT: &str = "100% _real_";
const WILD: &str = "1000 xrealx";

conformance_tests!(
    save_inserts_then_updates,
    joins_of_one_table_twice_and_through_a_joined_model,
    composite_primary_keys,
    only_loads_the_key_and_the_named_columns,
    a_model_that_references_itself,
    save_without_row_into_save_and_delete,
    hooks_bump_validate_and_audit,
    bulk_insert_runs_hooks_per_model,
    filters_comparisons_and_lists,
    filters_null_like_and_literal_text,
    filters_combinators_exclude_and_expressions,
    order_nulls_limit_offset_distinct,
    count_exists_aggregate_group_by,
    values_typed_tuples,
    get_get_opt_first,
    queryset_update_and_delete,
    bulk_insert_order_empty_and_chunking,
    bulk_insert_execute_counts_and_keeps_hooks,
    bulk_insert_execute_copies_many_rows_as_inserts_would,
    upsert_do_nothing_do_update_and_given_key_save,
    get_or_create_and_update_or_create,
    get_or_create_recovers_from_concurrent_insert,
    update_or_create_recovers_from_concurrent_insert,
    select_related_and_left_join,
    prefetch_nested_both_modes_agree,
    prefetch_empty_children_modes_and_two_prefetches,
    pipeline_and_atomic_at_orm_level,
    raw_sql_maps_columns_by_name,
    hostile_values_are_data,
    hostile_identifiers_round_trip,
    negative_numbers_are_not_comments,
    create_and_drop_table,
    dropped_orm_operations_leave_connection_idle,
    before_save_queued_work_shares_the_write_batch,
    derive_attributes_generated_skip_insert_sql_type_set_null,
    for_update_locks_the_rows,
    queryset_for_each_streams_models,
    failed_pipeline_runs_no_after_hooks,
    pipelined_transactions_keep_their_own_outcome,
);

// ---- 1. save / delete ----

fn save_inserts_then_updates<D: Driver>() {
    let mut c: D = setup("save");
    let mut ada = User::new("ada@example.com", "Ada");
    run(&mut c, ada.save());
    assert!(ada.id > 0, "the identity key comes back into the model");
    assert_eq!(ada.logins, 0, "the database default comes back");
    assert_eq!(ada.version, 1, "before_save ran");

    ada.name = "Ada Lovelace".into();
    let first_id = ada.id;
    run(&mut c, ada.save());
    assert_eq!(ada.id, first_id, "the second save is an UPDATE, not a new row");
    assert_eq!(ada.version, 2);
    assert_eq!(user_count(&mut c), 1);
    let stored = run(&mut c, User::objects().filter(User::ID.eq(ada.id)).get());
    assert_eq!(stored, ada);

    let log = run(
        &mut c,
        AuditLog::objects().order_by(AuditLog::ID).values(AuditLog::ACTION),
    );
    assert_eq!(log, ["insert", "update"]);
}

fn save_without_row_into_save_and_delete<D: Driver>() {
    let mut c: D = setup("save_del");
    // A set auto key whose row does not exist: the UPDATE finds nothing.
    let mut ghost = User {
        id: 987_654,
        ..User::new("ghost@x", "Ghost")
    };
    let e = fails(&mut c, ghost.save());
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    assert!(e.to_string().contains("User"), "{e}");
    assert_eq!(user_count(&mut c), 0, "no row was created");
    assert_eq!(audit(&mut c), [], "after_save did not run");

    // into_save hands the stored model back.
    let bob = run(&mut c, User::new("bob@x", "Bob").into_save());
    assert!(bob.id > 0);
    assert_eq!(bob.version, 1);
    assert_eq!(run(&mut c, User::objects().get()), bob);

    assert_eq!(run(&mut c, bob.delete()), 1);
    assert_eq!(user_count(&mut c), 0);
    assert_eq!(run(&mut c, bob.delete()), 0, "already gone");
    assert_eq!(
        audit(&mut c),
        [
            (bob.id, "insert".to_string()),
            (bob.id, "delete".to_string()),
            (bob.id, "delete".to_string())
        ]
    );

    // Deleting a model that was never saved is refused before anything is
    // sent: before_delete (which would queue an audit row) never runs.
    let unsaved = User::new("new@x", "New");
    let e = fails(&mut c, unsaved.delete());
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    let e = fails(&mut c, unsaved.into_delete());
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    assert_eq!(audit(&mut c).len(), 3);
    assert_idle(&mut c);
}

// ---- 2. hooks ----

fn hooks_bump_validate_and_audit<D: Driver>() {
    let mut c: D = setup("hooks");
    let mut ada = User::new("ada@x", "Ada");
    run(&mut c, ada.save());
    ada.hair_color = Some("grey".into());
    run(&mut c, ada.save());
    assert_eq!(ada.version, 2);
    assert_eq!(
        run(&mut c, User::objects().values(User::VERSION)),
        [2],
        "the bumped version was written"
    );

    // Validation: the hook's error aborts the write, nothing is sent.
    let mut nobody = User::new("", "Nobody");
    let e = fails(&mut c, nobody.save());
    assert!(matches!(&e, Error::Invalid(m) if m.contains("needs an email")), "{e:?}");
    let e = fails(
        &mut c,
        User::bulk_insert([User::new("ok@x", "Ok"), User::new("", "Bad")]),
    );
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    // Invalid on update too, and the stored row keeps its values.
    ada.email.clear();
    ada.name = "changed".into();
    let e = fails(&mut c, ada.save());
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    assert_eq!(user_count(&mut c), 1, "no invalid row was inserted");
    let stored = run(&mut c, User::objects().get());
    assert_eq!((stored.name.as_str(), stored.email.as_str()), ("Ada", "ada@x"));

    run(&mut c, stored.delete());
    assert_eq!(
        audit(&mut c),
        [
            (ada.id, "insert".to_string()),
            (ada.id, "update".to_string()),
            (ada.id, "delete".to_string())
        ]
    );
    assert_idle(&mut c);
}

fn bulk_insert_runs_hooks_per_model<D: Driver>() {
    let mut c: D = setup("bulk_hooks");
    let users = run(
        &mut c,
        User::bulk_insert(["x", "y", "z"].map(|n| User::new(&format!("{n}@x"), n))),
    );
    assert_eq!(users.iter().map(|u| u.version).collect::<Vec<_>>(), [1, 1, 1]);
    assert_eq!(
        run(&mut c, User::objects().order_by(User::ID).values(User::VERSION)),
        [1, 1, 1],
        "before_save's changes were inserted"
    );
    let expected: Vec<(i32, String)> = users.iter().map(|u| (u.id, "insert".to_string())).collect();
    assert_eq!(audit(&mut c), expected, "after_save ran once per model, with its key");
}

/// One scenario of saves, updates, a bulk insert, a delete and a rejected
/// save; the transcript is what the hooks left behind.
fn hook_transcript<D: Driver>() -> Vec<String> {
    let mut c: D = setup("transcript");
    let mut ada = User::new("ada@x", "Ada");
    let mut bob = User::new("bob@x", "Bob");
    run(&mut c, ada.save());
    run(&mut c, bob.save());
    ada.name = "Ada L".into();
    run(&mut c, ada.save());
    let bulk = run(
        &mut c,
        User::bulk_insert([User::new("cy@x", "Cy"), User::new("di@x", "Di")]),
    );
    run(&mut c, bob.delete());
    let rejected = fails(&mut c, User::new("", "Nobody").into_save());

    // Keys differ between schemas: name the users instead.
    let mut name_of = BTreeMap::new();
    for u in [&ada, &bob].into_iter().chain(&bulk) {
        name_of.insert(u.id, u.email.clone());
    }
    let mut out: Vec<String> = audit(&mut c)
        .into_iter()
        .map(|(id, action)| format!("{} {action}", name_of[&id]))
        .collect();
    for u in [&ada, &bob].into_iter().chain(&bulk) {
        out.push(format!("memory {} v{}", u.email, u.version));
    }
    for (email, name, version) in run(
        &mut c,
        User::objects()
            .order_by(User::EMAIL)
            .values((User::EMAIL, User::NAME, User::VERSION)),
    ) {
        out.push(format!("stored {email} {name} v{version}"));
    }
    out.push(rejected.to_string());
    out
}

#[test]
fn hooks_observed_identically_from_both_drivers() {
    let sync = hook_transcript::<duet_conformance::Sync>();
    let tokio = hook_transcript::<duet_conformance::Tokio>();
    assert_eq!(sync, tokio);
    assert_eq!(
        sync,
        [
            "ada@x insert",
            "bob@x insert",
            "ada@x update",
            "cy@x insert",
            "di@x insert",
            "bob@x delete",
            "memory ada@x v2",
            "memory bob@x v1",
            "memory cy@x v1",
            "memory di@x v1",
            "stored ada@x Ada L v2",
            "stored cy@x Cy v1",
            "stored di@x Di v1",
            "invalid: a user needs an email",
        ]
    );
}

// ---- 3. filters ----

fn filters_comparisons_and_lists<D: Driver>() {
    let mut c: D = setup("filters_cmp");
    seed(&mut c);
    assert_eq!(names(&mut c, User::NAME.eq("Bob")), [BOB]);
    assert_eq!(names(&mut c, User::LOGINS.ne(2)), [ADA, PCT, WILD]);
    assert_eq!(names(&mut c, User::LOGINS.lt(2)), [ADA]);
    assert_eq!(names(&mut c, User::LOGINS.le(2)), [ADA, BOB, CY]);
    assert_eq!(names(&mut c, User::LOGINS.gt(2)), [PCT, WILD]);
    assert_eq!(names(&mut c, User::LOGINS.ge(4)), [PCT, WILD]);
    assert_eq!(names(&mut c, User::LOGINS.between(2, 4)), [BOB, CY, PCT]);
    assert_eq!(names(&mut c, User::LOGINS.in_(vec![1, 4, 99])), [ADA, PCT]);
    assert_eq!(names(&mut c, User::LOGINS.in_(Vec::<i32>::new())), Vec::<String>::new());
    assert_eq!(names(&mut c, User::NAME.in_(["Cy", "Bob", "nobody"])), [BOB, CY]);
    assert_eq!(names(&mut c, User::HAIR_COLOR.in_(["red", "brown"])), [ADA, WILD]);
    // A column compared with another column, and with itself.
    assert_eq!(names(&mut c, User::LOGINS.eq(User::ID)), [ADA, BOB, PCT, WILD]);
    assert_eq!(names(&mut c, User::HAIR_COLOR.eq(User::HAIR_COLOR)), [ADA, CY, WILD]);
}

fn filters_null_like_and_literal_text<D: Driver>() {
    let mut c: D = setup("filters_like");
    seed(&mut c);
    assert_eq!(names(&mut c, User::HAIR_COLOR.is_null()), [BOB, PCT]);
    assert_eq!(names(&mut c, User::HAIR_COLOR.is_not_null()), [ADA, CY, WILD]);
    // like/ilike take patterns: % and _ are wildcards.
    assert_eq!(names(&mut c, User::NAME.like("100%")), [PCT, WILD]);
    assert_eq!(names(&mut c, User::NAME.like("%_real_")), [PCT, WILD]);
    assert_eq!(names(&mut c, User::HAIR_COLOR.like("red")), [ADA]);
    assert_eq!(names(&mut c, User::HAIR_COLOR.ilike("red")), [ADA, CY]);
    assert_eq!(names(&mut c, User::NAME.ilike("a%")), [ADA]);
    // contains/starts_with/ends_with take text: % and _ match themselves.
    assert_eq!(names(&mut c, User::NAME.starts_with("100%")), [PCT]);
    assert_eq!(names(&mut c, User::NAME.ends_with("_real_")), [PCT]);
    assert_eq!(names(&mut c, User::NAME.contains("% _")), [PCT]);
    assert_eq!(names(&mut c, User::NAME.contains("0 x")), [WILD]);
    assert_eq!(names(&mut c, User::NAME.contains("_")), [PCT]);
    assert_eq!(names(&mut c, User::NAME.contains("%")), [PCT]);
    assert_eq!(names(&mut c, User::HAIR_COLOR.ends_with("ed")), [ADA]);
    assert_eq!(names(&mut c, User::NAME.contains("")), [ADA, BOB, CY, PCT, WILD]);
}

fn filters_combinators_exclude_and_expressions<D: Driver>() {
    let mut c: D = setup("filters_comb");
    seed(&mut c);
    let mid = User::LOGINS.gt(1) & User::LOGINS.lt(4);
    assert_eq!(names(&mut c, mid.clone()), [BOB, CY]);
    assert_eq!(names(&mut c, mid.clone() | User::NAME.eq("Ada")), [ADA, BOB, CY]);
    assert_eq!(names(&mut c, !mid.clone()), [ADA, PCT, WILD]);
    assert_eq!(names(&mut c, not(mid.clone())), [ADA, PCT, WILD]);
    assert_eq!(
        names(
            &mut c,
            User::NAME.eq("Ada").or(User::NAME.eq("Cy")).and(User::LOGINS.ge(2))
        ),
        [CY]
    );
    // `a | b & c` is `a | (b & c)`, as in Rust: the tree keeps the grouping.
    assert_eq!(
        names(&mut c, User::NAME.eq("Ada") | User::NAME.eq("Cy") & User::LOGINS.ge(2)),
        [ADA, CY]
    );
    assert_eq!(
        names(
            &mut c,
            (User::NAME.eq("Ada") | User::NAME.eq("Cy")) & User::LOGINS.ge(2)
        ),
        [CY]
    );
    // Chained filters AND together; exclude drops the matching rows.
    let q = User::objects()
        .filter(User::LOGINS.ge(2))
        .exclude(User::NAME.eq("Cy"))
        .exclude(User::LOGINS.eq(5))
        .order_by(User::ID)
        .values(User::NAME);
    assert_eq!(run(&mut c, q), [BOB, PCT]);
    // exclude drops what matches and keeps rows whose column is NULL;
    // `not` follows SQL and drops those too.
    let but_red = |q: QuerySet<User>| q.order_by(User::ID).values(User::NAME);
    assert_eq!(
        run(&mut c, but_red(User::objects().exclude(User::HAIR_COLOR.eq("red")))),
        [BOB, CY, PCT, WILD]
    );
    assert_eq!(
        run(&mut c, but_red(User::objects().filter(not(User::HAIR_COLOR.eq("red"))))),
        [CY, WILD]
    );
    // Expressions.
    assert_eq!(names(&mut c, (User::LOGINS + 1).eq(3)), [BOB, CY]);
    assert_eq!(names(&mut c, (User::LOGINS * 2).gt(User::LOGINS + 3)), [PCT, WILD]);
    assert_eq!(names(&mut c, (User::LOGINS - User::ID).lt(0)), [CY]);
    assert_eq!(names(&mut c, (User::LOGINS / 2).eq(2)), [PCT, WILD]);
    assert_eq!(names(&mut c, User::NAME.lower().eq("ada")), [ADA]);
    assert_eq!(names(&mut c, User::NAME.upper().eq("CY")), [CY]);
    assert_eq!(names(&mut c, User::HAIR_COLOR.lower().eq("red")), [ADA, CY]);
    assert_eq!(names(&mut c, User::HAIR_COLOR.or_else("none").eq("none")), [BOB, PCT]);
    assert_eq!(
        names(&mut c, User::HAIR_COLOR.or_else(User::HAIR_COLOR).eq("red")),
        [ADA],
        "COALESCE with a column"
    );
}

// ---- 4. order, limit, offset, distinct ----

fn order_nulls_limit_offset_distinct<D: Driver>() {
    let mut c: D = setup("order");
    seed(&mut c);
    let ordered = |qs: QuerySet<User>| qs.values(User::NAME);
    assert_eq!(
        run(
            &mut c,
            ordered(User::objects().order_by(User::LOGINS.desc()).order_by(User::ID))
        ),
        [WILD, PCT, BOB, CY, ADA]
    );
    assert_eq!(
        run(
            &mut c,
            ordered(User::objects().order_by(User::LOGINS.desc()).order_by(User::ID.desc()))
        ),
        [WILD, PCT, CY, BOB, ADA]
    );
    assert_eq!(
        run(
            &mut c,
            ordered(
                User::objects()
                    .filter(User::LOGINS.le(2))
                    .order_by(User::NAME.lower().desc())
            )
        ),
        [CY, BOB, ADA]
    );
    // NULLs: ascending puts them last by default, nulls_first moves them.
    let hair = |c: &mut D, o: duet_core::orm::Order| -> Vec<Option<String>> {
        run(
            c,
            User::objects().order_by(o).order_by(User::ID).values(User::HAIR_COLOR),
        )
    };
    let first = hair(&mut c, User::HAIR_COLOR.asc().nulls_first());
    assert_eq!(first[..2], [None, None]);
    assert!(first[2..].iter().all(Option::is_some), "{first:?}");
    let last = hair(&mut c, User::HAIR_COLOR.desc().nulls_last());
    assert!(last[..3].iter().all(Option::is_some), "{last:?}");
    assert_eq!(last[3..], [None, None]);
    let default_asc = hair(&mut c, User::HAIR_COLOR.asc());
    assert_eq!(default_asc[3..], [None, None]);
    assert_eq!(
        run(
            &mut c,
            ordered(
                User::objects()
                    .order_by(User::HAIR_COLOR.lower().asc().nulls_first())
                    .order_by(User::ID)
            )
        ),
        [BOB, PCT, WILD, ADA, CY]
    );
    // limit / offset.
    let by_id = || User::objects().order_by(User::ID);
    assert_eq!(run(&mut c, ordered(by_id().limit(2))), [ADA, BOB]);
    assert_eq!(run(&mut c, ordered(by_id().offset(3))), [PCT, WILD]);
    assert_eq!(run(&mut c, ordered(by_id().limit(2).offset(1))), [BOB, CY]);
    assert_eq!(run(&mut c, ordered(by_id().limit(0))), Vec::<String>::new());
    assert_eq!(run(&mut c, ordered(by_id().offset(10))), Vec::<String>::new());
    // distinct, through values of one column.
    assert_eq!(
        run(
            &mut c,
            User::objects().distinct().order_by(User::LOGINS).values(User::LOGINS)
        ),
        [1, 2, 4, 5]
    );
    assert_eq!(
        run(&mut c, User::objects().order_by(User::LOGINS).values(User::LOGINS)),
        [1, 2, 2, 4, 5]
    );
    assert_eq!(
        run(
            &mut c,
            User::objects()
                .distinct()
                .order_by(User::HAIR_COLOR.lower().asc().nulls_last())
                .values(User::HAIR_COLOR.lower())
        ),
        [Some("brown".to_string()), Some("red".to_string()), None]
    );
}

// ---- 5. count, exists, aggregates ----

fn count_exists_aggregate_group_by<D: Driver>() {
    let mut c: D = setup("aggregate");
    seed(&mut c);
    assert_eq!(run(&mut c, User::objects().count()), 5);
    assert_eq!(run(&mut c, User::objects().filter(User::LOGINS.eq(2)).count()), 2);
    assert_eq!(run(&mut c, User::objects().order_by(User::NAME).count()), 5);
    // A limit counts the limited set, not the table.
    assert_eq!(run(&mut c, User::objects().limit(3).count()), 3);
    assert_eq!(run(&mut c, User::objects().order_by(User::ID).offset(4).count()), 1);
    assert_eq!(
        run(&mut c, User::objects().filter(User::LOGINS.ge(2)).limit(10).count()),
        4
    );
    assert!(run(&mut c, User::objects().filter(User::NAME.eq("Ada")).exists()));
    assert!(!run(&mut c, User::objects().filter(User::NAME.eq("nobody")).exists()));
    assert!(!run(&mut c, User::objects().offset(5).exists()));

    let (n, total, mean, low, high, with_hair, longest) = run(
        &mut c,
        User::objects().aggregate((
            count(),
            sum(User::LOGINS),
            avg(User::LOGINS),
            min(User::LOGINS),
            max(User::LOGINS),
            count_of(User::HAIR_COLOR),
            max(length(User::NAME)),
        )),
    );
    assert_eq!(
        (n, total, low, high, with_hair, longest),
        (5, Some(14), Some(1), Some(5), 3, Some(11))
    );
    assert!((mean.unwrap() - 2.8).abs() < 1e-9, "{mean:?}");
    // Over no rows: COUNT is 0, the others NULL.
    let none = run(
        &mut c,
        User::objects().filter(User::NAME.eq("nobody")).aggregate((
            count(),
            sum(User::LOGINS),
            avg(User::LOGINS),
            min(User::LOGINS),
            max(User::NAME),
        )),
    );
    assert_eq!(none, (0, None, None, None, None));
    // Filtered aggregates, and min/max of text (letters only: digits and
    // punctuation sort differently between collations).
    assert_eq!(
        run(
            &mut c,
            User::objects()
                .filter(User::LOGINS.le(2))
                .aggregate((sum(User::LOGINS), min(User::NAME), max(User::NAME)))
        ),
        (Some(5), Some(ADA.to_string()), Some(CY.to_string()))
    );
    // GROUP BY with values, and HAVING.
    let groups = run(
        &mut c,
        User::objects().group_by(User::LOGINS).order_by(User::LOGINS).values((
            User::LOGINS,
            count(),
            sum(User::LOGINS),
        )),
    );
    assert_eq!(
        groups,
        [(1, 1, Some(1)), (2, 2, Some(4)), (4, 1, Some(4)), (5, 1, Some(5))]
    );
    // count and exists of a grouped query set: the groups.
    assert_eq!(run(&mut c, User::objects().group_by(User::LOGINS).count()), 4);
    assert_eq!(
        run(
            &mut c,
            User::objects().group_by(User::LOGINS).having(count().gt(1i64)).count()
        ),
        1
    );
    assert!(run(
        &mut c,
        User::objects().group_by(User::LOGINS).having(count().gt(1i64)).exists()
    ));
    assert!(!run(
        &mut c,
        User::objects().group_by(User::LOGINS).having(count().gt(2i64)).exists()
    ));
    // count of a distinct (and limited) set.
    assert_eq!(run(&mut c, User::objects().distinct().order_by(User::NAME).count()), 5);
    assert_eq!(
        run(&mut c, User::objects().distinct().order_by(User::NAME).limit(2).count()),
        2
    );
    let crowded = run(
        &mut c,
        User::objects().group_by(User::LOGINS).having(count().gt(1i64)).values((
            User::LOGINS,
            count(),
            sum(User::LOGINS),
        )),
    );
    assert_eq!(crowded, [(2, 2, Some(4))]);
    let by_hair = run(
        &mut c,
        User::objects()
            .filter(User::HAIR_COLOR.is_not_null())
            .group_by(User::HAIR_COLOR.lower())
            .having(sum(User::LOGINS).lt(Some(4i64)) & count().gt(1i64))
            .values((User::HAIR_COLOR.lower(), count(), max(User::LOGINS))),
    );
    assert_eq!(by_hair, [(Some("red".to_string()), 2, Some(2))]);
}

// ---- 6. values ----

fn values_typed_tuples<D: Driver>() {
    let mut c: D = setup("values");
    let users = seed(&mut c);
    let pairs: Vec<(i32, String)> = run(
        &mut c,
        User::objects().order_by(User::ID).values((User::ID, User::NAME)),
    );
    assert_eq!(pairs, users.iter().map(|u| (u.id, u.name.clone())).collect::<Vec<_>>());
    let triples: Vec<(String, Option<String>, i32)> = run(
        &mut c,
        User::objects().filter(User::LOGINS.le(2)).order_by(User::ID).values((
            User::NAME,
            User::HAIR_COLOR,
            User::LOGINS + 10,
        )),
    );
    assert_eq!(
        triples,
        [
            (ADA.to_string(), Some("red".to_string()), 11),
            (BOB.to_string(), None, 12),
            (CY.to_string(), Some("RED".to_string()), 12),
        ]
    );
    let single: Vec<i32> = run(
        &mut c,
        User::objects().order_by(User::ID.desc()).limit(1).values(User::LOGINS),
    );
    assert_eq!(single, [5]);
}

// ---- 7. get, get_opt, first ----

fn queryset_for_each_streams_models<D: Driver>() {
    let mut c: D = setup("for_each");
    let users = seed(&mut c);
    let q = User::objects().filter(User::LOGINS.ge(2)).order_by(User::ID);
    let mut streamed = Vec::new();
    let n = run(
        &mut c,
        q.clone().for_each(|u: User| {
            streamed.push(u);
            Ok(())
        }),
    );
    assert_eq!(n, 4);
    assert_eq!(streamed, run(&mut c, q.all()));
    assert_eq!(streamed[0], users[1]);
    // An error from the callback ends the stream and is the result.
    let e = fails(
        &mut c,
        User::objects().for_each(|_: User| Err(Error::invalid("stop here"))),
    );
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    assert_idle(&mut c);
}

fn get_get_opt_first<D: Driver>() {
    let mut c: D = setup("get");
    let users = seed(&mut c);
    let ada = run(&mut c, User::objects().filter(User::NAME.eq("Ada")).get());
    assert_eq!(ada, users[0]);
    let e = fails(&mut c, User::objects().filter(User::NAME.eq("nobody")).get());
    assert!(matches!(&e, Error::NotFound(m) if m.contains("User")), "{e:?}");
    let e = fails(&mut c, User::objects().filter(User::LOGINS.eq(2)).get());
    assert!(matches!(e, Error::MultipleFound(_, 2)), "{e:?}");
    let e = fails(&mut c, User::objects().get());
    assert!(matches!(e, Error::MultipleFound(_, 5)), "{e:?}");

    assert_eq!(
        run(&mut c, User::objects().filter(User::NAME.eq("Bob")).get_opt()),
        Some(users[1].clone())
    );
    assert_eq!(
        run(&mut c, User::objects().filter(User::NAME.eq("nobody")).get_opt()),
        None
    );
    let e = fails(&mut c, User::objects().filter(User::HAIR_COLOR.is_null()).get_opt());
    assert!(matches!(e, Error::MultipleFound(_, 2)), "{e:?}");

    // first: by key without an order, else in the query set's order.
    assert_eq!(run(&mut c, User::objects().first()).map(|u| u.name), Some(ADA.into()));
    assert_eq!(
        run(&mut c, User::objects().filter(User::LOGINS.eq(2)).first()).map(|u| u.name),
        Some(BOB.into())
    );
    assert_eq!(
        run(&mut c, User::objects().order_by(User::LOGINS.desc()).first()).map(|u| u.name),
        Some(WILD.into())
    );
    assert_eq!(
        run(&mut c, User::objects().order_by(User::NAME.lower().desc()).first()).map(|u| u.name),
        Some(CY.into())
    );
    assert_eq!(run(&mut c, User::objects().filter(User::ID.lt(0)).first()), None);

    // More rows than get fetches: still MultipleFound, and the message
    // does not pretend to know how many.
    run(
        &mut c,
        User::bulk_insert((0..30).map(|i| User::new(&format!("many{i}@x"), "many"))),
    );
    let e = fails(&mut c, User::objects().filter(User::NAME.eq("many")).get());
    assert!(matches!(e, Error::MultipleFound(_, n) if n > 20), "{e:?}");
    assert!(e.to_string().contains("more than 20"), "{e}");
}

fn only_loads_the_key_and_the_named_columns<D: Driver>() {
    let mut c: D = setup("only");
    let users = seed(&mut c);
    let light = User::objects()
        .filter(User::LOGINS.ge(2))
        .order_by(User::ID)
        .only((User::NAME, User::LOGINS));
    let sql = light.to_sql().text;
    assert!(
        sql.starts_with(r#"SELECT "users"."id", "users"."name", "users"."logins" FROM"#),
        "{sql}"
    );
    let mut partial = run(&mut c, light.all());
    assert_eq!(partial.len(), 4);
    let names: Vec<String> = partial.iter().map(|p| p.get(User::NAME).unwrap()).collect();
    assert_eq!(names, [BOB, CY, PCT, WILD]);
    assert_eq!(partial[0].key().unwrap(), users[1].id);
    // A column not loaded is an error naming it, never a made-up value.
    assert!(!partial[0].is_loaded(User::EMAIL));
    let e = partial[0].get(User::EMAIL).unwrap_err();
    assert!(e.to_string().contains("users.email was not loaded"), "{e}");

    // Save writes only what was set, by key; the rest of the row is untouched
    // (and no hook runs: `version` stays).
    let bob = &mut partial[0];
    let logins = bob.get(User::LOGINS).unwrap();
    bob.set(User::LOGINS, logins + 10);
    bob.set(User::HAIR_COLOR, Some("grey".to_string()));
    assert_eq!(bob.get(User::LOGINS).unwrap(), 12);
    assert_eq!(run(&mut c, bob.save()), 1);
    let stored = run(&mut c, User::objects().filter(User::ID.eq(users[1].id)).get());
    assert_eq!((stored.logins, stored.hair_color.as_deref()), (12, Some("grey")));
    assert_eq!(
        (stored.email.as_str(), stored.version),
        (users[1].email.as_str(), users[1].version)
    );
    assert_eq!(run(&mut c, partial[1].save()), 0, "nothing set, nothing written");

    let one = run(
        &mut c,
        User::objects().filter(User::NAME.eq(ADA)).only(User::EMAIL).get(),
    );
    assert_eq!(one.get(User::EMAIL).unwrap(), "ada@x");
    let e = fails(&mut c, User::objects().only(User::EMAIL).get());
    assert!(matches!(e, Error::MultipleFound(_, 5)), "{e:?}");
    let e = fails(&mut c, User::objects().filter(User::ID.lt(0)).only(User::EMAIL).get());
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
}

// ---- 8. query-set update and delete ----

fn queryset_update_and_delete<D: Driver>() {
    let mut c: D = setup("qs_update");
    seed(&mut c);
    let n = run(
        &mut c,
        User::objects()
            .filter(User::LOGINS.eq(2))
            .update()
            .set(User::LOGINS, User::LOGINS + 1)
            .set(User::HAIR_COLOR, "grey"),
    );
    assert_eq!(n, 2);
    assert_eq!(
        run(
            &mut c,
            User::objects()
                .filter(User::NAME.in_(["Bob", "Cy"]))
                .order_by(User::ID)
                .values((User::LOGINS, User::HAIR_COLOR))
        ),
        [(3, Some("grey".to_string())), (3, Some("grey".to_string()))]
    );
    // Hooks do not run for query-set writes: no audit rows beyond seeding.
    let audited = audit(&mut c).len();
    // Set to NULL, to another column, to a constant; every row.
    let n = run(
        &mut c,
        User::objects()
            .update()
            .set(User::HAIR_COLOR, None::<String>)
            .set(User::VERSION, User::LOGINS),
    );
    assert_eq!(n, 5);
    assert_eq!(
        run(&mut c, User::objects().filter(User::HAIR_COLOR.is_null()).count()),
        5
    );
    assert_eq!(
        run(&mut c, User::objects().order_by(User::ID).values(User::VERSION)),
        [1, 3, 3, 4, 5]
    );
    assert_eq!(audit(&mut c).len(), audited);

    // A limited, ordered update goes through a key subquery: exactly the
    // two top rows change.
    let n = run(
        &mut c,
        User::objects()
            .order_by(User::LOGINS.desc())
            .order_by(User::ID)
            .limit(2)
            .update()
            .set(User::NAME, "top"),
    );
    assert_eq!(n, 2);
    assert_eq!(
        run(&mut c, User::objects().order_by(User::ID).values(User::NAME)),
        [ADA, BOB, CY, "top", "top"]
    );
    let n = run(
        &mut c,
        User::objects()
            .filter(User::NAME.ne("top"))
            .order_by(User::ID.desc())
            .offset(1)
            .limit(1)
            .update()
            .set(User::LOGINS, 100),
    );
    assert_eq!(n, 1);
    assert_eq!(
        run(&mut c, User::objects().filter(User::LOGINS.eq(100)).values(User::NAME)),
        [BOB]
    );
    let n = run(
        &mut c,
        User::objects()
            .filter(User::NAME.eq("nobody"))
            .update()
            .set(User::LOGINS, 0),
    );
    assert_eq!(n, 0);

    // DISTINCT with an order on another column: the key subquery drops
    // the (redundant) DISTINCT, which would refuse that order.
    let n = run(
        &mut c,
        User::objects()
            .distinct()
            .filter(User::LOGINS.le(3))
            .order_by(User::NAME)
            .limit(1)
            .update()
            .set(User::LOGINS, 7),
    );
    assert_eq!(n, 1);
    assert_eq!(
        run(&mut c, User::objects().filter(User::LOGINS.eq(7)).values(User::NAME)),
        [ADA]
    );
    // update() without set() is refused, and nothing changes.
    let e = fails(&mut c, User::objects().update());
    assert!(matches!(e, Error::Misuse(_)), "{e:?}");
    assert_idle(&mut c);

    // Query-set delete: filtered, then limited/ordered, then the rest.
    let n = run(&mut c, User::objects().filter(User::NAME.eq("top")).delete());
    assert_eq!(n, 2);
    let n = run(&mut c, User::objects().order_by(User::ID.desc()).limit(1).delete());
    assert_eq!(n, 1);
    assert_eq!(
        run(&mut c, User::objects().order_by(User::ID).values(User::NAME)),
        [ADA, BOB]
    );
    assert_eq!(run(&mut c, User::objects().filter(User::ID.lt(0)).delete()), 0);
    assert_eq!(run(&mut c, User::objects().delete()), 2);
    assert_eq!(user_count(&mut c), 0);
    assert_eq!(audit(&mut c).len(), audited, "delete hooks do not run either");
}

// ---- 9. bulk insert ----

fn bulk_insert_order_empty_and_chunking<D: Driver>() {
    let mut c: D = setup("bulk");
    // Keys come back in input order (which is not the names' order).
    let input = ["zed", "may", "abe", "kim"];
    let stored = run(
        &mut c,
        User::bulk_insert(input.map(|n| User::new(&format!("{n}@x"), n))),
    );
    assert_eq!(stored.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), input);
    assert!(stored.windows(2).all(|w| w[0].id < w[1].id), "{stored:?}");
    for u in &stored {
        assert_eq!(
            run(&mut c, User::objects().filter(User::ID.eq(u.id)).get()),
            *u,
            "the returned key is the stored row's"
        );
    }

    // Nothing to insert: no statement, no error.
    assert_eq!(run(&mut c, User::bulk_insert(Vec::new())), []);
    assert_eq!(run(&mut c, Post::bulk_insert(Vec::new())), []);
    assert_eq!(
        run(
            &mut c,
            User::bulk_insert(Vec::new()).on_conflict(User::EMAIL).do_nothing()
        ),
        []
    );

    // More rows than one statement can bind: the columns an INSERT of a new
    // user writes (email, name, hair_color, version) times the rows is
    // above the protocol's 65,535 parameters.
    let width = User::META.columns.iter().filter(|col| col.inserted(false)).count();
    assert_eq!(width, 4);
    let n = 20_000;
    assert!(n * width > 65_535);
    let many: Vec<User> = (0..n).map(|i| User::new(&format!("bulk{i}@x"), "bulk")).collect();
    assert_eq!(User::bulk_insert(many.clone()).to_sql().len(), 2, "two statements");
    let stored = run(&mut c, User::bulk_insert(many));
    assert_eq!(stored.len(), n);
    assert_eq!(stored[0].email, "bulk0@x");
    assert_eq!(stored[n - 1].email, format!("bulk{}@x", n - 1));
    let ids: HashSet<i32> = stored.iter().map(|u| u.id).collect();
    assert_eq!(ids.len(), n, "every key distinct");
    assert_eq!(
        run(&mut c, User::objects().filter(User::NAME.eq("bulk")).count()),
        n as i64
    );
    assert_eq!(
        run(&mut c, AuditLog::objects().count()),
        (n + input.len()) as i64,
        "after_save ran for every row of every chunk"
    );

    // A model with nothing to insert but defaults: one row per model.
    let stamps = run(
        &mut c,
        Stamp::bulk_insert((0..3).map(|_| Stamp {
            id: 0,
            label: String::new(),
        })),
    );
    assert_eq!(stamps.len(), 3);
    assert!(stamps.iter().all(|s| s.label == "stamped"), "{stamps:?}");
    assert_eq!(stamps.iter().map(|s| s.id).collect::<HashSet<_>>().len(), 3);
    assert_eq!(run(&mut c, Stamp::objects().count()), 3);
}

fn bulk_insert_execute_counts_and_keeps_hooks<D: Driver>() {
    let mut c: D = setup("bulk_exec");
    // No hooks: no RETURNING, the output is the row count.
    let tags = ["a", "b", "c"].map(|n| Tag {
        name: n.into(),
        uses: 2,
    });
    assert_eq!(run(&mut c, Tag::bulk_insert(tags.clone()).execute()), 3);
    assert_eq!(run(&mut c, Tag::objects().filter(Tag::USES.eq(2)).count()), 3);
    // An upsert that skips every row counts none.
    assert_eq!(
        run(
            &mut c,
            Tag::bulk_insert(tags).on_conflict(Tag::NAME).do_nothing().execute()
        ),
        0
    );
    assert_eq!(run(&mut c, Tag::bulk_insert(Vec::new()).execute()), 0);
    // Over the parameter limit: two statements, both counted.
    let many: Vec<Tag> = (0..40_000)
        .map(|i| Tag {
            name: format!("t{i}"),
            uses: 1,
        })
        .collect();
    assert_eq!(run(&mut c, Tag::bulk_insert(many).execute()), 40_000);
    assert_eq!(run(&mut c, Tag::objects().count()), 40_003);

    // With hooks: before_save and after_save still run for every model.
    let users = ["x", "y"].map(|n| User::new(&format!("{n}@exec"), n));
    assert_eq!(run(&mut c, User::bulk_insert(users).execute()), 2);
    let stored = run(&mut c, User::objects().filter(User::EMAIL.like("%@exec")).all());
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|u| u.version == 1), "before_save ran: {stored:?}");
    assert_eq!(run(&mut c, AuditLog::objects().count()), 2, "after_save ran");
}

fn bulk_insert_execute_copies_many_rows_as_inserts_would<D: Driver>() {
    let mut c: D = setup("bulk_copy");
    run(&mut c, pipeline((Item::create_table(), Weird::create_table())));
    // The same items loaded by COPY (over the threshold) and by INSERT
    // are stored alike: generated, skipped and defaulted columns, json,
    // NULLs.
    let items = |tag: &str| -> Vec<Item> {
        (0..1_500)
            .map(|i| Item::new(&format!("{tag}{i}"), i, 2, None))
            .collect()
    };
    assert_eq!(run(&mut c, Item::bulk_insert(items("c")).execute()), 1_500);
    let by_insert = Item::bulk_insert(items("i")).copy_from(usize::MAX).execute();
    assert_eq!(run(&mut c, by_insert), 1_500);
    let differ: i64 = c
        .query_one(
            "SELECT count(*) FROM (
                (SELECT substr(code, 2), price, qty, total, note, owner_id, (meta - 'code')::text FROM items WHERE code LIKE 'c%'
                 EXCEPT SELECT substr(code, 2), price, qty, total, note, owner_id, (meta - 'code')::text FROM items WHERE code LIKE 'i%')
                UNION ALL
                (SELECT substr(code, 2), price, qty, total, note, owner_id, (meta - 'code')::text FROM items WHERE code LIKE 'i%'
                 EXCEPT SELECT substr(code, 2), price, qty, total, note, owner_id, (meta - 'code')::text FROM items WHERE code LIKE 'c%')) d",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(differ, 0);
    let copied = run(&mut c, Item::objects().filter(Item::CODE.eq("c7")).get());
    assert_eq!((copied.total, copied.note.as_deref()), (14, None));
    assert!(copied.created > chrono::Utc::now() - chrono::Duration::hours(1));
    // Identifiers that need quoting, through COPY's column list.
    let weird = (0..1_200).map(|i| Weird {
        id: 0,
        value: format!("w{i}"),
        n: i,
    });
    assert_eq!(run(&mut c, Weird::bulk_insert(weird).execute()), 1_200);
    assert_eq!(run(&mut c, Weird::objects().filter(Weird::N.gt(1_000)).count()), 199);

    // Upserts go through a temporary table, dropped again: twice in one
    // session, an update of some rows and a skip of others.
    let tags = |uses: i32| {
        (0..2_000).map(move |i| Tag {
            name: format!("t{i}"),
            uses,
        })
    };
    assert_eq!(run(&mut c, Tag::bulk_insert(tags(1).take(1_000)).execute()), 1_000);
    assert_eq!(
        run(
            &mut c,
            Tag::bulk_insert(tags(5))
                .on_conflict(Tag::NAME)
                .do_update(Tag::USES)
                .execute()
        ),
        2_000
    );
    assert_eq!(run(&mut c, Tag::objects().filter(Tag::USES.eq(5)).count()), 2_000);
    assert_eq!(
        run(
            &mut c,
            Tag::bulk_insert(tags(9)).on_conflict(Tag::NAME).do_nothing().execute()
        ),
        0
    );
    assert_eq!(run(&mut c, Tag::objects().filter(Tag::USES.eq(9)).count()), 0);
    let staging: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'duet_bulk_staging%' AND pg_table_is_visible(oid)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(staging, 0, "the temporary tables are gone");
    // The threshold is the caller's to move: none and a few models copied.
    assert_eq!(run(&mut c, Tag::bulk_insert(Vec::new()).copy_from(0).execute()), 0);
    let few = ["f1", "f2"].map(|n| Tag {
        name: n.into(),
        uses: 3,
    });
    assert_eq!(run(&mut c, Tag::bulk_insert(few).copy_from(0).execute()), 2);

    // Two upserts in one pipeline: a staging table each.
    let (x, y) = run(
        &mut c,
        pipeline((
            Tag::bulk_insert(tags(6))
                .on_conflict(Tag::NAME)
                .do_update(Tag::USES)
                .execute(),
            Tag::bulk_insert((0..600).map(|i| Tag {
                name: format!("u{i}"),
                uses: 6,
            }))
            .on_conflict(Tag::NAME)
            .do_nothing()
            .execute(),
        )),
    );
    assert_eq!((x, y), (2_000, 600));
    assert_eq!(run(&mut c, Tag::objects().filter(Tag::USES.eq(6)).count()), 2_600);
    // A duplicate key fails the whole load; nothing of it is kept.
    let dup = (0..1_500).map(|i| Tag {
        name: format!("d{}", i % 1_499),
        uses: 0,
    });
    let err = c.run(Tag::bulk_insert(dup).execute()).unwrap_err();
    assert_eq!(err.code(), Some("23505"), "{err}");
    assert_eq!(run(&mut c, Tag::objects().filter(Tag::USES.eq(0)).count()), 0);

    // Inside a transaction and a pipeline: the copy joins their batch,
    // the statements after it follow, and all of it rolls back together.
    let more = |p: &str| {
        (0..1_000)
            .map(|i| Tag {
                name: format!("{p}{i}"),
                uses: 7,
            })
            .collect::<Vec<_>>()
    };
    let err = c
        .run(atomic(pipeline((
            Tag::bulk_insert(more("a")).execute(),
            Query::values("SELECT 1 / $1", vec![value(0i32)]),
        ))))
        .unwrap_err();
    assert_eq!(err.code(), Some("22012"), "{err}");
    assert_eq!(run(&mut c, Tag::objects().filter(Tag::USES.eq(7)).count()), 0);
    let (n, m) = run(
        &mut c,
        atomic(pipeline((
            Tag::bulk_insert(more("b")).execute(),
            Tag::bulk_insert(more("c"))
                .on_conflict(Tag::NAME)
                .do_nothing()
                .execute(),
        ))),
    );
    assert_eq!((n, m), (1_000, 1_000));
    assert_eq!(run(&mut c, Tag::objects().filter(Tag::USES.eq(7)).count()), 2_000);
    assert_eq!(c.transaction_status(), TransactionStatus::Idle);
}

// ---- 10. upserts ----

fn upsert_do_nothing_do_update_and_given_key_save<D: Driver>() {
    let mut c: D = setup("upsert");
    let ada = run(&mut c, User::new("ada@x", "Ada").into_save());
    let audited = audit(&mut c).len();

    let out = run(
        &mut c,
        User::bulk_insert([User::new("ada@x", "Impostor"), User::new("new@x", "New")])
            .on_conflict(User::EMAIL)
            .do_nothing(),
    );
    assert_eq!(out.len(), 1, "only the inserted row comes back: {out:?}");
    assert_eq!(out[0].email, "new@x");
    assert_eq!(
        run(
            &mut c,
            User::objects().order_by(User::ID).values((User::EMAIL, User::NAME))
        ),
        [
            ("ada@x".to_string(), "Ada".to_string()),
            ("new@x".to_string(), "New".to_string())
        ]
    );
    assert_eq!(audit(&mut c).len(), audited + 1, "after_save for the inserted row only");

    let out = run(
        &mut c,
        User::bulk_insert([
            User {
                hair_color: Some("teal".into()),
                ..User::new("ada@x", "Ada Updated")
            },
            User::new("third@x", "Third"),
        ])
        .on_conflict(User::EMAIL)
        .do_update((User::NAME,)),
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].id, ada.id, "the existing row, updated in place");
    assert_eq!(out[0].name, "Ada Updated");
    assert_eq!(out[0].hair_color, None, "columns not named keep their value");
    assert_eq!(user_count(&mut c), 3);
    let stored = run(&mut c, User::objects().filter(User::EMAIL.eq("ada@x")).get());
    assert_eq!((stored.id, stored.name.as_str()), (ada.id, "Ada Updated"));

    let out = run(
        &mut c,
        User::bulk_insert([User {
            hair_color: Some("teal".into()),
            ..User::new("third@x", "Third Again")
        }])
        .on_conflict(User::EMAIL)
        .do_update((User::NAME, User::HAIR_COLOR)),
    );
    assert_eq!(
        (out[0].name.as_str(), out[0].hair_color.as_deref()),
        ("Third Again", Some("teal"))
    );

    // A model whose key the application gives: saving twice upserts.
    let mut rust = Tag {
        name: "rust".into(),
        uses: 1,
    };
    run(&mut c, rust.save());
    rust.uses = 2;
    run(&mut c, rust.save());
    assert_eq!(rust.uses, 2);
    let mut stale = Tag {
        name: "rust".into(),
        uses: 7,
    };
    run(&mut c, stale.save());
    assert_eq!(run(&mut c, Tag::objects().count()), 1);
    assert_eq!(run(&mut c, Tag::objects().get()), stale);
    // Bulk with given keys, upserting on the key.
    let tags = run(
        &mut c,
        Tag::bulk_insert([("rust", 10), ("sql", 1)].map(|(n, u)| Tag {
            name: n.into(),
            uses: u,
        }))
        .on_conflict(Tag::NAME)
        .do_update(Tag::USES),
    );
    assert_eq!(tags.len(), 2);
    assert_eq!(
        run(
            &mut c,
            Tag::objects().order_by(Tag::NAME).values((Tag::NAME, Tag::USES))
        ),
        [("rust".to_string(), 10), ("sql".to_string(), 1)]
    );
    let e = fails(
        &mut c,
        Tag::bulk_insert([Tag {
            name: "sql".into(),
            uses: 0,
        }]),
    );
    assert_eq!(
        e.code(),
        Some("23505"),
        "without on_conflict a duplicate key fails: {e}"
    );
    assert_eq!(run(&mut c, stale.delete()), 1);
    assert_eq!(run(&mut c, Tag::objects().values(Tag::NAME)), ["sql"]);
    assert_idle(&mut c);
}

// ---- 11. get_or_create, update_or_create ----

fn get_or_create_and_update_or_create<D: Driver>() {
    let mut c: D = setup("goc");
    let by_email = |e: &str| User::objects().filter(User::EMAIL.eq(e));
    let (ada, created) = run(&mut c, by_email("ada@x").get_or_create(|| User::new("ada@x", "Ada")));
    assert!(created);
    assert!(ada.id > 0);
    assert_eq!(ada.version, 1, "hooks ran on the created model");
    let (again, created) = run(
        &mut c,
        by_email("ada@x").get_or_create(|| -> User { unreachable!("the row exists") }),
    );
    assert!(!created);
    assert_eq!(again, ada);
    assert_eq!(user_count(&mut c), 1);

    let (bob, created) = run(
        &mut c,
        by_email("bob@x").update_or_create(|u| u.name = "never".into(), || User::new("bob@x", "Bob")),
    );
    assert!(created);
    assert_eq!((bob.name.as_str(), bob.version), ("Bob", 1));
    let (bob2, created) = run(
        &mut c,
        by_email("bob@x").update_or_create(
            |u| {
                u.name = "Robert".into();
                u.logins += 5;
            },
            || -> User { unreachable!("the row exists") },
        ),
    );
    assert!(!created);
    assert_eq!(bob2.id, bob.id);
    assert_eq!((bob2.name.as_str(), bob2.logins, bob2.version), ("Robert", 5, 2));
    assert_eq!(run(&mut c, by_email("bob@x").get()), bob2);
    assert_eq!(user_count(&mut c), 2);
    assert_eq!(
        audit(&mut c),
        [
            (ada.id, "insert".to_string()),
            (bob.id, "insert".to_string()),
            (bob.id, "update".to_string())
        ]
    );
    // Several matches are an error, not a guess.
    let e = fails(&mut c, User::objects().get_or_create(|| User::new("x@x", "X")));
    assert!(matches!(e, Error::MultipleFound(_, 2)), "{e:?}");
    assert_idle(&mut c);
}

/// Runs `contested` on connection A (in the test's schema) while connection
/// B holds an uncommitted INSERT of a user with `email`. B commits only once
/// a third connection sees A waiting for B's lock, so A's SELECT has missed
/// the row and A's INSERT has hit it. Returns A's result and B's key.
fn while_b_inserts<D: Driver, T>(test: &str, email: &str, contested: impl FnOnce(&mut D) -> T) -> (T, i32) {
    let app = format!("duet_{test}_{}", D::NAME);
    let mut a: D = setup_at(test, &with_param(&server().url(), "application_name", &app));
    let a_done = AtomicBool::new(false);
    let (inserted_tx, inserted_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let a_done = &a_done;
        let b = s.spawn(move || {
            let mut b: D = join(test, &server().url());
            b.batch_execute("BEGIN").unwrap();
            let id: i32 = b
                .query_one(
                    "INSERT INTO users (email, name, version) VALUES ($1, 'made by B', 1) RETURNING id",
                    &[&email],
                )
                .unwrap()
                .get(0);
            inserted_tx.send(()).unwrap();
            let mut watcher = D::connect(&server().url()).unwrap();
            // Gives up (and A's test fails) rather than hanging if A never
            // waits; the pause only spaces out the polls.
            let give_up = Instant::now() + Duration::from_secs(30);
            let mut a_waited = false;
            while !a_done.load(Ordering::SeqCst) && Instant::now() < give_up {
                let waiting: i64 = watcher
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
                        &[&app],
                    )
                    .unwrap()
                    .get(0);
                if waiting == 1 {
                    a_waited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            b.batch_execute("COMMIT").unwrap();
            (id, a_waited)
        });
        inserted_rx.recv().expect("B inserted its row");
        let out = contested(&mut a);
        a_done.store(true, Ordering::SeqCst);
        let (id, a_waited) = b.join().expect("B's thread");
        assert!(a_waited, "{}: A's INSERT never waited for B's row", D::NAME);
        assert_idle(&mut a);
        (out, id)
    })
}

fn get_or_create_recovers_from_concurrent_insert<D: Driver>() {
    let email = "race@x";
    let ((found, created), b_id) = while_b_inserts::<D, _>("goc_race", email, |a| {
        run(
            a,
            User::objects()
                .filter(User::EMAIL.eq(email))
                .get_or_create(|| User::new(email, "made by A")),
        )
    });
    assert!(!created, "B created it");
    assert_eq!(found.id, b_id);
    assert_eq!(found.name, "made by B", "B's row, not the one A's closure made");
    let mut c: D = join("goc_race", &server().url());
    assert_eq!(
        run(&mut c, User::objects().values((User::ID, User::NAME))),
        [(b_id, "made by B".to_string())]
    );
    assert_eq!(audit(&mut c), [], "A's insert (and its after_save) was rolled back");
}

fn update_or_create_recovers_from_concurrent_insert<D: Driver>() {
    let email = "race@x";
    let ((updated, created), b_id) = while_b_inserts::<D, _>("uoc_race", email, |a| {
        run(
            a,
            User::objects().filter(User::EMAIL.eq(email)).update_or_create(
                |u| u.name = format!("{} then updated by A", u.name),
                || User::new(email, "made by A"),
            ),
        )
    });
    assert!(!created, "B created it");
    assert_eq!(updated.id, b_id);
    assert_eq!(updated.name, "made by B then updated by A");
    assert_eq!(updated.version, 2, "B's version 1, bumped by A's save");
    let mut c: D = join("uoc_race", &server().url());
    assert_eq!(run(&mut c, User::objects().get()), updated);
    assert_eq!(audit(&mut c), [(b_id, "update".to_string())]);
}

// ---- 12. select_related, left_join ----

fn select_related_and_left_join<D: Driver>() {
    let mut c: D = setup("joins");
    let users = seed(&mut c);
    let (ada, bob) = (&users[0], &users[1]);
    let posts = run(
        &mut c,
        Post::bulk_insert([
            Post::new(ada, "ada one", 10),
            Post::new(ada, "ada two", 1),
            Post::new(bob, "bob one", 7),
        ]),
    );

    let rows = run(
        &mut c,
        Post::objects().select_related(Post::USER).order_by(Post::ID).all(),
    );
    assert_eq!(
        rows,
        [
            (posts[0].clone(), Some(ada.clone())),
            (posts[1].clone(), Some(ada.clone())),
            (posts[2].clone(), Some(bob.clone())),
        ]
    );
    // A filter on the joined table's column, and one on each side.
    let rows = run(
        &mut c,
        Post::objects()
            .select_related(Post::USER)
            .filter(User::NAME.eq("Ada"))
            .order_by(Post::ID.desc())
            .all(),
    );
    assert_eq!(
        rows.iter().map(|(p, _)| p.title.as_str()).collect::<Vec<_>>(),
        ["ada two", "ada one"]
    );
    assert!(rows.iter().all(|(_, u)| u.as_ref() == Some(ada)));
    let rows = run(
        &mut c,
        Post::objects()
            .select_related(Post::USER)
            .filter(User::LOGINS.ge(1) & Post::VIEWS.gt(5))
            .exclude(User::NAME.eq("Bob"))
            .all(),
    );
    assert_eq!(rows, [(posts[0].clone(), Some(ada.clone()))]);

    // Children joined to parents; a parent without children once, with None.
    let rows = run(
        &mut c,
        User::objects()
            .left_join(Post::USER)
            .filter(User::LOGINS.le(2))
            .order_by(User::ID)
            .order_by(Post::ID)
            .all(),
    );
    let flat: Vec<(&str, Option<&str>)> = rows
        .iter()
        .map(|(u, p)| (u.name.as_str(), p.as_ref().map(|p| p.title.as_str())))
        .collect();
    assert_eq!(
        flat,
        [
            (ADA, Some("ada one")),
            (ADA, Some("ada two")),
            (BOB, Some("bob one")),
            (CY, None)
        ]
    );
    assert_eq!(rows[0].1.as_ref(), Some(&posts[0]));
    // Filter on the joined side: users with a popular post or none at all.
    let rows = run(
        &mut c,
        User::objects()
            .left_join(Post::USER)
            .filter(Post::VIEWS.ge(7) | Post::ID.is_null())
            .order_by(User::ID)
            .limit(3)
            .all(),
    );
    let flat: Vec<(&str, Option<i32>)> = rows
        .iter()
        .map(|(u, p)| (u.name.as_str(), p.as_ref().map(|p| p.views)))
        .collect();
    assert_eq!(flat, [(ADA, Some(10)), (BOB, Some(7)), (CY, None)]);
}

// ---- 13. prefetch ----

fn prefetch_nested_both_modes_agree<D: Driver>() {
    let mut c: D = setup("prefetch");
    let users = run(
        &mut c,
        User::bulk_insert((0..3).map(|i| User::new(&format!("u{i}@x"), &format!("user {i}")))),
    );
    assert_eq!(users.len(), 3);
    let posts: Vec<Post> = users
        .iter()
        .flat_map(|u| {
            (0..2).map(move |j| Post {
                id: 0,
                user_id: u.id,
                title: format!("{} post {j}", u.name),
                body: None,
                views: j,
            })
        })
        .collect();
    let posts = run(&mut c, Post::bulk_insert(posts));
    let comments: Vec<Comment> = posts
        .iter()
        .map(|p| Comment {
            id: 0,
            post_id: p.id,
            text: format!("on {}", p.title),
        })
        .collect();
    run(&mut c, Comment::bulk_insert(comments));

    let q = User::objects()
        .filter(User::NAME.ne("user 1"))
        .order_by(User::ID)
        .prefetch(
            Post::USER,
            Post::objects()
                .order_by(Post::ID)
                .prefetch(Comment::POST, Comment::objects()),
        );
    let one = run(&mut c, q.clone().mode(PrefetchMode::OneTrip).all());
    let two = run(&mut c, q.mode(PrefetchMode::TwoStep).all());
    assert_eq!(one, two);
    assert_eq!(one.len(), 2);
    assert_eq!(one[0].1.len(), 2);
    assert_eq!(one[0].1[0].1.len(), 1);
    assert_eq!(one[0].1[0].1[0].text, "on user 0 post 0");
}

fn prefetch_empty_children_modes_and_two_prefetches<D: Driver>() {
    let mut c: D = setup("prefetch_more");
    let users = seed(&mut c);
    let (ada, bob, cy) = (&users[0], &users[1], &users[2]);
    run(
        &mut c,
        Post::bulk_insert([
            Post::new(ada, "a1", 1),
            Post::new(bob, "b1", 2),
            Post::new(ada, "a2", 3),
            Post::new(cy, "c1", 4),
        ]),
    );
    run(
        &mut c,
        Badge::bulk_insert(
            [(bob, "gold"), (bob, "silver"), (&users[3], "new")].map(|(u, l)| Badge {
                id: 0,
                user_id: u.id,
                label: l.into(),
            }),
        ),
    );
    let titles = |kids: &[Post]| kids.iter().map(|p| p.title.clone()).collect::<Vec<_>>();

    // Parents without children get an empty Vec, in either mode.
    let q = User::objects()
        .order_by(User::ID)
        .prefetch(Post::USER, Post::objects().order_by(Post::ID));
    for mode in [PrefetchMode::Auto, PrefetchMode::OneTrip, PrefetchMode::TwoStep] {
        let got = run(&mut c, q.clone().mode(mode).all());
        let shape: Vec<(String, Vec<String>)> = got.iter().map(|(u, p)| (u.name.clone(), titles(p))).collect();
        assert_eq!(
            shape,
            [
                (ADA.to_string(), vec!["a1".to_string(), "a2".to_string()]),
                (BOB.to_string(), vec!["b1".to_string()]),
                (CY.to_string(), vec!["c1".to_string()]),
                (PCT.to_string(), vec![]),
                (WILD.to_string(), vec![]),
            ],
            "{mode:?}"
        );
    }
    // No parents at all: no children either.
    let none = run(
        &mut c,
        User::objects()
            .filter(User::ID.lt(0))
            .prefetch(Post::USER, Post::objects())
            .mode(PrefetchMode::TwoStep)
            .all(),
    );
    assert_eq!(none, []);

    // One round trip needs a deterministic row set: a LIMIT without an
    // order ending in the key is refused...
    let limited = User::objects()
        .limit(2)
        .prefetch(Post::USER, Post::objects().order_by(Post::ID));
    let e = fails(&mut c, limited.clone().mode(PrefetchMode::OneTrip).all());
    assert!(matches!(e, Error::Misuse(_)), "{e:?}");
    let e = fails(
        &mut c,
        User::objects()
            .order_by(User::ID)
            .prefetch(Post::USER, Post::objects().order_by(Post::TITLE).limit(1))
            .mode(PrefetchMode::OneTrip)
            .all(),
    );
    assert!(matches!(e, Error::Misuse(_)), "a child level counts too: {e:?}");
    assert_idle(&mut c);
    // ...and works with one, giving what two steps give.
    let ordered = User::objects()
        .order_by(User::ID)
        .limit(2)
        .prefetch(Post::USER, Post::objects().order_by(Post::ID));
    let one = run(&mut c, ordered.clone().mode(PrefetchMode::OneTrip).all());
    let two = run(&mut c, ordered.mode(PrefetchMode::TwoStep).all());
    assert_eq!(one, two);
    assert_eq!(
        one.iter().map(|(u, p)| (u.name.as_str(), p.len())).collect::<Vec<_>>(),
        [(ADA, 2), (BOB, 1)]
    );
    // Auto with a limit that is not deterministic falls back to two steps
    // and still pairs the right children with the parents it got.
    let auto = run(
        &mut c,
        User::objects()
            .order_by(User::LOGINS.desc())
            .order_by(User::NAME)
            .limit(3)
            .prefetch(Post::USER, Post::objects().order_by(Post::ID))
            .all(),
    );
    let shape: Vec<(&str, Vec<String>)> = auto.iter().map(|(u, p)| (u.name.as_str(), titles(p))).collect();
    assert_eq!(shape, [(WILD, vec![]), (PCT, vec![]), (BOB, vec!["b1".to_string()])]);
    // A distinct parent set ordered by a column other than the key: the
    // children's subquery on the parents' keys must still be valid SQL
    // (`SELECT DISTINCT id … ORDER BY name` is not).
    let distinct = User::objects()
        .distinct()
        .filter(User::LOGINS.le(2))
        .order_by(User::NAME.desc())
        .prefetch(Post::USER, Post::objects().order_by(Post::ID));
    for mode in [PrefetchMode::Auto, PrefetchMode::OneTrip, PrefetchMode::TwoStep] {
        let got = run(&mut c, distinct.clone().mode(mode).all());
        let shape: Vec<(&str, Vec<String>)> = got.iter().map(|(u, p)| (u.name.as_str(), titles(p))).collect();
        assert_eq!(
            shape,
            [
                (CY, vec!["c1".to_string()]),
                (BOB, vec!["b1".to_string()]),
                (ADA, vec!["a1".to_string(), "a2".to_string()])
            ],
            "{mode:?}"
        );
    }
    // Prefetch::filter restricts the parents.
    let filtered = run(
        &mut c,
        User::objects()
            .order_by(User::ID)
            .prefetch(Post::USER, Post::objects().order_by(Post::ID))
            .filter(User::NAME.eq("Cy"))
            .all(),
    );
    assert_eq!(filtered.len(), 1);
    assert_eq!(titles(&filtered[0].1), ["c1"]);

    // Two prefetches on the same parents.
    let both = User::objects()
        .filter(User::LOGINS.le(4))
        .order_by(User::ID)
        .prefetch(Post::USER, Post::objects().order_by(Post::ID))
        .prefetch(Badge::USER, Badge::objects().order_by(Badge::LABEL));
    let one = run(&mut c, both.clone().mode(PrefetchMode::OneTrip).all());
    let two = run(&mut c, both.mode(PrefetchMode::TwoStep).all());
    assert_eq!(one, two);
    let shape: Vec<(&str, Vec<String>, Vec<&str>)> = one
        .iter()
        .map(|((u, posts), badges)| {
            (
                u.name.as_str(),
                titles(posts),
                badges.iter().map(|b| b.label.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (ADA, vec!["a1".to_string(), "a2".to_string()], vec![]),
            (BOB, vec!["b1".to_string()], vec!["gold", "silver"]),
            (CY, vec!["c1".to_string()], vec![]),
            (PCT, vec![], vec!["new"]),
        ]
    );
}

// ---- 14. pipelines and transactions ----

fn pipeline_and_atomic_at_orm_level<D: Driver>() {
    let mut c: D = setup("tx");
    let mut ada = User::new("ada@x", "Ada");
    run(&mut c, ada.save());
    run(&mut c, Post::new(&ada, "hello", 1).into_save());

    // Independent operations, one round trip, a typed tuple back.
    let mut bob = User::new("bob@x", "Bob");
    let (n, posts, saved) = run(
        &mut c,
        pipeline((
            User::objects().count(),
            Post::objects().filter(Post::USER_ID.eq(ada.id)).all(),
            bob.save(),
        )),
    );
    assert_eq!(n, 1, "the count ran before the insert queued after it");
    assert_eq!(posts.iter().map(|p| p.title.as_str()).collect::<Vec<_>>(), ["hello"]);
    assert!(saved.id > ada.id);
    assert!(bob.id > 0);
    assert_eq!(user_count(&mut c), 2);

    // A failing pipeline outside a transaction: one sync group, so the
    // statement before the failure is rolled back too, and its after_save
    // does not run (see `failed_pipeline_runs_no_after_hooks`).
    let mut cy = User::new("cy@x", "Cy");
    let mut dup = User::new("ada@x", "Dup");
    let e = fails(&mut c, pipeline((cy.save(), dup.save())));
    assert_eq!(e.code(), Some("23505"), "{e}");
    assert_eq!(user_count(&mut c), 2);
    assert_idle(&mut c);
    let audited = audit(&mut c).len();

    // atomic: the unique violation rolls back the first save and the work
    // its after_save queued; the error reported is the cause (23505), not
    // the hook's insert refused by the aborted transaction (25P02).
    let mut cy = User::new("cy@x", "Cy");
    let mut dup = User::new("ada@x", "Dup");
    let e = fails(&mut c, atomic(pipeline((cy.save(), dup.save()))));
    assert_eq!(e.code(), Some("23505"), "{e}");
    assert_eq!(user_count(&mut c), 2, "cy was not persisted");
    assert!(!run(&mut c, User::objects().filter(User::EMAIL.eq("cy@x")).exists()));
    assert_eq!(audit(&mut c).len(), audited, "nor its audit row");
    assert_idle(&mut c);

    // A failing after_save-queued write also rolls the whole thing back:
    // the hook's work is part of the transaction.
    let e = fails(&mut c, atomic(User::new("", "x").into_save()));
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    assert_idle(&mut c);

    // Nested atomic: committed together.
    let mut di = User::new("di@x", "Di");
    let mut ed = User::new("ed@x", "Ed");
    run(&mut c, atomic(pipeline((di.save(), atomic(ed.save())))));
    assert_eq!(
        run(
            &mut c,
            User::objects().filter(User::EMAIL.in_(["di@x", "ed@x"])).count()
        ),
        2
    );
    assert_idle(&mut c);

    // Nested atomic failing inside: its savepoint rolls back, the outer
    // transaction recovers and commits the rest.
    let fay = User::new("fay@x", "Fay");
    let (saved_fay, inner_code) = run(
        &mut c,
        atomic(then_result(atomic(User::new("ada@x", "Dup").into_save()), move |r| {
            let code = r.expect_err("the duplicate must fail").code().map(str::to_owned);
            Ok(fay.into_save().map(move |u| Ok((u, code.clone()))))
        })),
    );
    assert_eq!(inner_code.as_deref(), Some("23505"));
    assert!(saved_fay.id > 0);
    assert_eq!(
        run(&mut c, User::objects().filter(User::EMAIL.eq("fay@x")).get()),
        saved_fay
    );
    assert_eq!(run(&mut c, User::objects().filter(User::NAME.eq("Dup")).count()), 0);
    assert_idle(&mut c);

    // Nested failure not recovered: everything rolls back.
    let before = user_count(&mut c);
    let mut gus = User::new("gus@x", "Gus");
    let mut dup = User::new("bob@x", "Dup");
    let e = fails(&mut c, atomic(pipeline((gus.save(), atomic(dup.save())))));
    assert_eq!(e.code(), Some("23505"), "{e}");
    assert_eq!(user_count(&mut c), before);
    assert_idle(&mut c);

    // A query-set update and delete inside one transaction.
    let (n, d) = run(
        &mut c,
        atomic(pipeline((
            User::objects()
                .filter(User::EMAIL.eq("di@x"))
                .update()
                .set(User::LOGINS, 9),
            User::objects().filter(User::EMAIL.eq("ed@x")).delete(),
        ))),
    );
    assert_eq!((n, d), (1, 1));
    assert_eq!(
        run(&mut c, User::objects().filter(User::LOGINS.eq(9)).values(User::NAME)),
        ["Di"]
    );
    assert_idle(&mut c);
}

/// A save whose sync group fails after it (outside a transaction) is
/// rolled back by the server, so it reports [`Error::RolledBack`] and its
/// `after_save` does not run: no audit row names a user never stored.
fn failed_pipeline_runs_no_after_hooks<D: Driver>() {
    let mut c: D = setup("orphan_hooks");
    run(&mut c, User::new("ada@x", "Ada").into_save());
    let mut cy = User::new("cy@x", "Cy");
    let mut dup = User::new("ada@x", "Dup");
    let e = fails(&mut c, pipeline((cy.save(), dup.save())));
    assert_eq!(
        e.code(),
        Some("23505"),
        "the cause is reported, not the consequence: {e}"
    );
    assert_eq!(user_count(&mut c), 1);
    assert_no_orphan_audit(&mut c);
    // The undone save itself says so.
    let (first, _) = run(
        &mut c,
        pipeline((
            then_result(User::new("cy@x", "Cy").into_save(), |r| Ok(ready(Ok(r.err())))),
            then_result(User::new("ada@x", "Dup").into_save(), |r| Ok(ready(Ok(r.err())))),
        )),
    );
    assert!(matches!(first, Some(Error::RolledBack)), "{first:?}");
    assert_idle(&mut c);
}

fn assert_no_orphan_audit<D: Driver>(c: &mut D) {
    let users: HashSet<i32> = run(c, User::objects().values(User::ID)).into_iter().collect();
    let orphans: Vec<(i32, String)> = audit(c).into_iter().filter(|(id, _)| !users.contains(id)).collect();
    assert_eq!(orphans, [], "audit rows for users that were never stored");
}

/// Transactions pipelined beside other work keep their own outcome: a
/// sibling never runs inside a transaction that has not sent its COMMIT,
/// and a write that a failing transaction's BEGIN took over is reported
/// undone.
fn pipelined_transactions_keep_their_own_outcome<D: Driver>() {
    let mut c: D = setup("sibling_tx");
    run(&mut c, User::new("ada@x", "Ada").into_save());
    // Two steps, the second failing: its COMMIT cannot go out with the work.
    let failing = || {
        atomic(then(User::objects().count(), |_| {
            Ok(User::new("ada@x", "Dup").into_save())
        }))
    };
    let exists = |c: &mut D, email: &str| run(c, User::objects().filter(User::EMAIL.eq(email)).exists());

    let e = fails(
        &mut c,
        pipeline((failing(), atomic(User::new("bo@x", "Bo").into_save()))),
    );
    assert_eq!(e.code(), Some("23505"), "{e}");
    assert!(exists(&mut c, "bo@x"), "the sibling transaction committed on its own");
    assert_idle(&mut c);

    let e = fails(&mut c, pipeline((failing(), User::new("cy@x", "Cy").into_save())));
    assert_eq!(e.code(), Some("23505"), "{e}");
    assert!(
        exists(&mut c, "cy@x"),
        "a plain write beside it is not rolled back with it"
    );
    assert_idle(&mut c);

    // Sent before the BEGIN in one sync group, a plain write joins the
    // transaction that BEGIN opens, and is rolled back with it.
    let e = fails(
        &mut c,
        pipeline((
            User::new("di@x", "Di").into_save(),
            atomic(User::new("ada@x", "Dup").into_save()),
        )),
    );
    assert_eq!(e.code(), Some("23505"), "{e}");
    assert!(!exists(&mut c, "di@x"));
    assert_no_orphan_audit(&mut c);
    assert_idle(&mut c);

    // Work after a transaction that committed, failing later in the same
    // group: the committed part stays, the rest is undone.
    let e = fails(
        &mut c,
        pipeline((
            atomic(User::new("ed@x", "Ed").into_save()),
            User::new("fay@x", "Fay").into_save(),
            User::new("ada@x", "Dup").into_save(),
        )),
    );
    assert_eq!(e.code(), Some("23505"), "{e}");
    assert!(exists(&mut c, "ed@x"));
    assert!(!exists(&mut c, "fay@x"));
    assert_no_orphan_audit(&mut c);
    assert_idle(&mut c);
}

// ---- 15. raw SQL ----

fn raw_sql_maps_columns_by_name<D: Driver>() {
    let mut c: D = setup("raw");
    let users = seed(&mut c);
    // Columns in another order than the struct's, plus extras.
    let got = run(
        &mut c,
        User::raw(
            "SELECT version, 42 AS extra, hair_color, name, logins, email, id, 'x' AS more \
             FROM users WHERE name = $1",
        )
        .bind("Ada")
        .all(),
    );
    assert_eq!(got, [users[0].clone()]);
    let got = run(
        &mut c,
        User::raw("SELECT * FROM users WHERE logins = $1 OR name = $2 ORDER BY id DESC")
            .bind(2i32)
            .bind(PCT)
            .all(),
    );
    assert_eq!(got.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), [PCT, CY, BOB]);
    let none = run(&mut c, User::raw("SELECT * FROM users WHERE false").all());
    assert_eq!(none, []);
    // A missing column is a decode error that names it.
    let e = fails(
        &mut c,
        User::raw("SELECT id, name, logins, hair_color, version FROM users").all(),
    );
    assert!(matches!(&e, Error::Decode(m) if m.contains("email")), "{e:?}");
    // A column of the wrong type too.
    let e = fails(
        &mut c,
        User::raw("SELECT id, email, name, logins::text AS logins, hair_color, version FROM users").all(),
    );
    assert!(matches!(e, Error::Decode(_)), "{e:?}");
    assert_idle(&mut c);
}

// ---- 16. SQL injection ----

const HOSTILE: &[&str] = &[
    "O'Brien",
    "say \"hi\"",
    "semi;colon",
    "dash -- dash",
    "'); DROP TABLE users; --",
    "\"); DROP TABLE users; --",
    "back\\slash",
    "E'\\x41'",
    "$1",
    "100%",
    "a_b",
    "axb",
    "/* open comment",
    "tab\tand\nnewline",
    "🦀 ünïcødé",
];

fn hostile_values_are_data<D: Driver>() {
    let mut c: D = setup("inject");
    let stored = run(
        &mut c,
        User::bulk_insert(HOSTILE.iter().map(|s| User {
            hair_color: Some(s.to_string()),
            ..User::new(&format!("{s}@x"), s)
        })),
    );
    assert_eq!(stored.len(), HOSTILE.len());
    for (u, s) in stored.iter().zip(HOSTILE) {
        assert_eq!((u.name.as_str(), u.email.clone()), (*s, format!("{s}@x")));
        let found = run(&mut c, User::objects().filter(User::NAME.eq(*s)).get());
        assert_eq!(found.name, *s, "read back verbatim");
        assert_eq!(found.hair_color.as_deref(), Some(*s));
        assert_eq!(
            run(&mut c, User::objects().filter(User::EMAIL.eq(format!("{s}@x"))).count()),
            1
        );
        // Updated through save and through a query set, still verbatim.
        let mut u = found;
        u.name = format!("{s}{s}");
        run(&mut c, u.save());
        let n = run(
            &mut c,
            User::objects()
                .filter(User::NAME.eq(format!("{s}{s}")))
                .update()
                .set(User::NAME, *s),
        );
        assert_eq!(n, 1);
        let raw = run(
            &mut c,
            User::raw("SELECT * FROM users WHERE name = $1")
                .bind(s.to_string())
                .all(),
        );
        assert_eq!(raw.len(), 1);
    }
    assert_eq!(
        run(
            &mut c,
            User::objects().filter(User::NAME.in_(HOSTILE.iter().copied())).count()
        ),
        HOSTILE.len() as i64
    );
    // contains/starts_with/ends_with match the text literally, whatever it
    // holds: compare with Rust's own string search.
    let all: Vec<String> = HOSTILE.iter().map(|s| s.to_string()).collect();
    for needle in [
        "%", "_", "\\", "'", "\"", ";", "--", "$1", "a_b", "0%", "\\s", "\t", "🦀", "/*",
    ] {
        let expect = |f: &dyn Fn(&str) -> bool| -> Vec<String> { all.iter().filter(|s| f(s)).cloned().collect() };
        assert_eq!(
            names(&mut c, User::NAME.contains(needle)),
            expect(&|s| s.contains(needle)),
            "contains {needle:?}"
        );
        assert_eq!(
            names(&mut c, User::NAME.starts_with(needle)),
            expect(&|s| s.starts_with(needle)),
            "starts_with {needle:?}"
        );
        assert_eq!(
            names(&mut c, User::HAIR_COLOR.ends_with(needle)),
            expect(&|s| s.ends_with(needle)),
            "ends_with {needle:?}"
        );
    }
    // The same text as a LIKE pattern is a pattern: `_` matches any one
    // character.
    assert_eq!(names(&mut c, User::NAME.like("a_b")), ["a_b", "axb"]);
    assert_eq!(names(&mut c, User::NAME.like("a\\_b")), ["a_b"]);
    assert!(table_exists(&mut c, "users"));
    assert_eq!(user_count(&mut c), HOSTILE.len() as i64);
    assert_idle(&mut c);
}

fn hostile_identifiers_round_trip<D: Driver>() {
    let mut c: D = setup("inject_ident");
    run(&mut c, pipeline((Weird::create_table(), WeirdChild::create_table())));
    run(&mut c, Weird::create_table());
    assert!(table_exists(&mut c, Weird::META.table));
    assert!(table_exists(&mut c, WeirdChild::META.table));

    let mut w = Weird {
        id: 0,
        value: "x'; --".into(),
        n: 1,
    };
    run(&mut c, w.save());
    assert!(w.id > 0);
    w.n = 2;
    run(&mut c, w.save());
    let more = run(
        &mut c,
        Weird::bulk_insert(["b", "c"].map(|v| Weird {
            id: 0,
            value: v.into(),
            n: 10,
        })),
    );
    assert_eq!(more.len(), 2);
    let upserted = run(
        &mut c,
        Weird::bulk_insert([Weird {
            id: 0,
            value: "b".into(),
            n: 20,
        }])
        .on_conflict(Weird::VALUE)
        .do_update(Weird::N),
    );
    assert_eq!((upserted[0].id, upserted[0].n), (more[0].id, 20));
    assert_eq!(run(&mut c, Weird::objects().filter(Weird::VALUE.eq("x'; --")).get()), w);
    assert_eq!(
        run(
            &mut c,
            Weird::objects()
                .filter(Weird::N.ge(2) & Weird::VALUE.contains("'"))
                .values((Weird::ID, Weird::N))
        ),
        [(w.id, 2)]
    );
    let n = run(
        &mut c,
        Weird::objects()
            .filter(Weird::N.eq(10))
            .update()
            .set(Weird::N, Weird::N * 3),
    );
    assert_eq!(n, 1);
    let n = run(
        &mut c,
        Weird::objects()
            .order_by(Weird::ID)
            .limit(1)
            .update()
            .set(Weird::N, -(-5)),
    );
    assert_eq!(n, 1);
    assert_eq!(
        run(&mut c, Weird::objects().order_by(Weird::ID).values(Weird::N)),
        [5, 20, 30]
    );
    assert_eq!(
        run(&mut c, Weird::objects().aggregate((count(), sum(Weird::N)))),
        (3, Some(55))
    );

    // Relations between the two tables: joins, subqueries, ANY.
    let kids = run(
        &mut c,
        WeirdChild::bulk_insert(
            [(w.id, "k1"), (w.id, "k2"), (more[1].id, "k3")].map(|(p, n)| WeirdChild {
                id: 0,
                weird_id: p,
                note: n.into(),
            }),
        ),
    );
    let joined = run(
        &mut c,
        WeirdChild::objects()
            .select_related(WeirdChild::WEIRD)
            .filter(Weird::VALUE.eq("c"))
            .all(),
    );
    let c_row = Weird {
        n: 30,
        ..more[1].clone()
    };
    assert_eq!(joined, [(kids[2].clone(), Some(c_row))]);
    let q = Weird::objects()
        .order_by(Weird::ID)
        .prefetch(WeirdChild::WEIRD, WeirdChild::objects().order_by(WeirdChild::ID));
    let one = run(&mut c, q.clone().mode(PrefetchMode::OneTrip).all());
    let two = run(&mut c, q.mode(PrefetchMode::TwoStep).all());
    assert_eq!(one, two);
    assert_eq!(
        one.iter().map(|(p, k)| (p.id, k.len())).collect::<Vec<_>>(),
        [(w.id, 2), (more[0].id, 0), (more[1].id, 1)]
    );
    let (found, created) = run(
        &mut c,
        Weird::objects().filter(Weird::VALUE.eq("d")).get_or_create(|| Weird {
            id: 0,
            value: "d".into(),
            n: 4,
        }),
    );
    assert!(created && found.id > 0);

    // Deletes: a model, then a query set (cascading to the children).
    assert_eq!(run(&mut c, found.delete()), 1);
    assert_eq!(run(&mut c, Weird::objects().filter(Weird::ID.eq(w.id)).delete()), 1);
    assert_eq!(run(&mut c, WeirdChild::objects().values(WeirdChild::NOTE)), ["k3"]);
    assert_eq!(run(&mut c, Weird::objects().count()), 2);

    run(&mut c, pipeline((WeirdChild::drop_table(), Weird::drop_table())));
    assert!(!table_exists(&mut c, Weird::META.table));
    assert!(!table_exists(&mut c, WeirdChild::META.table));
    assert!(table_exists(&mut c, "users"), "the users table survived");
    assert_eq!(user_count(&mut c), 0);
    assert_idle(&mut c);
}

fn negative_numbers_are_not_comments<D: Driver>() {
    let mut c: D = setup("negative");
    seed(&mut c);
    // `logins - -1` must not become `logins --1` (a comment).
    let n = run(
        &mut c,
        User::objects()
            .filter(User::NAME.eq("Ada"))
            .update()
            .set(User::LOGINS, User::LOGINS - (-1)),
    );
    assert_eq!(n, 1);
    assert_eq!(
        run(
            &mut c,
            User::objects().filter(User::NAME.eq("Ada")).values(User::LOGINS)
        ),
        [2]
    );
    let n = run(
        &mut c,
        User::objects()
            .filter(User::NAME.eq("Ada"))
            .update()
            .set(User::LOGINS, User::LOGINS - (-User::LOGINS)),
    );
    assert_eq!(n, 1);
    assert_eq!(
        run(
            &mut c,
            User::objects().filter(User::NAME.eq("Ada")).values(User::LOGINS)
        ),
        [4]
    );
    assert_eq!(run(&mut c, User::objects().filter(User::LOGINS.gt(-1)).count()), 5);
    assert_eq!(names(&mut c, (-User::LOGINS).eq(-2)), [BOB, CY]);
    assert_eq!(names(&mut c, (User::LOGINS - (-1)).eq(3)), [BOB, CY]);
    assert_eq!(names(&mut c, (User::LOGINS * (-1)).lt(-4)), [WILD]);
    assert_eq!(names(&mut c, User::LOGINS.between(-10, -1)), Vec::<String>::new());
    assert!(table_exists(&mut c, "users"));
    assert_eq!(user_count(&mut c), 5);
}

// ---- 17. create_table / drop_table ----

fn create_and_drop_table<D: Driver>() {
    let mut c: D = setup("ddl");
    let ada = run(&mut c, User::new("ada@x", "Ada").into_save());
    run(&mut c, Post::new(&ada, "before", 1).into_save());
    assert_eq!(run(&mut c, Post::objects().count()), 1);
    assert!(table_exists(&mut c, "posts"));

    run(&mut c, Post::drop_table());
    assert!(!table_exists(&mut c, "posts"));
    let gone: Option<String> = c.query_one("SELECT to_regclass('posts')::text", &[]).unwrap().get(0);
    assert_eq!(gone, None);
    assert!(
        table_exists(&mut c, "comments"),
        "CASCADE drops the foreign key, not the table"
    );
    let e = fails(&mut c, Post::objects().count());
    assert_eq!(e.code(), Some("42P01"), "{e}");
    run(&mut c, Post::drop_table()); // IF EXISTS: twice is fine

    run(&mut c, Post::create_table());
    run(&mut c, Post::create_table()); // IF NOT EXISTS: twice is fine
    assert!(table_exists(&mut c, "posts"));
    // The statements cached before the drop work on the new table.
    assert_eq!(run(&mut c, Post::objects().count()), 0);
    let p = run(&mut c, Post::new(&ada, "after", 2).into_save());
    assert_eq!(run(&mut c, Post::objects().all()), [p]);
    assert_idle(&mut c);
}

// ---- 18. dropped operations ----

fn dropped_orm_operations_leave_connection_idle<D: Driver>() {
    let mut c: D = setup("dropped");
    let mut steps = 0;
    loop {
        let mut u = User::new(&format!("drop{steps}@x"), "dropped");
        let done = c.run_steps(atomic(u.save()).map(|_| Ok(())), steps);
        assert_idle(&mut c);
        if let Some(r) = done {
            r.unwrap();
            break;
        }
        steps += 1;
        assert!(steps < 1000, "the save never completed");
    }
    // Whatever point it was dropped at, the transaction held: every stored
    // user has its audit row, and no audit row lacks its user.
    let users: HashSet<i32> = run(&mut c, User::objects().values(User::ID)).into_iter().collect();
    let audited: HashSet<i32> = audit(&mut c).into_iter().map(|(id, _)| id).collect();
    assert_eq!(users, audited);
    assert!(!users.is_empty(), "the completed save is stored");

    // A bulk insert and a get_or_create, dropped at every step.
    for kind in 0..2 {
        let mut steps = 0;
        loop {
            let email = format!("k{kind}s{steps}@x");
            let done = match kind {
                0 => c.run_steps(
                    User::bulk_insert([User::new(&email, "bulk"), User::new(&format!("2{email}"), "bulk")])
                        .map(|_| Ok(())),
                    steps,
                ),
                _ => c.run_steps(
                    User::objects()
                        .filter(User::EMAIL.eq(email.clone()))
                        .get_or_create(move || User::new(&email, "goc"))
                        .map(|_| Ok(())),
                    steps,
                ),
            };
            assert_idle(&mut c);
            if let Some(r) = done {
                r.unwrap();
                break;
            }
            steps += 1;
            assert!(steps < 1000, "never completed");
        }
    }

    // A nested prefetch, in both modes.
    let users = run(&mut c, User::objects().order_by(User::ID).limit(3).all());
    let posts = run(
        &mut c,
        Post::bulk_insert(users.iter().map(|u| Post::new(u, &format!("by {}", u.id), 0))),
    );
    run(
        &mut c,
        Comment::bulk_insert(posts.iter().map(|p| Comment {
            id: 0,
            post_id: p.id,
            text: "hi".into(),
        })),
    );
    let q = User::objects().order_by(User::ID).prefetch(
        Post::USER,
        Post::objects()
            .order_by(Post::ID)
            .prefetch(Comment::POST, Comment::objects()),
    );
    let expected = run(&mut c, q.clone().all());
    assert_eq!(expected.iter().filter(|(_, p)| p.len() == 1).count(), 3);
    for mode in [PrefetchMode::OneTrip, PrefetchMode::TwoStep] {
        let mut steps = 0;
        loop {
            let done = c.run_steps(q.clone().mode(mode).all(), steps);
            assert_idle(&mut c);
            if let Some(r) = done {
                assert_eq!(r.unwrap(), expected, "{mode:?}");
                break;
            }
            steps += 1;
            assert!(steps < 1000, "the prefetch never completed");
        }
    }
}

// ---- 19. hooks queueing work before the write ----

fn before_save_queued_work_shares_the_write_batch<D: Driver>() {
    let mut c: D = setup("before_queue");
    run(&mut c, Note::create_table());
    let mut note = Note {
        id: 0,
        author_id: 7,
        body: "hello".into(),
    };
    run(&mut c, note.save());
    note.body = "edited".into();
    run(&mut c, note.save());
    let notes = run(
        &mut c,
        Note::bulk_insert([8, 9].map(|a| Note {
            id: 0,
            author_id: a,
            body: "bulk".into(),
        })),
    );
    assert_eq!(notes.len(), 2);
    assert_eq!(
        audit(&mut c),
        [
            (7, "note insert".to_string()),
            (7, "note update".to_string()),
            (8, "note insert".to_string()),
            (9, "note insert".to_string())
        ]
    );
    // The queued statement fails: the write in its batch does not happen,
    // nor does the other work queued with it.
    let e = fails(
        &mut c,
        Note {
            id: 0,
            author_id: 10,
            body: "fail in the database".into(),
        }
        .into_save(),
    );
    assert_eq!(e.code(), Some("22012"), "division by zero: {e}");
    let e = fails(
        &mut c,
        Note::bulk_insert([("ok", 11), ("fail in the database", 12)].map(|(b, a)| Note {
            id: 0,
            author_id: a,
            body: b.into(),
        })),
    );
    assert_eq!(e.code(), Some("22012"), "{e}");
    assert_eq!(run(&mut c, Note::objects().count()), 3);
    assert_eq!(audit(&mut c).len(), 4);
    assert_idle(&mut c);

    // after_delete runs once the row is gone.
    assert_eq!(run(&mut c, note.delete()), 1);
    assert_eq!(audit(&mut c).last(), Some(&(7, "note deleted".to_string())));
    assert_eq!(run(&mut c, Note::objects().count()), 2);
}

// ---- 20. the other field attributes ----

fn derive_attributes_generated_skip_insert_sql_type_set_null<D: Driver>() {
    let mut c: D = setup("attributes");
    run(&mut c, pipeline((Item::create_table(), Session::create_table())));
    let ada = run(&mut c, User::new("ada@x", "Ada").into_save());

    let mut item = Item::new("pen", 3, 4, Some(&ada));
    run(&mut c, item.save());
    assert!(item.id > 0);
    assert_eq!(item.total, 12, "the generated column comes back");
    assert_eq!(item.note, None, "skip_insert: left to the database");
    assert!(
        item.created > chrono::DateTime::<chrono::Utc>::default(),
        "default now()"
    );
    assert_eq!(item.meta["tags"][1], "b");
    item.qty = 5;
    item.note = Some("written by UPDATE".into());
    run(&mut c, item.save());
    assert_eq!(item.total, 15);
    assert_eq!(item.note.as_deref(), Some("written by UPDATE"));
    assert_eq!(run(&mut c, Item::objects().get()), item);
    assert_eq!(
        run(&mut c, Item::objects().filter(Item::TOTAL.gt(14)).values(Item::CODE)),
        ["pen"]
    );
    let bulk = run(
        &mut c,
        Item::bulk_insert([Item::new("cup", 2, 2, None), Item::new("ink", 1, 9, Some(&ada))]),
    );
    assert_eq!(bulk.iter().map(|i| i.total).collect::<Vec<_>>(), [4, 9]);
    // sql_type: varchar(8) refuses nine characters.
    let e = fails(&mut c, Item::new("123456789", 1, 1, None).into_save());
    assert_eq!(e.code(), Some("22001"), "{e}");
    let ty: String = c
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'items'::regclass AND attname = 'code'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ty, "character varying(8)");

    // A nullable foreign key: joins and prefetch skip the NULLs.
    let joined = run(
        &mut c,
        Item::objects().select_related(Item::OWNER).order_by(Item::ID).all(),
    );
    assert_eq!(
        joined
            .iter()
            .map(|(i, u)| (i.code.as_str(), u.as_ref().map(|u| u.id)))
            .collect::<Vec<_>>(),
        [("pen", Some(ada.id)), ("cup", None), ("ink", Some(ada.id))]
    );
    for mode in [PrefetchMode::OneTrip, PrefetchMode::TwoStep] {
        let got = run(
            &mut c,
            User::objects()
                .prefetch(Item::OWNER, Item::objects().order_by(Item::ID))
                .mode(mode)
                .all(),
        );
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].1.iter().map(|i| i.code.as_str()).collect::<Vec<_>>(),
            ["pen", "ink"],
            "{mode:?}"
        );
    }

    // A UUID key: saving again upserts; the key filters and deletes.
    let sid = uuid::Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0);
    let expires = chrono::NaiveDate::from_ymd_opt(2030, 1, 2)
        .unwrap()
        .and_hms_opt(3, 4, 5)
        .unwrap();
    let mut session = Session {
        id: sid,
        user_id: ada.id,
        expires: None,
    };
    run(&mut c, session.save());
    session.expires = Some(expires);
    run(&mut c, session.save());
    run(
        &mut c,
        Session {
            id: uuid::Uuid::from_u128(2),
            user_id: ada.id,
            expires: None,
        }
        .into_save(),
    );
    assert_eq!(
        run(&mut c, Session::objects().filter(Session::ID.eq(sid)).get()),
        session
    );
    assert_eq!(
        run(
            &mut c,
            Session::objects()
                .filter(Session::EXPIRES.is_not_null())
                .values(Session::ID)
        ),
        [sid]
    );
    assert_eq!(run(&mut c, session.delete()), 1);
    assert_eq!(run(&mut c, Session::objects().count()), 1);

    // on_delete: deleting the user nulls the items' owner and cascades to
    // the sessions.
    run(&mut c, ada.delete());
    assert_eq!(run(&mut c, Item::objects().filter(Item::OWNER_ID.is_null()).count()), 3);
    assert_eq!(run(&mut c, Session::objects().count()), 0);
}

// ---- 21. row locks ----

fn a_model_that_references_itself<D: Driver>() {
    let mut c: D = setup("self_ref");
    run(&mut c, Employee::create_table());
    let fk = Employee::META.columns.iter().find(|c| c.name == "manager_id").unwrap();
    assert_eq!(fk.references, Some(("employees", "id")));
    let boss = run(
        &mut c,
        Employee {
            id: 0,
            name: "boss".into(),
            manager_id: None,
        }
        .into_save(),
    );
    for name in ["ann", "bob"] {
        run(
            &mut c,
            Employee {
                id: 0,
                name: name.into(),
                manager_id: Some(boss.id),
            }
            .into_save(),
        );
    }
    let reports = run(
        &mut c,
        Employee::objects()
            .filter(Employee::MANAGER_ID.eq(Some(boss.id)))
            .count(),
    );
    assert_eq!(reports, 2);
    // The key is the database's: no manager 9999.
    let err = c
        .run(
            Employee {
                id: 0,
                name: "ghost".into(),
                manager_id: Some(9_999),
            }
            .into_save(),
        )
        .unwrap_err();
    assert_eq!(err.code(), Some("23503"), "{err}");
    // Each manager with their reports: a second query on the same table.
    let tree = run(
        &mut c,
        Employee::objects()
            .filter(Employee::MANAGER_ID.is_null())
            .prefetch(Employee::MANAGER, Employee::objects().order_by(Employee::NAME))
            .all(),
    );
    assert_eq!(tree.len(), 1);
    assert_eq!(
        tree[0].1.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["ann", "bob"]
    );
    // Joined to itself: the manager's side goes by the key's name, and a
    // filter reaches it through that name.
    let with_managers = Employee::objects().select_related(Employee::MANAGER);
    let sql = with_managers.to_sql().text;
    assert!(
        sql.contains(r#"LEFT JOIN "employees" AS "manager" ON ("employees"."manager_id" = "manager"."id")"#),
        "{sql}"
    );
    let rows = run(&mut c, with_managers.clone().order_by(Employee::NAME).all());
    let pairs: Vec<(&str, Option<&str>)> = rows
        .iter()
        .map(|(e, m)| (e.name.as_str(), m.as_ref().map(|m| m.name.as_str())))
        .collect();
    assert_eq!(pairs, [("ann", Some("boss")), ("bob", Some("boss")), ("boss", None)]);
    let under_boss = run(
        &mut c,
        with_managers
            .filter(Employee::MANAGER.aliased(Employee::NAME).eq("boss"))
            .filter(Employee::NAME.ne("ann"))
            .all(),
    );
    assert_eq!(under_boss.len(), 1);
    assert_eq!(under_boss[0].0.name, "bob");
    // The other way: each employee with each report (the reports aliased).
    let rows = run(
        &mut c,
        Employee::objects()
            .left_join(Employee::MANAGER)
            .order_by(Employee::NAME)
            .order_by(Employee::MANAGER.aliased(Employee::NAME))
            .all(),
    );
    let pairs: Vec<(&str, Option<&str>)> = rows
        .iter()
        .map(|(e, r)| (e.name.as_str(), r.as_ref().map(|r| r.name.as_str())))
        .collect();
    assert_eq!(
        pairs,
        [
            ("ann", None),
            ("bob", None),
            ("boss", Some("ann")),
            ("boss", Some("bob"))
        ]
    );
    // on_delete cascade down the tree.
    run(&mut c, boss.delete());
    assert_eq!(run(&mut c, Employee::objects().count()), 0);
}

fn joins_of_one_table_twice_and_through_a_joined_model<D: Driver>() {
    let mut c: D = setup("joins_twice");
    run(&mut c, Message::create_table());
    let users = seed(&mut c);
    let (ada, bob, cy) = (&users[0], &users[1], &users[2]);
    let note = |from: &User, to: Option<&User>, body: &str| Message {
        id: 0,
        sender_id: from.id,
        recipient_id: to.map(|u| u.id),
        body: body.into(),
    };
    run(
        &mut c,
        Message::bulk_insert([
            note(ada, Some(bob), "hi bob"),
            note(bob, Some(ada), "hi ada"),
            note(cy, None, "to all"),
            note(ada, Some(cy), "hi cy"),
        ]),
    );
    // users joined twice: as themselves (the sender), as "recipient".
    let both = Message::objects()
        .select_related(Message::SENDER)
        .select_related(Message::RECIPIENT)
        .order_by(Message::ID);
    let sql = both.to_sql().text;
    assert!(
        sql.contains(r#"LEFT JOIN "users" ON ("messages"."sender_id" = "users"."id") LEFT JOIN "users" AS "recipient" ON ("messages"."recipient_id" = "recipient"."id")"#),
        "{sql}"
    );
    let rows = run(&mut c, both.clone().all());
    let names: Vec<(&str, &str, Option<&str>)> = rows
        .iter()
        .map(|(m, s, r)| {
            (
                m.body.as_str(),
                s.as_ref().unwrap().name.as_str(),
                r.as_ref().map(|r| r.name.as_str()),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("hi bob", ADA, Some(BOB)),
            ("hi ada", BOB, Some(ADA)),
            ("to all", CY, None),
            ("hi cy", ADA, Some(CY)),
        ]
    );
    // Each side filtered by its own name; the rows as structs.
    let envelopes: Vec<Envelope> = run(
        &mut c,
        both.filter(User::NAME.eq(ADA))
            .filter(Message::RECIPIENT.aliased(User::NAME).eq(CY))
            .all_into(),
    );
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0].message.body, "hi cy");
    assert_eq!(envelopes[0].sender.as_ref(), Some(ada));
    assert_eq!(envelopes[0].recipient.as_ref(), Some(cy));

    // Through a joined model: comment → its post → the post's author.
    let post = run(&mut c, Post::new(bob, "bob's post", 3).into_save());
    run(
        &mut c,
        Comment {
            id: 0,
            post_id: post.id,
            text: "nice".into(),
        }
        .into_save(),
    );
    let threads: Vec<Thread> = run(
        &mut c,
        Comment::objects()
            .select_related(Comment::POST)
            .select_related(Post::USER)
            .all_into(),
    );
    assert_eq!(threads.len(), 1);
    assert_eq!(threads[0].comment.text, "nice");
    assert_eq!(threads[0].post.as_ref(), Some(&post));
    assert_eq!(threads[0].author.as_ref().map(|u| u.name.as_str()), Some(BOB));
    // A key from a model the query does not have is refused by name.
    let e = fails(
        &mut c,
        Message::objects()
            .select_related(Message::SENDER)
            .select_related(Comment::POST)
            .all(),
    );
    assert!(e.to_string().contains("no Comment in the query"), "{e}");
}

fn composite_primary_keys<D: Driver>() {
    let mut c: D = setup("composite_key");
    assert_eq!(Membership::META.key, [0, 1]);
    let ddl = Membership::META.create_table_sql();
    assert!(ddl.ends_with(r#"PRIMARY KEY ("group_id", "user_id"))"#), "{ddl}");
    run(&mut c, Membership::create_table());
    let key_cols = "SELECT array_agg(a.attname::text ORDER BY k.n)::text FROM pg_index i \
                    CROSS JOIN unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, n) \
                    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                    WHERE i.indrelid = 'memberships'::regclass AND i.indisprimary";
    let cols: String = c.query_one(key_cols, &[]).unwrap().get(0);
    assert_eq!(cols, "{group_id,user_id}");

    // save is an upsert on the whole key: the same pair twice is one row.
    let mut m = Membership::new(1, 10, "member");
    assert_eq!(m.key(), Some((1, 10)));
    run(&mut c, m.save());
    m.role = "owner".into();
    run(&mut c, m.save());
    run(
        &mut c,
        Membership::bulk_insert([Membership::new(1, 11, "member"), Membership::new(2, 10, "member")]),
    );
    assert_eq!(run(&mut c, Membership::objects().count()), 3);
    let owner = run(
        &mut c,
        Membership::objects()
            .filter(Membership::GROUP_ID.eq(1) & Membership::USER_ID.eq(10))
            .get(),
    );
    assert_eq!(owner.role, "owner");
    // first orders by every key column; deleting a model matches the whole key.
    let first = run(&mut c, Membership::objects().filter(Membership::USER_ID.eq(10)).first());
    assert_eq!(first.map(|m| (m.group_id, m.user_id)), Some((1, 10)));
    assert_eq!(run(&mut c, Membership::new(2, 10, "").into_delete()), 1);
    assert_eq!(
        run(
            &mut c,
            Membership::objects()
                .order_by(Membership::USER_ID)
                .values(Membership::USER_ID)
        ),
        [10, 11]
    );
    // A limited update or delete selects the rows by (group_id, user_id).
    let bumped = run(
        &mut c,
        Membership::objects()
            .order_by(Membership::USER_ID.desc())
            .limit(1)
            .update()
            .set(Membership::ROLE, "admin"),
    );
    assert_eq!(bumped, 1);
    assert_eq!(
        run(
            &mut c,
            Membership::objects()
                .filter(Membership::ROLE.eq("admin"))
                .values(Membership::USER_ID)
        ),
        [11]
    );
    let light = run(&mut c, Membership::objects().only(Membership::ROLE).all());
    assert_eq!(light.len(), 2);
    assert!(
        light.iter().all(|p| p.is_loaded(Membership::USER_ID)),
        "the whole key comes along"
    );
    assert_eq!(
        run(
            &mut c,
            Membership::objects().order_by(Membership::USER_ID).limit(1).delete()
        ),
        1
    );
    assert_eq!(run(&mut c, Membership::objects().values(Membership::USER_ID)), [11]);
}

fn for_update_locks_the_rows<D: Driver>() {
    let mut a: D = setup("for_update");
    seed(&mut a);
    let mut b: D = join("for_update", &server().url());
    a.batch_execute("BEGIN").unwrap();
    let locked = run(
        &mut a,
        User::objects()
            .filter(User::LOGINS.eq(2))
            .order_by(User::ID)
            .for_update()
            .all(),
    );
    assert_eq!(locked.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), [BOB, CY]);
    // NOWAIT: B is refused at once instead of waiting for A.
    let e = b
        .query("SELECT id FROM users WHERE name = 'Bob' FOR UPDATE NOWAIT", &[])
        .expect_err("Bob's row is locked by A");
    assert_eq!(e.code(), Some("55P03"), "{e}");
    let free = b
        .query("SELECT id FROM users WHERE name = 'Ada' FOR UPDATE NOWAIT", &[])
        .unwrap();
    assert_eq!(free.len(), 1, "rows A did not select are not locked");
    a.batch_execute("COMMIT").unwrap();
    let now_free = b
        .query("SELECT id FROM users WHERE name = 'Bob' FOR UPDATE NOWAIT", &[])
        .unwrap();
    assert_eq!(now_free.len(), 1);
    // Inside atomic, as one operation.
    let got = run(
        &mut a,
        atomic(User::objects().filter(User::NAME.eq("Ada")).for_update().get()),
    );
    assert_eq!(got.name, ADA);
    assert_idle(&mut a);
    assert_idle(&mut b);
}
