//! Types duet is not built with — enums, composites, domains, ranges,
//! arrays of them, `hstore`, `citext` — looked up in the catalog the first
//! time a session meets them, so `postgres-types`' derives and its
//! by-name impls work as parameters, results and arrays, in both drivers.

use std::collections::HashMap;
use std::sync::OnceLock;

use duet_conformance::server::TestServer;
use duet_conformance::{conformance_tests, Driver};
use duet_core::orm::prelude::*;
use duet_core::{Error, FromRow};
use postgres_types::{FromSql, Kind, ToSql, Type};

#[derive(Debug, PartialEq, ToSql, FromSql)]
#[postgres(name = "duet_mood")]
enum Mood {
    #[postgres(name = "sad")]
    Sad,
    #[postgres(name = "ok")]
    Ok,
    #[postgres(name = "happy")]
    Happy,
}

#[derive(Debug, Clone, PartialEq, ToSql, FromSql)]
#[postgres(name = "duet_point")]
struct Point {
    x: i32,
    label: String,
}

#[derive(Debug, Clone, PartialEq, ToSql, FromSql)]
#[postgres(name = "duet_posint")]
struct PosInt(i32);

/// A range's bytes, taken as they come: postgres-types has no range type,
/// so this shows the column's type was found to be a range of float8.
struct RawRange(usize);

impl<'a> FromSql<'a> for RawRange {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawRange(raw.len()))
    }
    fn accepts(ty: &Type) -> bool {
        ty.name() == "duet_floatrange" && matches!(ty.kind(), Kind::Range(sub) if *sub == Type::FLOAT8)
    }
}

fn url() -> String {
    TestServer::shared().url()
}

/// The types and extensions, made once per test binary.
fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let mut c = duet_sync::Client::connect(&url()).unwrap();
        c.batch_execute(
            "CREATE EXTENSION IF NOT EXISTS hstore;
             CREATE EXTENSION IF NOT EXISTS citext;
             DROP TYPE IF EXISTS duet_mood, duet_point, duet_floatrange CASCADE;
             DROP DOMAIN IF EXISTS duet_posint CASCADE;
             CREATE TYPE duet_mood AS ENUM ('sad', 'ok', 'happy');
             CREATE TYPE duet_point AS (x int4, label text);
             CREATE DOMAIN duet_posint AS int4 CHECK (VALUE > 0);
             CREATE TYPE duet_floatrange AS RANGE (subtype = float8);",
        )
        .unwrap();
    });
}

