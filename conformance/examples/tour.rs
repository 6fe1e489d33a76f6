//! The duet tour: one ORM, one set of hooks, driven from blocking code and
//! from tokio. Starts a throwaway PostgreSQL unless DATABASE_URL is set.
//!
//!     cargo run -p duet-conformance --example tour

use duet_conformance::server::TestServer;
use duet_core::orm::prelude::*;
use duet_core::Operation;

#[derive(Model, Debug, Clone)]
#[duet(table = "tour_authors")]
struct Author {
    #[duet(primary_key, auto)]
    id: i32,
    #[duet(unique)]
    name: String,
}

/// A post keeps a slug in step with its title and counts its revisions; a
/// hook does it, and the same hook runs under both drivers.
#[derive(Model, Debug, Clone)]
#[duet(table = "tour_posts", hooks)]
struct Post {
    #[duet(primary_key, auto)]
    id: i32,
    #[duet(references = Author, on_delete = "cascade")]
    author_id: i32,
    title: String,
    slug: String,
    revision: i32,
    #[duet(default = "now()", sql_type = "timestamptz")]
    created_at: chrono::DateTime<chrono::Utc>,
}

impl Hooks for Post {
    fn before_save(&mut self, _ctx: &mut HookCtx) -> Result<(), Error> {
        if self.title.trim().is_empty() {
            return Err(Error::invalid("a post needs a title"));
        }
        let words: Vec<String> = self
            .title
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        self.slug = words.join("-");
        self.revision += 1;
        Ok(())
    }

    fn after_save(&mut self, ctx: &mut HookCtx) -> Result<(), Error> {
        // Queued work runs right behind the write, in the caller's transaction.
        let what = if ctx.inserting() { "created" } else { "revised" };
        ctx.queue(
            AuditEntry {
                id: 0,
                message: format!("post {} {what} (rev {})", self.id, self.revision),
            }
            .into_save(),
        );
        Ok(())
    }
}

#[derive(Model, Debug, Clone)]
#[duet(table = "tour_audit")]
struct AuditEntry {
    #[duet(primary_key, auto)]
    id: i64,
    message: String,
}

fn post(author: &Author, title: &str) -> Post {
    Post {
        id: 0,
        author_id: author.id,
        title: title.into(),
        slug: String::new(),
        revision: 0,
        created_at: chrono::Utc::now(),
    }
}

/// Written once, run by both drivers: every author with their posts, both
/// levels in one round trip.
fn authors_with_posts() -> impl Operation<Output = Vec<(Author, Vec<Post>)>> + Send {
    Author::objects()
        .order_by(Author::ID)
        .prefetch(Post::AUTHOR, Post::objects().order_by(Post::ID))
        .all()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = TestServer::start()?;
    let url = server.url();
    println!("server: {}", url.split('@').next_back().unwrap_or(&url));

    // ---- blocking ----
    let mut db = duet_sync::Client::connect(&url)?;
    db.run(pipeline((
        AuditEntry::drop_table(),
        Post::drop_table(),
        Author::drop_table(),
    )))?;
    db.run(pipeline((Author::create_table(), AuditEntry::create_table())))?;
    db.run(Post::create_table())?;

    let authors = db.run(Author::bulk_insert([
        Author {
            id: 0,
            name: "ann".into(),
        },
        Author {
            id: 0,
            name: "bob".into(),
        },
    ]))?;
    let (ann, bob) = (&authors[0], &authors[1]);
    let mut hello = post(ann, "Hello World");
    db.run(hello.save())?;
    println!(
        "[sync]  saved post {} as {:?} (rev {})",
        hello.id, hello.slug, hello.revision
    );

    // A transaction: both posts or neither. The empty title is refused by
    // the hook before anything is sent, and the first insert rolls back.
    let refused = db
        .atomic(|tx| {
            tx.run(post(bob, "Second thoughts").into_save())?;
            tx.run(post(bob, "  ").into_save())?;
            Ok(())
        })
        .unwrap_err();
    println!("[sync]  transaction rolled back: {refused}");

    // A pipeline of ORM operations: one round trip, a typed tuple back.
    hello.title = "Hello, World Again".into();
    let (posts_by_ann, n_authors, _) = db.run(pipeline((
        Post::objects().filter(Post::AUTHOR_ID.eq(ann.id)).count(),
        Author::objects().count(),
        hello.save(),
    )))?;
    println!(
        "[sync]  pipeline: ann has {posts_by_ann} post(s), {n_authors} authors; hello is rev {}",
        hello.revision
    );
    for (author, posts) in db.run(authors_with_posts())? {
        println!(
            "[sync]  prefetched in one round trip: {} wrote {} post(s)",
            author.name,
            posts.len()
        );
    }

    // ---- tokio: the very same operations and hooks ----
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut db = duet_async::Client::connect(&url).await?;
        let bob = db.run(Author::objects().filter(Author::NAME.eq("bob")).get()).await?;
        db.atomic(async |tx| {
            tx.run(post(&bob, "Async and Sync Alike").into_save()).await?;
            tx.run(post(&bob, "One Engine").into_save()).await?;
            Ok(())
        })
        .await?;
        let bumped = db
            .run(
                Post::objects()
                    .filter(Post::TITLE.contains("Engine"))
                    .update()
                    .set(Post::REVISION, Post::REVISION + 10),
            )
            .await?;
        println!("[tokio] bumped {bumped} revision(s) with one UPDATE");
        for (author, posts) in db.run(authors_with_posts()).await? {
            let titles: Vec<String> = posts
                .iter()
                .map(|p| format!("{} (rev {})", p.slug, p.revision))
                .collect();
            println!("[tokio] {}: {}", author.name, titles.join(", "));
        }
        let audit = db
            .run(
                AuditEntry::objects()
                    .order_by(AuditEntry::ID)
                    .values(AuditEntry::MESSAGE),
            )
            .await?;
        println!("[tokio] audit log written by the hook from both drivers:");
        for line in audit {
            println!("          {line}");
        }
        db.run(pipeline((
            AuditEntry::drop_table(),
            Post::drop_table(),
            Author::drop_table(),
        )))
        .await?;
        Ok::<_, Error>(())
    })?;
    Ok(())
}
