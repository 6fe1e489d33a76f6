//! The duet tour: the same engine driven from blocking code and from tokio.
//! Starts a throwaway PostgreSQL unless DATABASE_URL is set.
//!
//!     cargo run -p duet-conformance --example tour

use duet_conformance::server::TestServer;
use duet_core::ops::{atomic, pipeline, query};
use duet_core::{Operation, Param};

/// One operation, built once, run by either driver: a transfer in a
/// transaction (BEGIN, both updates and COMMIT go out in one round trip).
fn transfer<'a>(debit: &'a [Param<'a>], credit: &'a [Param<'a>]) -> impl Operation<Output = (u64, u64)> + Send + 'a {
    atomic(pipeline((
        query("UPDATE tour_accounts SET balance = balance - $2 WHERE id = $1", debit).affected(),
        query("UPDATE tour_accounts SET balance = balance + $2 WHERE id = $1", credit).affected(),
    )))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = TestServer::start()?;
    let url = server.url();
    println!("server: {}", url.split('@').next_back().unwrap_or(&url));

    // ---- blocking ----
    let mut db = duet_sync::Client::connect(&url)?;
    db.batch_execute(
        "DROP TABLE IF EXISTS tour_accounts;
         CREATE TABLE tour_accounts (id int4 PRIMARY KEY, owner text NOT NULL, balance int8 NOT NULL CHECK (balance >= 0));
         INSERT INTO tour_accounts VALUES (1, 'ann', 100), (2, 'bob', 20);",
    )?;
    let row = db.query_one("SELECT owner, balance FROM tour_accounts WHERE id = $1", &[&1i32])?;
    println!(
        "[sync]  typed query: {} has {}",
        row.get::<&str>("owner"),
        row.get::<i64>("balance")
    );

    let (one, two): ([Param; 1], [Param; 1]) = ([&1i32], [&2i32]);
    let (a, b) = db.pipeline((
        query("SELECT balance FROM tour_accounts WHERE id = $1", &one).one(),
        query("SELECT balance FROM tour_accounts WHERE id = $1", &two).one(),
    ))?;
    println!(
        "[sync]  pipeline, one round trip: {} and {}",
        a.get::<i64>(0),
        b.get::<i64>(0)
    );

    let (debit, credit): ([Param; 2], [Param; 2]) = ([&1i32, &30i64], [&2i32, &30i64]);
    db.run(transfer(&debit, &credit))?;
    let (debit, credit): ([Param; 2], [Param; 2]) = ([&2i32, &1000i64], [&1i32, &1000i64]);
    let refused = db.run(transfer(&debit, &credit)).unwrap_err();
    println!("[sync]  transaction rolled back: {refused}");

    // ---- tokio: the very same operations ----
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut db = duet_async::Client::connect(&url).await?;
        let (debit, credit): ([Param; 2], [Param; 2]) = ([&2i32, &10i64], [&1i32, &10i64]);
        db.run(transfer(&debit, &credit)).await?;
        let rows = db
            .query("SELECT owner, balance FROM tour_accounts ORDER BY id", &[])
            .await?;
        for r in &rows {
            println!("[tokio] {} now has {}", r.get::<&str>(0), r.get::<i64>(1));
        }
        db.batch_execute("DROP TABLE tour_accounts").await?;
        Ok::<_, duet_core::Error>(())
    })?;
    Ok(())
}
