//! Types the server knows and duet is not built with — enums, composites,
//! domains, ranges, arrays of them, extension types (`hstore`, `citext`) —
//! looked up in `pg_catalog` the first time a session meets their OID, so
//! that `postgres-types`' derives and extension crates, which accept a type
//! by name and kind, work unchanged.
//!
//! A statement whose description names an OID the session does not know
//! gets its answer as usual (rows included); the session then sends one
//! lookup for every unknown OID and what they are built from (a recursive
//! query: an array's element, a domain's base, a range's subtype, a
//! composite's fields), and hands the result out only once the types are
//! in, with its columns (or a prepared statement's parameters) retyped. The
//! types are kept for the session: an OID names one type until it is
//! dropped, and a type created again gets a new OID, so it is looked up
//! afresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use postgres_types::{Field, Kind, Type};

use super::{Connection, Response, Ticket};
use crate::params::{self, Param};
use crate::row::{maybe_learnt, Column, Row};
use crate::Error;

/// Every type the OIDs in `$1` are built from, with what a `Type` needs.
const LOOKUP: &str = "WITH RECURSIVE wanted(oid) AS ( \
    SELECT unnest($1::pg_catalog.oid[]) \
  UNION \
    SELECT d.dep FROM wanted w \
    JOIN pg_catalog.pg_type t ON t.oid = w.oid \
    CROSS JOIN LATERAL ( \
        SELECT t.typelem UNION ALL SELECT t.typbasetype \
        UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r WHERE r.rngtypid = t.oid \
        UNION ALL SELECT a.atttypid FROM pg_catalog.pg_attribute a \
            WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped \
    ) AS d(dep) \
    WHERE d.dep <> 0 \
) \
SELECT t.oid, t.typname::text, n.nspname::text, t.typtype::text, \
    t.typelem <> 0 AND t.typlen = -1, t.typelem, t.typbasetype, r.rngsubtype, \
    ARRAY(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder), \
    ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
        WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum), \
    ARRAY(SELECT a.atttypid FROM pg_catalog.pg_attribute a \
        WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) \
FROM wanted w \
JOIN pg_catalog.pg_type t ON t.oid = w.oid \
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
LEFT JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid";

/// What the session knows and waits for.
#[derive(Default)]
pub(super) struct Types {
    /// Types looked up on this session, by OID.
    known: HashMap<u32, Type>,
    /// The same, in the order learnt: offered to parameter inference.
    learned: Vec<Type>,
    /// Raised when a learnt type was refused (a value of it by a `ToSql`,
    /// a column of it by a `FromSql`): it may have changed since (an enum
    /// given a label keeps its OID), so everything learnt is forgotten
    /// before the next request.
    stale: Arc<AtomicBool>,
    /// OIDs met and not yet asked about.
    wanted: Vec<u32>,
    /// The lookup in flight, and the OIDs it asks about.
    lookup: Option<(Ticket, Vec<u32>)>,
    /// Requests whose results wait for the lookup.
    typing: Vec<Ticket>,
    /// Their results, complete but for their types.
    held: Vec<(Ticket, Result<Response, Error>)>,
}

/// One row of the lookup.
struct Info {
    name: String,
    schema: String,
    typtype: String,
    is_array: bool,
    elem: u32,
    base: u32,
    range_of: Option<u32>,
    labels: Vec<String>,
    field_names: Vec<String>,
    field_types: Vec<u32>,
}

impl Types {
    /// The `Type` of `oid`: built in, or looked up earlier on this session.
    pub(super) fn known(&self, oid: u32) -> Option<Type> {
        Type::from_oid(oid).or_else(|| self.known.get(&oid).cloned())
    }

    /// A column's or parameter's type: known, or a placeholder (see
    /// [`crate::type_from_oid`]) and the OID noted in `unknown`.
    pub(super) fn or_note(&self, oid: u32, unknown: &mut Vec<u32>) -> Type {
        match self.known(oid) {
            Some(t) => t,
            None => {
                if !unknown.contains(&oid) {
                    unknown.push(oid);
                }
                crate::row::type_from_oid(oid)
            }
        }
    }

    /// Request `t`'s description named types the session does not know:
    /// its result waits until they are looked up.
    pub(super) fn await_types(&mut self, t: Ticket, oids: Vec<u32>) {
        if !self.typing.contains(&t) {
            self.typing.push(t);
        }
        for oid in oids {
            let asked = self.lookup.as_ref().is_some_and(|(_, o)| o.contains(&oid));
            if !asked && !self.wanted.contains(&oid) {
                self.wanted.push(oid);
            }
        }
    }

    /// Forgets a type the server dropped, and the types built on it.
    fn forget(&mut self, oid: u32) {
        let built_on = |t: &Type| match t.kind() {
            Kind::Array(e) | Kind::Domain(e) | Kind::Range(e) => e.oid() == oid,
            Kind::Composite(fields) => fields.iter().any(|f| f.type_().oid() == oid),
            _ => false,
        };
        self.learned.retain(|t| t.oid() != oid && !built_on(t));
        self.known.retain(|o, t| *o != oid && !built_on(t));
    }