fn results_of_types_not_built_in_decode<D: Driver>() {
    setup();
    // A new session: every type below is met for the first time in a result.
    let mut c = D::connect(&url()).unwrap();
    let row = c
        .query_one(
            "SELECT 'happy'::duet_mood, ARRAY['sad', 'ok']::duet_mood[], ROW(7, 'seven')::duet_point,
                    ARRAY[ROW(1, 'one')::duet_point], ARRAY[3, 4]::duet_posint[], '[1.5, 2.5)'::duet_floatrange,
                    'a => 1, b => NULL'::hstore, 'MiXeD'::citext",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<Mood>(0), Mood::Happy);
    assert_eq!(row.get::<Vec<Mood>>(1), vec![Mood::Sad, Mood::Ok]);
    assert_eq!(
        row.get::<Point>(2),
        Point {
            x: 7,
            label: "seven".into()
        }
    );
    assert_eq!(
        row.get::<Vec<Point>>(3),
        vec![Point {
            x: 1,
            label: "one".into()
        }]
    );
    assert_eq!(row.get::<Vec<PosInt>>(4), vec![PosInt(3), PosInt(4)]);
    assert!(row.get::<RawRange>(5).0 > 0);
    let hstore: HashMap<String, Option<String>> = row.get(6);
    assert_eq!(hstore.get("a"), Some(&Some("1".to_string())));
    assert_eq!(hstore.get("b"), Some(&None));
    assert_eq!(row.get::<String>(7), "MiXeD");
    assert_eq!(
        row.columns()[0].type_.kind(),
        &Kind::Enum(vec!["sad".into(), "ok".into(), "happy".into()])
    );
    // Known now: a second statement needs no lookup and gets the same types.
    let again = c.query_one("SELECT 'ok'::duet_mood", &[]).unwrap();
    assert_eq!(again.get::<Mood>(0), Mood::Ok);
}

fn parameters_of_types_not_built_in_encode<D: Driver>() {
    setup();
    let mut c = D::connect(&url()).unwrap();
    let row = c.query_one("SELECT $1::duet_mood::text", &[&Mood::Sad]).unwrap();
    assert_eq!(row.get::<String>(0), "sad");
    let p = Point {
        x: 2,
        label: "two".into(),
    };
    let row = c.query_one("SELECT ($1::duet_point).label", &[&p]).unwrap();
    assert_eq!(row.get::<String>(0), "two");
    let moods = vec![Mood::Happy, Mood::Ok];
    let row = c
        .query_one("SELECT array_length($1::duet_mood[], 1)", &[&moods])
        .unwrap();
    assert_eq!(row.get::<i32>(0), 2);
    let row = c.query_one("SELECT $1::duet_posint + 1", &[&PosInt(41)]).unwrap();
    assert_eq!(row.get::<i32>(0), 42);
    let mut h: HashMap<String, Option<String>> = HashMap::new();
    h.insert("k".into(), Some("v".into()));
    let row = c.query_one("SELECT $1::hstore -> 'k'", &[&h]).unwrap();
    assert_eq!(row.get::<String>(0), "v");
    let row = c.query_one("SELECT $1::citext = 'HELLO'::citext", &[&"hello"]).unwrap();
    assert!(row.get::<bool>(0));
    // Round trip through a table.
    let table = format!("duet_typed_{}", D::NAME);
    c.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (m duet_mood, p duet_point, ms duet_mood[])"
    ))
    .unwrap();
    c.execute(
        &format!("INSERT INTO {table} VALUES ($1, $2, $3)"),
        &[&Mood::Happy, &p, &moods],
    )
    .unwrap();
    let row = c.query_one(&format!("SELECT m, p, ms FROM {table}"), &[]).unwrap();
    assert_eq!(row.get::<Mood>(0), Mood::Happy);
    assert_eq!(row.get::<Point>(1), p);
    assert_eq!(row.get::<Vec<Mood>>(2), moods);
    // A value the domain refuses is the server's error, not a panic.
    let e = c.query_one("SELECT $1::duet_posint", &[&PosInt(-1)]).unwrap_err();
    assert_eq!(e.code(), Some("23514"), "{e}");
}

fn a_type_created_again_is_looked_up_afresh<D: Driver>() {
    setup();
    let name = format!("duet_again_{}", D::NAME);
    let mut c = D::connect(&url()).unwrap();
    c.batch_execute(&format!("DROP TYPE IF EXISTS {name}; CREATE TYPE {name} AS ENUM ('a')"))
        .unwrap();
    let row = c.query_one(&format!("SELECT 'a'::{name}"), &[]).unwrap();
    assert_eq!(row.columns()[0].type_.kind(), &Kind::Enum(vec!["a".into()]));
    c.batch_execute(&format!("DROP TYPE {name}; CREATE TYPE {name} AS ENUM ('x', 'y')"))
        .unwrap();
    let row = c.query_one(&format!("SELECT 'y'::{name}"), &[]).unwrap();
    assert_eq!(
        row.columns()[0].type_.kind(),
        &Kind::Enum(vec!["x".into(), "y".into()]),
        "a new OID: looked up again, not served from the session's cache"
    );
}

