//! Parameter encoding. The point of this module is the one-round-trip first
//! execution: the `Parse` message carries parameter type OIDs taken from the
//! Rust values, so nothing has to be described before it is executed.
//!
//! `&dyn ToSql` cannot be asked its type directly (`accepts` is a static
//! method), so a value is offered candidate types in order of how common they
//! are; the first it accepts is used, and the encoding from that attempt is
//! the one sent. Strings are sent as untyped text (OID 0, text format): the
//! server then infers the type from the statement, exactly as it does for a
//! libpq literal, so a `&str` can feed a `text`, `varchar`, `numeric`,
//! `uuid` or `jsonb` column alike. A value none of the candidates fits (an
//! enum or composite type of the application's) makes the statement fall
//! back to describing first, which costs one more round trip.

use bytes::{BufMut, BytesMut};
use postgres_types::{Format, IsNull, ToSql, Type};

use crate::Error;

/// A parameter, as the statements' callers pass it.
pub type Param<'a> = &'a (dyn ToSql + Sync);

/// Values a statement owns and lends out as its parameters each time it is
/// encoded: the ORM's bulk insert hands its models to the statement whole
/// instead of cloning every field into a boxed [`Value`](crate::orm::Value).
pub trait ParamSource: Send + Sync {
    /// The parameters, in `$1, $2, …` order.
    fn params(&self) -> Vec<Param<'_>>;
}

/// Candidate types for inference, most common first.
const CANDIDATES: &[Type] = &[
    Type::INT4,
    Type::INT8,
    Type::TEXT,
    Type::BOOL,
    Type::FLOAT8,
    Type::INT2,
    Type::FLOAT4,
    Type::UUID,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMP,
    Type::DATE,
    Type::TIME,
    Type::BYTEA,
    Type::JSONB,
    Type::JSON,
    Type::INT4_ARRAY,
    Type::INT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::BOOL_ARRAY,
    Type::FLOAT8_ARRAY,
    Type::INT2_ARRAY,
    Type::FLOAT4_ARRAY,
    Type::UUID_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::TIMESTAMP_ARRAY,
    Type::DATE_ARRAY,
    Type::BYTEA_ARRAY,
    Type::JSONB_ARRAY,
    Type::CHAR,
    Type::OID,
    Type::INTERVAL,
];

/// Parameters encoded into one buffer, ready for a `Bind` message.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    pub buf: BytesMut,
    /// Per parameter: type OID for `Parse`, text (false) or binary (true),
    /// and its byte range in `buf` (`None` for NULL).
    pub items: Vec<EncodedParam>,
}

#[derive(Debug, Clone)]
pub(crate) struct EncodedParam {
    pub oid: u32,
    pub binary: bool,
    pub range: Option<(usize, usize)>,
}

impl Encoded {
    pub fn oids(&self) -> impl Iterator<Item = u32> + Clone + '_ {
        self.items.iter().map(|p| p.oid)
    }
    pub fn value(&self, i: usize) -> Option<&[u8]> {
        self.items[i].range.map(|(a, b)| &self.buf[a..b])
    }
}

fn encode_one(
    p: Param<'_>,
    ty: &Type,
    out: &mut BytesMut,
) -> Result<Option<(usize, usize)>, Box<dyn std::error::Error + Sync + Send>> {
    let start = out.len();
    match p.to_sql_checked(ty, out)? {
        IsNull::Yes => {
            out.truncate(start);
            Ok(None)
        }
        IsNull::No => Ok(Some((start, out.len()))),
    }
}

