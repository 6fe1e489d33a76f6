//! A `tracing` subscriber that keeps what duet reports (targets `duet::*`),
//! so tests can read the spans and events operators would see.
//!
//! It is installed as the process's global default on first use (pool
//! events come from the pools' own threads and tasks), so a test binary
//! that uses it traces every duet statement it runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record as Values};
use tracing::{Event, Level, Metadata, Subscriber};

/// A span or an event, with its fields as text.
#[derive(Debug, Clone)]
pub struct Record {
    pub span: bool,
    pub target: String,
    pub name: String,
    pub level: Level,
    pub fields: BTreeMap<String, String>,
    /// A span that closed (events are never open).
    pub closed: bool,
}

impl Record {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// The event's message (`"connection lent"`).
    pub fn message(&self) -> Option<&str> {
        self.field("message")
    }
}

#[derive(Default)]
pub struct Recorder {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Open spans: index into `records` and handle count.
    live: HashMap<u64, (usize, usize)>,
    records: Vec<Record>,
}

/// The process's recorder, installed as the global subscriber the first
/// time it is asked for.
pub fn recorder() -> &'static Recorder {
    static RECORDER: OnceLock<&'static Recorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let r: &'static Recorder = Box::leak(Box::default());
        tracing::subscriber::set_global_default(Installed(r)).expect("no other global subscriber in this test binary");
        r
    })
}

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything recorded so far.
    pub fn records(&self) -> Vec<Record> {
        self.lock().records.clone()
    }

    /// Forgets what was recorded (open spans keep recording into records
    /// that are no longer listed).
    pub fn clear(&self) {
        let mut st = self.lock();
        st.records.clear();
        st.live.clear();
    }

    /// The statement spans whose SQL text contains `marker`.
    pub fn statements(&self, marker: &str) -> Vec<Record> {
        self.records()
            .into_iter()
            .filter(|r| {
                r.span && r.target == "duet::statement" && r.field("statement").is_some_and(|s| s.contains(marker))
            })
            .collect()
    }

    /// The pool events with this message.
    pub fn pool_events(&self, message: &str) -> Vec<Record> {
        self.records()
            .into_iter()
            .filter(|r| !r.span && r.target == "duet::pool" && r.message() == Some(message))
            .collect()
    }
}

struct Installed(&'static Recorder);

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl Subscriber for Installed {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with("duet")
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let meta = attrs.metadata();
        let mut st = self.0.lock();
        st.next_id += 1;
        let id = st.next_id;
        let at = st.records.len();
        st.records.push(Record {
            span: true,
            target: meta.target().to_string(),
            name: meta.name().to_string(),
            level: *meta.level(),
            fields: fields.0,
            closed: false,
        });
        st.live.insert(id, (at, 1));
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Values<'_>) {
        let mut fields = Fields::default();
        values.record(&mut fields);
        let mut st = self.0.lock();
        if let Some(&(at, _)) = st.live.get(&span.into_u64()) {
            st.records[at].fields.extend(fields.0);
        }
    }

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        self.0.lock().records.push(Record {
            span: false,
            target: meta.target().to_string(),
            name: meta.name().to_string(),
            level: *meta.level(),
            fields: fields.0,
            closed: false,
        });
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}

    fn clone_span(&self, id: &Id) -> Id {
        if let Some((_, refs)) = self.0.lock().live.get_mut(&id.into_u64()) {
            *refs += 1;
        }
        id.clone()
    }

    fn try_close(&self, id: Id) -> bool {
        let mut st = self.0.lock();
        let key = id.into_u64();
        let Some((at, refs)) = st.live.get_mut(&key) else {
            return false;
        };
        *refs -= 1;
        if *refs > 0 {
            return false;
        }
        let at = *at;
        st.live.remove(&key);
        st.records[at].closed = true;
        true
    }
}