fn rows_streamed_wait_for_their_types<D: Driver>() {
    setup();
    let mut c = D::connect(&url()).unwrap();
    let mut seen = Vec::new();
    let n = c
        .run(
            duet_core::ops::query(
                "SELECT (ARRAY['sad','ok','happy']::duet_mood[])[1 + g % 3] FROM generate_series(0, 2999) g",
                &[],
            )
            .for_each(|row| {
                seen.push(row.try_get::<Mood>(0)?);
                Ok(())
            }),
        )
        .unwrap();
    assert_eq!(n, 3000);
    assert_eq!(seen.len(), 3000);
    assert_eq!(seen[1], Mood::Ok);
    // A type that is not there to find: a clear decode error, never a panic.
    let e: Error = c
        .query_one("SELECT 1::int4", &[])
        .unwrap()
        .try_get::<Mood>(0)
        .unwrap_err();
    assert!(
        e.to_string().contains("duet_mood") || e.to_string().contains("int4"),
        "{e}"
    );
}

#[derive(Debug, PartialEq, ToSql, FromSql)]
#[postgres(name = "duet_again")]
enum Again {
    #[postgres(name = "x")]
    X,
    #[postgres(name = "y")]
    Y,
}

fn a_parameter_type_created_again_is_not_sent_by_its_old_oid<D: Driver>() {
    setup();
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = D::connect(&url()).unwrap();
    for round in 0..3 {
        c.batch_execute("DROP TYPE IF EXISTS duet_again; CREATE TYPE duet_again AS ENUM ('x', 'y')")
            .unwrap();
        for _ in 0..2 {
            let row = c
                .query_one("SELECT $1::duet_again::text", &[&Again::Y])
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(row.get::<String>(0), "y");
        }
        // Created again by another session: this one never sees the DDL.
        let mut other = duet_sync::Client::connect(&url()).unwrap();
        other
            .batch_execute("DROP TYPE duet_again; CREATE TYPE duet_again AS ENUM ('x', 'y')")
            .unwrap();
        let row = c
            .query_one("SELECT $1::duet_again::text", &[&Again::X])
            .unwrap_or_else(|e| panic!("round {round}, after another session's DDL: {e}"));
        assert_eq!(row.get::<String>(0), "x");
    }
}

#[derive(Debug, PartialEq, ToSql, FromSql)]
#[postgres(name = "duet_grown")]
enum GrownBefore {
    #[postgres(name = "a")]
    A,
}

#[derive(Debug, PartialEq, ToSql, FromSql)]
#[postgres(name = "duet_grown")]
enum GrownAfter {
    #[postgres(name = "a")]
    A,
    #[postgres(name = "b")]
    B,
}

#[derive(Debug, PartialEq, ToSql, FromSql)]
#[postgres(name = "duet_grown")]
enum GrownMore {
    #[postgres(name = "a")]
    A,
    #[postgres(name = "b")]
    B,
    #[postgres(name = "c")]
    C,
}

fn an_enum_given_a_label_elsewhere_is_looked_up_again<D: Driver>() {
    setup();
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let mut admin = duet_sync::Client::connect(&url()).unwrap();
    admin
        .batch_execute("DROP TYPE IF EXISTS duet_grown; CREATE TYPE duet_grown AS ENUM ('a')")
        .unwrap();
    let mut c = D::connect(&url()).unwrap();
    let sql = "SELECT $1::duet_grown::text";
    assert_eq!(c.query_one(sql, &[&GrownBefore::A]).unwrap().get::<String>(0), "a");
    // Same OID, one more label: the session's copy is stale.
    admin.batch_execute("ALTER TYPE duet_grown ADD VALUE 'b'").unwrap();
    // A value the stale copy refuses: the statement describes again and
    // the type is looked up afresh, within the one call.
    assert_eq!(c.query_one(sql, &[&GrownAfter::B]).unwrap().get::<String>(0), "b");
    let row = c.query_one("SELECT 'b'::duet_grown", &[]).unwrap();
    assert_eq!(row.get::<GrownAfter>(0), GrownAfter::B);
    // A result of the stale copy: refused once, known afresh after.
    admin.batch_execute("ALTER TYPE duet_grown ADD VALUE 'c'").unwrap();
    let row = c.query_one("SELECT 'c'::duet_grown", &[]).unwrap();
    let e = row.try_get::<GrownMore>(0).unwrap_err();
    assert!(e.to_string().contains("duet_grown"), "{e}");
    let row = c.query_one("SELECT 'c'::duet_grown", &[]).unwrap();
    assert_eq!(row.get::<GrownMore>(0), GrownMore::C);
}