/// Encodes parameters with types inferred from the values. `Ok(None)` means
/// some value fits no candidate type: the caller must describe first.
///
/// `hint` holds the OIDs this statement's parameters were sent with last
/// time (empty if none): each value is offered its hinted type first,
/// because every candidate a value refuses costs a boxed error. A hint is
/// only followed where it cannot change the answer for the library's own
/// types: never for a type that some `ToSql` impl accepts together with an
/// earlier candidate (see [`hint_is_unambiguous`]). A hinted attempt that
/// fails in any way just falls through to the ordinary order.
///
/// `learned` are the types the session looked up (an application's enums,
/// composites, domains, extension types): offered after the built-in
/// candidates, so a value of such a type needs a describe only the first
/// time a session meets it.
pub(crate) fn encode_inferred(params: &[Param<'_>], hint: &[u32], learned: &[Type]) -> Result<Option<Encoded>, Error> {
    check_count(params.len())?;
    let mut enc = Encoded {
        // Most values are a few bytes; growing from empty reallocates.
        buf: BytesMut::with_capacity(params.len() * 16),
        items: Vec::with_capacity(params.len()),
    };
    'params: for (i, p) in params.iter().enumerate() {
        let hinted = hint
            .get(i)
            .and_then(|&oid| match oid {
                0 => Some(Type::TEXT),
                oid => Type::from_oid(oid).or_else(|| learned.iter().find(|t| t.oid() == oid).cloned()),
            })
            .filter(hint_is_unambiguous);
        if let Some(ty) = &hinted {
            if let Ok(Some(item)) = offer(i + 1, *p, ty, &mut enc.buf) {
                enc.items.push(item);
                continue 'params;
            }
        }
        for ty in CANDIDATES.iter().filter(|t| Some(*t) != hinted.as_ref()) {
            if let Some(item) = offer(i + 1, *p, ty, &mut enc.buf)? {
                enc.items.push(item);
                continue 'params;
            }
        }
        // Apart, so the common case pays nothing for them.
        for ty in learned.iter().filter(|t| Some(*t) != hinted.as_ref()) {
            if let Some(item) = offer(i + 1, *p, ty, &mut enc.buf)? {
                enc.items.push(item);
                continue 'params;
            }
        }
        return Ok(None);
    }
    Ok(Some(enc))
}

/// Whether a value accepting `ty` is known to accept no earlier candidate.
/// postgres-types' `SystemTime` takes `timestamp` and `timestamptz`, and
/// `serde_json::Value` and `Json<T>` take `json` and `jsonb`; inference
/// offers the second of each pair first, so a hint of the first could turn
/// a `timestamptz` parameter into a `timestamp` one.
fn hint_is_unambiguous(ty: &Type) -> bool {
    !matches!(*ty, Type::TIMESTAMP | Type::TIMESTAMP_ARRAY | Type::JSON)
}

/// Encodes parameter `$n`, `p`, as `ty` if it accepts that type (`Ok(None)`
/// if not).
fn offer(n: usize, p: Param<'_>, ty: &Type, buf: &mut BytesMut) -> Result<Option<EncodedParam>, Error> {
    let start = buf.len();
    match encode_one(p, ty, buf) {
        // Untyped text: the server picks the type.
        Ok(range) if *ty == Type::TEXT => Ok(Some(EncodedParam {
            oid: 0,
            binary: false,
            range,
        })),
        Ok(range) => Ok(Some(EncodedParam {
            oid: ty.oid(),
            binary: matches!(p.encode_format(ty), Format::Binary),
            range,
        })),
        Err(e) => {
            buf.truncate(start);
            if is_wrong_type(&*e) {
                Ok(None)
            } else {
                Err(Error::encode(format!("parameter ${n} as {ty}: {e}")))
            }
        }
    }
}