    /// The flag rows of `columns` raise when a learnt type is refused;
    /// `None` when they have only built-in types.
    pub(super) fn watch(&self, columns: &[Column]) -> Option<Arc<AtomicBool>> {
        columns
            .iter()
            .any(|c| maybe_learnt(&c.type_))
            .then(|| self.stale.clone())
    }

    pub(super) fn learned(&self) -> &[Type] {
        &self.learned
    }

    /// Whether `t`'s result waits for types (its rows are not handed out
    /// early: they would decode with placeholders).
    pub(super) fn is_typing(&self, t: Ticket) -> bool {
        self.typing.contains(&t)
    }
}

impl Connection {
    /// Forgets every type the session looked up, and the cached statements'
    /// columns of such types (they describe again), if a learnt type was
    /// refused since the last request.
    pub(super) fn forget_stale_types(&mut self) {
        // A plain load first: this runs before every request.
        if self.types.stale.load(Ordering::Relaxed) && self.types.stale.swap(false, Ordering::Relaxed) {
            self.forget_types();
        }
    }

    /// Forgets every type this session looked up: they are looked up
    /// afresh when next met. What to call after another session changed a
    /// type in place (`ALTER TYPE … ADD VALUE` keeps its OID); a learnt
    /// type that a `FromSql` or `ToSql` refuses does it by itself before
    /// the next request.
    pub fn forget_types(&mut self) {
        self.types.known.clear();
        self.types.learned.clear();
        self.cache.forget_columns(|c| maybe_learnt(&c.type_));
    }

    /// Marks the learnt types stale (see [`Connection::forget_types`]).
    pub(crate) fn learnt_type_refused(&self) {
        self.types.stale.store(true, Ordering::Relaxed);
    }

    /// A type the server says it no longer has (see
    /// [`Error::dropped_type`]): looked up again when next met.
    pub fn forget_type(&mut self, oid: u32) {
        self.types.forget(oid);
    }

    fn known_type(&self, oid: u32) -> Option<Type> {
        self.types.known(oid)
    }

    /// Sends the lookup for the OIDs met so far, unless one is in flight or
    /// a sync group is being built (a request of ours in it would end it).
    #[inline]
    pub(super) fn send_type_lookup(&mut self) {
        if !self.types.wanted.is_empty() {
            self.send_type_lookup_now();
        }
    }

    fn send_type_lookup_now(&mut self) {
        if self.types.lookup.is_some() || self.in_batch() || self.unsynced || self.copy_in.is_some() {
            return;
        }
        if !matches!(self.phase, super::Phase::Ready) {
            return;
        }
        let oids = std::mem::take(&mut self.types.wanted);
        let param: Param<'_> = &oids;
        let enc = match params::encode_typed(&[param], &[Type::OID_ARRAY]) {
            Ok(e) => e,
            Err(e) => return self.types_arrived(Err(e)),
        };
        // Not a statement of the transaction: it must not carry the
        // transaction-id probe meant for the next one.
        let probe = std::mem::replace(&mut self.probe_next, false);
        let submitted = self.submit_encoded(LOOKUP, enc, None, self.now);
        self.probe_next = probe;
        match submitted {
            Ok(t) => self.types.lookup = Some((t, oids)),
            Err(e) => self.types_arrived(Err(e)),
        }
    }

    /// Called where every request ends: the lookup's own answer is taken,
    /// and a result that waits for types is held. `None` when `r` was
    /// taken.
    /// Whether any request waits for types (the lookup's answer included):
    /// the common case, no, is one test.
    #[inline]
    pub(super) fn typing_anything(&self) -> bool {
        self.types.lookup.is_some() || !self.types.typing.is_empty()
    }

    pub(super) fn hold_for_types(&mut self, t: Ticket, r: Result<Response, Error>) -> Option<Result<Response, Error>> {
        if self.types.lookup.as_ref().is_some_and(|(l, _)| *l == t) {
            self.types_arrived(r);
            return None;
        }
        let Some(i) = self.types.typing.iter().position(|x| *x == t) else {
            return Some(r);
        };
        self.types.typing.swap_remove(i);
        if r.is_err() {
            return Some(r);
        }
        self.types.held.push((t, r));
        None
    }

    /// A request the caller gave up on no longer waits for types.
    pub(super) fn forget_typing(&mut self, t: Ticket) {
        self.types.typing.retain(|x| *x != t);
        self.types.held.retain(|(x, _)| *x != t);
    }