fn forgetting_types_looks_them_up_again<D: Driver>() {
    setup();
    let mut c = D::connect(&url()).unwrap();
    let before = c.query_one("SELECT 'ok'::duet_mood", &[]).unwrap();
    assert_eq!(before.get::<Mood>(0), Mood::Ok);
    c.forget_types();
    let after = c.query_one("SELECT 'happy'::duet_mood", &[]).unwrap();
    assert_eq!(after.get::<Mood>(0), Mood::Happy);
    assert_eq!(after.columns()[0].type_, before.columns()[0].type_);
}

#[derive(Debug, Clone, Copy, PartialEq, ToSql, FromSql, PgEnum)]
#[postgres(name = "duet_device_kind")]
enum DeviceKind {
    #[postgres(name = "phone")]
    Phone,
    #[postgres(name = "laptop")]
    Laptop,
}

#[derive(Model, Debug, Clone, PartialEq)]
#[duet(table = "devices")]
struct Device {
    #[duet(primary_key, auto)]
    id: i32,
    kind: DeviceKind,
    spare: Option<DeviceKind>,
    #[duet(sql_type = "inet")]
    addr: std::net::IpAddr,
    #[duet(sql_type = "hstore")]
    labels: HashMap<String, Option<String>>,
}

fn model_fields_of_any_sql_type<D: Driver>() {
    setup();
    let schema = format!("duet_types_orm_{}", D::NAME);
    let mut c = D::connect(&url()).unwrap();
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path TO {schema}, public"
    ))
    .unwrap();
    // The enum's type is created with the table, and again is harmless.
    c.run(Device::create_table()).unwrap();
    c.run(Device::create_table()).unwrap();
    let made = c
        .query_one(
            "SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE t.typname = 'duet_device_kind' AND n.nspname = $1",
            &[&schema],
        )
        .unwrap();
    assert_eq!(made.get::<i64>(0), 1);
    let mut phone = Device {
        id: 0,
        kind: DeviceKind::Phone,
        spare: None,
        addr: "10.0.0.7".parse().unwrap(),
        labels: HashMap::from([("owner".to_string(), Some("ann".to_string()))]),
    };
    let mut laptop = Device {
        id: 0,
        kind: DeviceKind::Laptop,
        spare: Some(DeviceKind::Phone),
        addr: "::1".parse().unwrap(),
        labels: HashMap::new(),
    };
    c.run(phone.save()).unwrap();
    c.run(laptop.save()).unwrap();
    let phones = c
        .run(Device::objects().filter(Device::KIND.eq(DeviceKind::Phone)).all())
        .unwrap();
    assert_eq!(phones, vec![phone.clone()]);
    let with_spare = c
        .run(Device::objects().filter(Device::SPARE.eq(DeviceKind::Phone)).all())
        .unwrap();
    assert_eq!(with_spare, vec![laptop.clone()]);
    let by_addr = c
        .run(
            Device::objects()
                .filter(Device::ADDR.eq("::1".parse::<std::net::IpAddr>().unwrap()))
                .count(),
        )
        .unwrap();
    assert_eq!(by_addr, 1);
    let all = c.run(Device::objects().order_by(Device::ID).all()).unwrap();
    assert_eq!(all, vec![phone.clone(), laptop]);
    // A partial view of the model, by column name.
    let views = c
        .run(
            Device::objects()
                .filter(Device::KIND.eq(DeviceKind::Phone))
                .all_as::<DeviceView>(),
        )
        .unwrap();
    assert_eq!(
        views,
        vec![DeviceView {
            id: phone.id,
            kind: DeviceKind::Phone
        }]
    );
}

