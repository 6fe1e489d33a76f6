//! The ORM, written once over [`Operation`](crate::Operation): models,
//! query sets, writes with hooks, relations and raw SQL. Everything here
//! builds operations; either driver runs them.
//!
//! ```
//! use duet_core::orm::prelude::*;
//!
//! #[derive(Model, Debug)]
//! struct Author {
//!     #[duet(primary_key, auto)]
//!     id: i32,
//!     name: String,
//! }
//!
//! #[derive(Model, Debug)]
//! struct Book {
//!     #[duet(primary_key, auto)]
//!     id: i32,
//!     #[duet(references = Author, on_delete = "cascade")]
//!     author_id: i32,
//!     title: String,
//!     pages: Option<i32>,
//! }
//!
//! // Query sets are plain values until a driver runs them.
//! let long_books = Book::objects().filter(Book::PAGES.gt(500)).order_by(Book::TITLE);
//! let with_books = Author::objects().prefetch(Book::AUTHOR, long_books.clone());
//! // In a driver: client.run(with_books.all())? : Vec<(Author, Vec<Book>)>
//! # let _ = with_books;
//! assert!(long_books.to_sql().text.starts_with(r#"SELECT "books"."id""#));
//! ```

mod bulk_copy;
pub mod expr;
pub mod model;
pub mod partial;
pub mod queryset;
pub mod raw;
pub mod relation;
pub mod render;
pub mod write;

pub use expr::{
    avg, count, count_of, escape_like, length, max, min, not, sum, Col, Cond, Expr, IntoExpr, Order, Selection,
    SqlType, Typed, Value,
};
pub use model::{ColumnDef, HookCtx, Hooks, Key, KeyField, Model, ModelMeta, Positions};
pub use partial::{Only, Partial};
pub use queryset::{value, FetchOp, QuerySet, Update};
pub use raw::Raw;
pub use relation::{Fetch, FkField, ForeignKey, Grow, Joined, Prefetch, PrefetchMode, Shape};
pub use render::{Select, Sql};
pub use write::{BulkInsert, Columns, OnConflict};

/// `use duet_core::orm::prelude::*;` — the derive, the traits and the
/// builder functions.
pub mod prelude {
    pub use super::{
        avg, count, count_of, length, max, min, not, sum, value, Fetch, HookCtx, Hooks, Model, PrefetchMode, QuerySet,
    };
    pub use crate::ops::{atomic, pipeline};
    pub use crate::Error;
    pub use crate::FromRow;
    pub use duet_derive::{FromJoined, Model, PgEnum};
}
