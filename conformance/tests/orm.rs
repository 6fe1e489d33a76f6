//! ORM behaviour, each test written once and run against both drivers
//! (`name::sync`, `name::tokio`). Every test works in a schema of its own
//! (named after the test and the driver), so tests run in parallel on the
//! one shared server without seeing each other's tables.

use duet_conformance::server::TestServer;
use duet_conformance::{conformance_tests, Driver};
use duet_core::orm::prelude::*;
use duet_core::orm::{HookCtx, Hooks};
use duet_core::{Error, Operation};

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

#[derive(Model, Debug, Clone, PartialEq)]
struct Comment {
    #[duet(primary_key, auto)]
    id: i32,
    #[duet(references = Post, on_delete = "cascade")]
    post_id: i32,
    text: String,
}

// ---- harness ----

fn server() -> &'static TestServer {
    TestServer::shared()
}

/// A connection whose `search_path` is a fresh schema holding the models'
/// tables.
fn setup<D: Driver>(test: &str) -> D {
    let mut c = D::connect(&server().url()).unwrap_or_else(|e| panic!("{}: connect: {e}", D::NAME));
    let schema = format!("orm_{test}_{}", D::NAME);
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path TO {schema}"
    ))
    .unwrap();
    c.run(pipeline((
        User::create_table(),
        AuditLog::create_table(),
        Post::create_table(),
        Comment::create_table(),
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

conformance_tests!(save_inserts_then_updates, prefetch_nested_both_modes_agree,);

fn save_inserts_then_updates<D: Driver>() {
    let mut c: D = setup("save");
    let mut ada = User::new("ada@example.com", "Ada");
    run(&mut c, ada.save());
    assert!(ada.id > 0, "the identity key comes back into the model");
    assert_eq!(ada.logins, 0, "the database default comes back");
    assert_eq!(ada.version, 1, "before_save ran");

    ada.name = "Ada Lovelace".into();
    run(&mut c, ada.save());
    assert_eq!(ada.version, 2);
    let stored = run(&mut c, User::objects().filter(User::ID.eq(ada.id)).get());
    assert_eq!(stored, ada);

    let log = run(
        &mut c,
        AuditLog::objects().order_by(AuditLog::ID).values(AuditLog::ACTION),
    );
    assert_eq!(log, ["insert", "update"]);
}

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