/// `[lo, hi)` of `duet_floatrange`, in the range binary format (a flags
/// byte, then each bound as a length and its float8).
#[derive(Debug, Clone, PartialEq)]
struct FloatRange(f64, f64);

impl ToSql for FloatRange {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres_types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[0x02]); // lower bound inclusive
        for b in [self.0, self.1] {
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&b.to_be_bytes());
        }
        Ok(postgres_types::IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        <RawRange as FromSql>::accepts(ty)
    }
    postgres_types::to_sql_checked!();
}

impl<'a> FromSql<'a> for FloatRange {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        if raw.len() != 25 || raw[0] != 0x02 {
            return Err(format!("not a [lo, hi) range: {raw:?}").into());
        }
        let f = |at: usize| f64::from_be_bytes(raw[at..at + 8].try_into().unwrap());
        Ok(FloatRange(f(5), f(17)))
    }
    fn accepts(ty: &Type) -> bool {
        <RawRange as FromSql>::accepts(ty)
    }
}

/// Fields of the remaining kinds: a composite, a domain and an array of
/// it, a range, `citext`.
#[derive(Model, Debug, Clone, PartialEq)]
#[duet(table = "shelves")]
struct Shelf {
    #[duet(primary_key, auto)]
    id: i32,
    #[duet(sql_type = "duet_point")]
    spot: Point,
    #[duet(sql_type = "duet_posint")]
    height: PosInt,
    #[duet(sql_type = "duet_posint[]")]
    heights: Vec<PosInt>,
    #[duet(sql_type = "duet_floatrange")]
    span: FloatRange,
    #[duet(sql_type = "citext")]
    label: String,
}

fn model_fields_of_composites_domains_ranges_and_citext<D: Driver>() {
    setup();
    let schema = format!("duet_types_shelf_{}", D::NAME);
    let mut c = D::connect(&url()).unwrap();
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path TO {schema}, public"
    ))
    .unwrap();
    c.run(Shelf::create_table()).unwrap();
    let shelf = |x: i32, label: &str| Shelf {
        id: 0,
        spot: Point {
            x,
            label: format!("p{x}"),
        },
        height: PosInt(x + 1),
        heights: vec![PosInt(1), PosInt(x + 2)],
        span: FloatRange(0.5, x as f64 + 0.5),
        label: label.into(),
    };
    let mut a = shelf(1, "Top");
    let mut b = shelf(2, "bottom");
    c.run(a.save()).unwrap();
    c.run(b.save()).unwrap();
    let all = c.run(Shelf::objects().order_by(Shelf::ID).all()).unwrap();
    assert_eq!(all, vec![a.clone(), b.clone()]);
    // Filters: citext compares without case; a composite and a range by value.
    let top = c
        .run(Shelf::objects().filter(Shelf::LABEL.eq("TOP".to_string())).get())
        .unwrap();
    assert_eq!(top, a);
    let at = c
        .run(
            Shelf::objects()
                .filter(Shelf::SPOT.eq(Point {
                    x: 2,
                    label: "p2".into(),
                }))
                .get(),
        )
        .unwrap();
    assert_eq!(at, b);
    let spans = c
        .run(Shelf::objects().filter(Shelf::SPAN.eq(FloatRange(0.5, 1.5))).count())
        .unwrap();
    assert_eq!(spans, 1);
    // The domain's check is the server's.
    let mut bad = shelf(3, "x");
    bad.height = PosInt(-1);
    let err = c.run(bad.save()).unwrap_err();
    assert_eq!(err.code(), Some("23514"), "{err}");
    // Many at once, by COPY: the looked-up types encode in binary.
    let many: Vec<Shelf> = (10..1_010).map(|i| shelf(i, &format!("s{i}"))).collect();
    assert_eq!(c.run(Shelf::bulk_insert(many).execute()).unwrap(), 1_000);
    let got = c
        .run(Shelf::objects().filter(Shelf::LABEL.eq("S500".to_string())).get())
        .unwrap();
    assert_eq!(
        (got.spot.x, got.span.clone(), got.heights.clone()),
        (500, FloatRange(0.5, 500.5), vec![PosInt(1), PosInt(502)])
    );
}