/// Encodes parameters for known types (a described or prepared statement).
/// Types the inference would have sent as untyped text stay text, so a
/// cached statement always gets the same formats.
pub(crate) fn encode_typed(params: &[Param<'_>], types: &[Type]) -> Result<Encoded, Error> {
    check_count(params.len())?;
    if params.len() != types.len() {
        return Err(Error::misuse(format!(
            "the statement takes {} parameter(s) but {} were given",
            types.len(),
            params.len()
        )));
    }
    let mut enc = Encoded {
        buf: BytesMut::new(),
        items: Vec::with_capacity(params.len()),
    };
    for (i, (p, ty)) in params.iter().zip(types).enumerate() {
        let start = enc.buf.len();
        let first = encode_one(*p, ty, &mut enc.buf);
        let item = match first {
            Ok(range) => EncodedParam {
                oid: ty.oid(),
                binary: matches!(p.encode_format(ty), Format::Binary),
                range,
            },
            Err(e) => {
                enc.buf.truncate(start);
                // A Rust string may feed any type through text input.
                match encode_one(*p, &Type::TEXT, &mut enc.buf) {
                    Ok(range) if is_wrong_type(&*e) => EncodedParam {
                        oid: ty.oid(),
                        binary: false,
                        range,
                    },
                    _ => {
                        enc.buf.truncate(start);
                        return Err(Error::encode(format!("parameter ${} as {}: {e}", i + 1, ty)));
                    }
                }
            }
        };
        enc.items.push(item);
    }
    Ok(enc)
}

fn check_count(n: usize) -> Result<(), Error> {
    if n > u16::MAX as usize {
        return Err(Error::misuse(format!(
            "{n} parameters given; the protocol allows at most 65535 per statement"
        )));
    }
    Ok(())
}

fn is_wrong_type(e: &(dyn std::error::Error + Sync + Send + 'static)) -> bool {
    e.is::<postgres_types::WrongType>()
}

/// Writes a `Bind` message for already-encoded parameters; binary results.
pub(crate) fn write_bind(portal: &str, statement: &str, enc: &Encoded, out: &mut BytesMut) -> Result<(), Error> {
    // Format codes: none without parameters, one for all when every one is
    // binary, else one per parameter. Iterators, not a Vec: a Bind is
    // written per request.
    let all_binary = enc.items.iter().all(|p| p.binary);
    let count = if all_binary {
        enc.items.len().min(1)
    } else {
        enc.items.len()
    };
    let formats = enc.items.iter().take(count).map(|p| p.binary as i16);
    let r = postgres_protocol::message::frontend::bind(
        portal,
        statement,
        formats,
        0..enc.items.len(),
        |i, buf: &mut BytesMut| match enc.value(i) {
            Some(v) => {
                buf.put_slice(v);
                Ok::<_, Box<dyn std::error::Error + Sync + Send>>(postgres_protocol::IsNull::No)
            }
            None => Ok(postgres_protocol::IsNull::Yes),
        },
        Some(1),
        out,
    );
    r.map_err(|e| match e {
        postgres_protocol::message::frontend::BindError::Conversion(e) => Error::encode(e.to_string()),
        postgres_protocol::message::frontend::BindError::Serialization(e) => Error::encode(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oids(params: &[Param<'_>], hint: &[u32]) -> Vec<u32> {
        let enc = encode_inferred(params, hint, &[]).unwrap().expect("inferred");
        enc.oids().collect()
    }

    #[test]
    fn ambiguous_hints_are_not_followed() {
        // SystemTime takes timestamp and timestamptz; inference says
        // timestamptz, and a hint of timestamp (from a NaiveDateTime bound
        // to the same SQL before) must not change that.
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let json = serde_json::json!({"a": 1});
        let params: [Param<'_>; 2] = [&at, &json];
        assert_eq!(oids(&params, &[]), [Type::TIMESTAMPTZ.oid(), Type::JSONB.oid()]);
        assert_eq!(
            oids(&params, &[Type::TIMESTAMP.oid(), Type::JSON.oid()]),
            [Type::TIMESTAMPTZ.oid(), Type::JSONB.oid()]
        );
    }

    #[test]
    fn hints_are_tried_first_and_never_change_the_answer() {
        let name = String::from("x");
        let none: Option<String> = None;
        let params: [Param<'_>; 4] = [&name, &5i64, &none, &1.5f64];
        let inferred = oids(&params, &[]);
        assert_eq!(inferred, [0, Type::INT8.oid(), 0, Type::FLOAT8.oid()]);
        // The right hint, a wrong one, a short one, an unknown OID: the
        // encoding is the same whatever the hint says.
        for hint in [
            inferred.clone(),
            vec![Type::INT4.oid(), 0, Type::BOOL.oid(), Type::INT8.oid()],
            vec![0],
            vec![999_999; 4],
        ] {
            assert_eq!(oids(&params, &hint), inferred, "hint {hint:?}");
        }
        let a = encode_inferred(&params, &[], &[]).unwrap().unwrap();
        let b = encode_inferred(&params, &inferred, &[]).unwrap().unwrap();
        assert_eq!(a.buf, b.buf, "same bytes with and without the hint");
    }
}