    /// The lookup's answer: the types are learnt and the held results
    /// retyped and released (or failed, naming the OIDs, when the lookup
    /// failed).
    fn types_arrived(&mut self, r: Result<Response, Error>) {
        let asked = self.types.lookup.take().map(|(_, o)| o).unwrap_or_default();
        let learnt = match r {
            Ok(Response::Rows(q)) => self.learn_types(&q.rows),
            Ok(_) => Err(Error::protocol("internal: the type lookup gave no rows")),
            Err(e) => Err(e),
        };
        if let Err(e) = learnt {
            let e = Error::Decode(format!("looking up the types of OIDs {asked:?} failed: {e}").into());
            for (t, _) in std::mem::take(&mut self.types.held) {
                self.done.insert(t, Err(e.clone()));
            }
            return;
        }
        if !self.types.wanted.is_empty() {
            // Met while this lookup was in flight: the held results may
            // need them too.
            return;
        }
        for (t, r) in std::mem::take(&mut self.types.held) {
            let r = r.map(|resp| self.retype(resp));
            self.done.insert(t, r);
        }
    }

    /// The connection failed: held results fail with it.
    pub(super) fn fail_held_types(&mut self, e: &Error) {
        self.types.lookup = None;
        self.types.wanted.clear();
        self.types.typing.clear();
        for (t, _) in std::mem::take(&mut self.types.held) {
            self.done.insert(t, Err(e.clone()));
        }
    }

    fn learn_types(&mut self, rows: &[Row]) -> Result<(), Error> {
        let mut infos = HashMap::new();
        for row in rows {
            let oid: u32 = row.try_get(0)?;
            infos.insert(
                oid,
                Info {
                    name: row.try_get(1)?,
                    schema: row.try_get(2)?,
                    typtype: row.try_get(3)?,
                    is_array: row.try_get(4)?,
                    elem: row.try_get(5)?,
                    base: row.try_get(6)?,
                    range_of: row.try_get(7)?,
                    labels: row.try_get(8)?,
                    field_names: row.try_get(9)?,
                    field_types: row.try_get(10)?,
                },
            );
        }
        let oids: Vec<u32> = infos.keys().copied().collect();
        for oid in oids {
            self.build_type(oid, &infos, 0);
        }
        Ok(())
    }

    /// The `Type` of `oid`, building the types it is made of first.
    fn build_type(&mut self, oid: u32, infos: &HashMap<u32, Info>, depth: u32) -> Option<Type> {
        if let Some(t) = self.known_type(oid) {
            return Some(t);
        }
        // Types nest only as deep as the catalog allows; a cycle would be a
        // catalog this code misread.
        if depth > 32 {
            return None;
        }
        let info = infos.get(&oid)?;
        let inner = |o: u32, conn: &mut Connection| {
            conn.build_type(o, infos, depth + 1)
                .unwrap_or_else(|| crate::row::type_from_oid(o))
        };
        let kind = match info.typtype.as_str() {
            "e" => Kind::Enum(info.labels.clone()),
            "p" => Kind::Pseudo,
            _ if info.base != 0 => Kind::Domain(inner(info.base, self)),
            _ if info.is_array => Kind::Array(inner(info.elem, self)),
            "c" => Kind::Composite(
                info.field_names
                    .iter()
                    .zip(&info.field_types)
                    .map(|(n, t)| Field::new(n.clone(), inner(*t, self)))
                    .collect(),
            ),
            "r" => match info.range_of {
                Some(sub) => Kind::Range(inner(sub, self)),
                None => Kind::Simple,
            },
            _ => Kind::Simple,
        };
        let t = Type::new(info.name.clone(), oid, kind, info.schema.clone());
        self.types.known.insert(oid, t.clone());
        if !matches!(t.kind(), Kind::Pseudo) {
            self.types.learned.push(t.clone());
        }
        Some(t)
    }

    /// A held result with its types filled in.
    fn retype(&self, r: Response) -> Response {
        match r {
            Response::Rows(mut q) => {
                let columns = self.retype_columns(&q.columns);
                Row::set_columns(&mut q.rows, &columns);
                q.columns = columns;
                Response::Rows(q)
            }
            Response::Prepared(mut stmt) => {
                let columns = self.retype_columns(&stmt.0.columns);
                let params: Vec<Type> = stmt
                    .0
                    .params
                    .iter()
                    .map(|t| self.known_type(t.oid()).unwrap_or_else(|| t.clone()))
                    .collect();
                // Just made, so not shared yet.
                if let Some(inner) = Arc::get_mut(&mut stmt.0) {
                    inner.columns = columns;
                    inner.params = params;
                }
                Response::Prepared(stmt)
            }
            Response::Portal(p) => {
                let columns = self.retype_columns(&p.0.columns);
                Response::Portal(super::Portal(Arc::new(super::PortalInner {
                    name: p.0.name.clone(),
                    sql: p.0.sql.clone(),
                    columns,
                })))
            }
            other => other,
        }
    }

    fn retype_columns(&self, columns: &Arc<[Column]>) -> Arc<[Column]> {
        columns
            .iter()
            .map(|c| Column {
                type_: self.known_type(c.type_.oid()).unwrap_or_else(|| c.type_.clone()),
                ..c.clone()
            })
            .collect()
    }
}