#[derive(FromRow, Debug, PartialEq)]
struct DeviceView {
    id: i32,
    kind: DeviceKind,
}

#[derive(FromRow, Debug, PartialEq)]
struct Report {
    name: String,
    #[duet(column = "n")]
    count: i64,
    mood: Option<Mood>,
}

fn tuples_by_position_and_a_row_that_cannot_decode<D: Driver>() {
    let mut c = D::connect(&url()).unwrap();
    let rows = c
        .run(
            duet_core::ops::query(
                "SELECT i, 'n' || i, i::float8 / 2 FROM generate_series(1, 20000) i",
                &[],
            )
            .rows_as::<(i32, String, f64)>(),
        )
        .unwrap();
    assert_eq!(rows.len(), 20_000);
    assert_eq!(rows[19_999], (20_000, "n20000".to_string(), 10_000.0));
    let err = c
        .run(duet_core::ops::query("SELECT 1, 2", &[]).rows_as::<(i32,)>())
        .unwrap_err();
    assert!(err.to_string().contains("2 columns cannot be a tuple of 1"), "{err}");
    // Row 15,000 has a NULL the tuple cannot hold: the error names the
    // column, the rows after it are dropped, the connection goes on.
    let err = c
        .run(
            duet_core::ops::query(
                "SELECT i, CASE WHEN i = 15000 THEN NULL ELSE i END FROM generate_series(1, 30000) i",
                &[],
            )
            .rows_as::<(i32, i32)>(),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("column 1") && err.to_string().contains("NULL"),
        "{err}"
    );
    duet_conformance::assert_usable(&mut c);
}

fn rows_become_structs_by_column_name<D: Driver>() {
    setup();
    let mut c = D::connect(&url()).unwrap();
    let reports = c
        .run(
            duet_core::ops::query(
                "SELECT 1 AS extra, 'ann' AS name, 3::int8 AS n, 'happy'::duet_mood AS mood
                 UNION ALL SELECT 2, 'bob', 0, NULL ORDER BY extra",
                &[],
            )
            .rows_as::<Report>(),
        )
        .unwrap();
    assert_eq!(
        reports,
        vec![
            Report {
                name: "ann".into(),
                count: 3,
                mood: Some(Mood::Happy)
            },
            Report {
                name: "bob".into(),
                count: 0,
                mood: None
            },
        ]
    );
    let one = c
        .run(
            duet_core::ops::query("SELECT 'cy' AS name, 1::int8 AS n, NULL::duet_mood AS mood", &[]).one_as::<Report>(),
        )
        .unwrap();
    assert_eq!(one.name, "cy");
    // A column the struct needs and the row lacks: named in the error.
    let e = c
        .run(duet_core::ops::query("SELECT 'dee' AS name, NULL::duet_mood AS mood", &[]).rows_as::<Report>())
        .unwrap_err();
    assert!(e.to_string().contains("no column n"), "{e}");
    // NULL into a field that cannot hold it: an error, not a panic.
    let e = c
        .run(
            duet_core::ops::query("SELECT NULL::text AS name, 1::int8 AS n, NULL::duet_mood AS mood", &[])
                .rows_as::<Report>(),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Decode(_)), "{e:?}");
}

conformance_tests!(
    rows_become_structs_by_column_name,
    model_fields_of_any_sql_type,
    tuples_by_position_and_a_row_that_cannot_decode,
    model_fields_of_composites_domains_ranges_and_citext,
    forgetting_types_looks_them_up_again,
    an_enum_given_a_label_elsewhere_is_looked_up_again,
    a_parameter_type_created_again_is_not_sent_by_its_old_oid,
    results_of_types_not_built_in_decode,
    parameters_of_types_not_built_in_encode,
    a_type_created_again_is_looked_up_afresh,
    rows_streamed_wait_for_their_types,
);
