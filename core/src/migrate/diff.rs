//! The SQL that takes one [`Schema`] to another: what `makemigrations`
//! writes, as an up file (live → models) and a down file (models → live).
//! Pure: no server, so every case is tested without one.
//!
//! A table or column that disappears while another of the same shape
//! appears may have been renamed. That is never guessed: it is a
//! [`Rename`] question, and the draft is only written once every question
//! has an answer. Steps that can lose data are marked in the file
//! (`-- duet:destructive: …`) and listed in [`Draft::destructive`].

use std::fmt;

use super::schema::{duet_name, ident, index_name, literal, pkey_name, Column, Schema, Table};

/// A rename that the schemas allow but do not prove: asked, never guessed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Rename {
    /// Table `from` (gone) is table `to` (new).
    Table { from: String, to: String },
    /// In `table` (its new name), column `from` (gone) is column `to` (new).
    Column { table: String, from: String, to: String },
}

impl fmt::Display for Rename {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rename::Table { from, to } => write!(f, "table {from} renamed to {to}"),
            Rename::Column { table, from, to } => write!(f, "column {table}.{from} renamed to {table}.{to}"),
        }
    }
}

/// A migration written from two schemas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Draft {
    /// SQL from the live schema to the models'.
    pub up: String,
    /// SQL from the models' schema back to the live one.
    pub down: String,
    /// What the up file may lose, one line each (also marked in the file).
    pub destructive: Vec<String>,
    /// Nothing to do: the schemas match.
    pub empty: bool,
    /// Renames answered yes that matched nothing (a column whose type also
    /// changed is no rename candidate; a column's table is its new name):
    /// the draft made no use of them, so what they name is dropped and
    /// created instead. Callers should refuse such a draft.
    pub unmatched: Vec<Rename>,
}

/// One statement of a migration, with why it is dangerous, if it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub sql: String,
    /// Set when the step can lose data: what it loses.
    pub destructive: Option<String>,
    /// Something the reader should know (a step that fails on some data).
    pub note: Option<String>,
}

impl Change {
    fn new(sql: String) -> Change {
        Change {
            sql,
            destructive: None,
            note: None,
        }
    }
    fn destructive(mut self, why: impl Into<String>) -> Change {
        self.destructive = Some(why.into());
        self
    }
    fn note(mut self, note: impl Into<String>) -> Change {
        self.note = Some(note.into());
        self
    }
}

/// Writes the migration from `live` to `models` and back. `answers` says,
/// for each rename question, whether it is one; the questions still
/// unanswered are the error (ask them, then call again with the answers).
pub fn draft(live: &Schema, models: &Schema, answers: &[(Rename, bool)]) -> Result<Draft, Vec<Rename>> {
    let (up, used) = plan(live, models, answers)?;
    let reversed: Vec<(Rename, bool)> = answers.iter().map(|(r, yes)| (reverse(r, answers), *yes)).collect();
    let down = changes(models, live, &reversed)?;
    Ok(Draft {
        empty: up.is_empty(),
        destructive: up.iter().filter_map(|c| c.destructive.clone()).collect(),
        unmatched: answers
            .iter()
            .filter(|(r, yes)| *yes && !used.contains(r))
            .map(|(r, _)| r.clone())
            .collect(),
        up: render(&up),
        down: render(&down),
    })
}

/// The same rename seen from the other side.
fn reverse(r: &Rename, answers: &[(Rename, bool)]) -> Rename {
    match r {
        Rename::Table { from, to } => Rename::Table {
            from: to.clone(),
            to: from.clone(),
        },
        Rename::Column { table, from, to } => {
            // Undone after the table has its old name back.
            let old_table = answers
                .iter()
                .find_map(|(a, yes)| match a {
                    Rename::Table { from, to } if *yes && to == table => Some(from.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| table.clone());
            Rename::Column {
                table: old_table,
                from: to.clone(),
                to: from.clone(),
            }
        }
    }
}

/// The file's text: each statement, with its marks above it.
pub fn render(changes: &[Change]) -> String {
    let mut s = String::new();
    for c in changes {
        if let Some(why) = &c.destructive {
            s.push_str(&format!("-- duet:destructive: {why}\n"));
        }
        if let Some(note) = &c.note {
            s.push_str(&format!("-- note: {note}\n"));
        }
        s.push_str(&c.sql);
        s.push_str(";\n");
    }
    s
}

/// A table's column types, for the rename questions: a table renamed may
/// have columns renamed too (asked next).
fn shape(t: &Table) -> Vec<&str> {
    let mut v: Vec<&str> = t.columns.iter().map(|c| c.sql_type.as_str()).collect();
    v.sort();
    v
}

/// The statements that take `from` to `to`, in an order the server accepts:
/// renames; foreign keys, keys and indexes that go; enums; new tables;
/// columns added, changed and dropped; tables dropped; keys and indexes
/// that come; foreign keys that come; enums no longer used.
pub fn changes(from: &Schema, to: &Schema, answers: &[(Rename, bool)]) -> Result<Vec<Change>, Vec<Rename>> {
    plan(from, to, answers).map(|(changes, _)| changes)
}

/// [`changes`], and the renames it carried out.
fn plan(from: &Schema, to: &Schema, answers: &[(Rename, bool)]) -> Result<(Vec<Change>, Vec<Rename>), Vec<Rename>> {
    let mut used: Vec<Rename> = Vec::new();
    let mut questions = Vec::new();
    let mut out = Vec::new();
    let mut from = from.clone();

    // Renamed tables: a table gone and one come with columns of the same types.
    let gone: Vec<String> = from
        .tables
        .keys()
        .filter(|t| !to.tables.contains_key(*t))
        .cloned()
        .collect();
    let come: Vec<String> = to
        .tables
        .keys()
        .filter(|t| !from.tables.contains_key(*t))
        .cloned()
        .collect();
    let pairs = |gone: &[String], come: &[String], from: &Schema| -> Vec<Rename> {
        let mut out = Vec::new();
        for old in gone {
            for new in come {
                if shape(&from.tables[old]) == shape(&to.tables[new]) {
                    out.push(Rename::Table {
                        from: old.clone(),
                        to: new.clone(),
                    });
                }
            }
        }
        out
    };
    let candidates = pairs(&gone, &come, &from);
    let renamed = confirmed(&candidates, answers);
    used.extend(renamed.iter().cloned());
    for r in &renamed {
        if let Rename::Table { from: old, to: new } = r {
            out.extend(rename_table(&mut from, old, new));
        }
    }
    questions.extend(unanswered(&candidates, &renamed, answers));

    // Renamed columns: in a table on both sides, a column gone and one come
    // with the same type.
    let both: Vec<String> = from
        .tables
        .keys()
        .filter(|t| to.tables.contains_key(*t))
        .cloned()
        .collect();
    for table in &both {
        let (f, t) = (&from.tables[table], &to.tables[table]);
        let mut candidates = Vec::new();
        for old in f.columns.iter().filter(|c| t.column(&c.name).is_none()) {
            for new in t.columns.iter().filter(|c| f.column(&c.name).is_none()) {
                if old.sql_type == new.sql_type {
                    candidates.push(Rename::Column {
                        table: table.clone(),
                        from: old.name.clone(),
                        to: new.name.clone(),
                    });
                }
            }
        }
        let renamed = confirmed(&candidates, answers);
        used.extend(renamed.iter().cloned());
        for r in &renamed {
            if let Rename::Column { from: old, to: new, .. } = r {
                out.extend(rename_column(&mut from, table, old, new));
            }
        }
        questions.extend(unanswered(&candidates, &renamed, answers));
    }
    if !questions.is_empty() {
        return Err(questions);
    }

    let empty = Table::default();
    let kept = |name: &str| to.tables.contains_key(name);
    let enum_names: Vec<String> = from.enums.keys().chain(to.enums.keys()).cloned().collect();
    let is_enum = move |t: &str| enum_names.iter().any(|e| e == t.trim_matches('"'));

    // Columns made again (a generated expression changed): their keys and
    // indexes go with them and are made again with the rest.
    for (name, f) in from.tables.iter_mut() {
        let Some(t) = to.tables.get(name) else { continue };
        let remade: Vec<String> = f
            .columns
            .iter()
            .filter(|c| {
                t.column(&c.name)
                    .is_some_and(|n| n.generated.is_some() && n.generated != c.generated)
            })
            .map(|c| c.name.clone())
            .collect();
        let touches = |cols: &[String]| cols.iter().any(|c| remade.contains(c));
        f.uniques.retain(|u| !touches(&u.columns));
        f.indexes.retain(|i| !touches(&i.columns));
        f.foreign_keys.retain(|k| !touches(&k.columns));
    }
    // Columns whose type changes: a foreign key from or to one is dropped
    // first and made again last (both ends must have one type throughout).
    let mut retyped: Vec<(String, String)> = Vec::new();
    for (name, f) in &from.tables {
        for c in &f.columns {
            if let Some(n) = to.tables.get(name).and_then(|t| t.column(&c.name)) {
                if n.sql_type != c.sql_type {
                    retyped.push((name.clone(), c.name.clone()));
                }
            }
        }
    }
    let untouched = |table: &str, fk: &super::schema::ForeignKey| {
        let is = |t: &str, c: &String| retyped.iter().any(|(rt, rc)| rt == t && rc == c);
        !fk.columns.iter().any(|c| is(table, c)) && !fk.references.iter().any(|c| is(&fk.table, c))
    };

    // Foreign keys that go (all of a dropped table's, so tables drop in any order).
    for (name, f) in &from.tables {
        let t = to.tables.get(name).unwrap_or(&empty);
        for fk in &f.foreign_keys {
            if !(untouched(name, fk) && t.foreign_keys.iter().any(|k| same_fk(k, fk))) {
                out.push(drop_constraint(name, &fk.name));
            }
        }
    }
    // Keys and indexes that go, from tables that stay.
    for (name, f) in from.tables.iter().filter(|(n, _)| kept(n)) {
        let t = &to.tables[name];
        if let Some(pk) = &f.primary_key {
            if t.primary_key.as_ref().map(|k| &k.columns) != Some(&pk.columns) {
                out.push(drop_constraint(name, &pk.name));
            }
        }
        for u in &f.uniques {
            if !t.uniques.iter().any(|k| k.columns == u.columns) {
                out.push(drop_constraint(name, &u.name));
            }
        }
        for i in &f.indexes {
            // Only indexes duet would have named: others are the application's own.
            let ours = i.columns.len() == 1 && i.name == index_name(name, &i.columns[0]);
            if ours && !t.indexes.iter().any(|k| k.columns == i.columns && k.unique == i.unique) {
                out.push(Change::new(format!("DROP INDEX {}", ident(&i.name))));
            }
        }
    }

    // Enums: new ones, labels added, and (labels removed or reordered) the
    // type made again with its columns converted through text.
    let mut retired = Vec::new();
    for (name, labels) in &to.enums {
        match from.enums.get(name) {
            None => out.push(Change::new(format!(
                "CREATE TYPE {} AS ENUM ({})",
                ident(name),
                labels.iter().map(|l| literal(l)).collect::<Vec<_>>().join(", ")
            ))),
            Some(old) if old == labels => {}
            Some(old) if is_subsequence(old, labels) => out.extend(add_labels(name, old, labels)),
            Some(old) => {
                let removed: Vec<&String> = old.iter().filter(|l| !labels.contains(l)).collect();
                let retired_name = format!("{name}_duet_old");
                out.push(Change::new(format!(
                    "ALTER TYPE {} RENAME TO {}",
                    ident(name),
                    ident(&retired_name)
                )));
                out.push(Change::new(format!(
                    "CREATE TYPE {} AS ENUM ({})",
                    ident(name),
                    labels.iter().map(|l| literal(l)).collect::<Vec<_>>().join(", ")
                )));
                let why = if removed.is_empty() {
                    format!("enum {name} reordered: its columns are converted")
                } else {
                    format!(
                        "enum {name} loses {} (a row holding one makes this fail)",
                        removed.iter().map(|l| literal(l)).collect::<Vec<_>>().join(", ")
                    )
                };
                for (table, f) in &from.tables {
                    for c in &f.columns {
                        let array = c.sql_type.ends_with("[]");
                        let base = c.sql_type.trim_end_matches("[]");
                        if base != name && base != ident(name) {
                            continue;
                        }
                        // Only columns that stay of this type: the others are
                        // converted (or dropped) later, from the old copy.
                        let target = to
                            .tables
                            .get(table)
                            .and_then(|t| t.column(&c.name))
                            .filter(|t| t.sql_type == c.sql_type);
                        if target.is_none() {
                            continue;
                        }
                        if c.default.is_some() {
                            out.push(alter_column(table, &c.name, "DROP DEFAULT"));
                        }
                        let (cast, ty) = if array {
                            ("text[]", format!("{}[]", ident(name)))
                        } else {
                            ("text", ident(name))
                        };
                        out.push(
                            alter_column(
                                table,
                                &c.name,
                                &format!("TYPE {ty} USING {}::{cast}::{ty}", ident(&c.name)),
                            )
                            .destructive(why.clone()),
                        );
                        if let Some(d) = target.and_then(|t| t.default.as_ref()) {
                            out.push(alter_column(table, &c.name, &format!("SET DEFAULT {d}")));
                        }
                    }
                }
                // What the columns' defaults are now.
                for (table, f) in from.tables.iter_mut() {
                    for c in f.columns.iter_mut() {
                        let base = c.sql_type.trim_end_matches("[]");
                        let target = to.tables.get(table).and_then(|t| t.column(&c.name));
                        if (base == name || base == ident(name)) && target.is_some_and(|t| t.sql_type == c.sql_type) {
                            c.default = target.and_then(|t| t.default.clone());
                        }
                    }
                }
                retired.push(retired_name);
            }
        }
    }

    // New tables, with their keys (foreign keys come once every table exists).
    for (name, t) in to.tables.iter().filter(|(n, _)| !from.tables.contains_key(*n)) {
        out.push(Change::new(create_table(name, t)));
    }

    // Columns of tables on both sides.
    for (name, t) in &to.tables {
        let Some(f) = from.tables.get(name) else { continue };
        for c in &t.columns {
            match f.column(&c.name) {
                None => {
                    let mut change = Change::new(format!("ALTER TABLE {} ADD COLUMN {}", ident(name), column_def(c)));
                    if c.not_null && c.default.is_none() && c.generated.is_none() && !c.identity {
                        change = change.note(format!(
                            "NOT NULL without a default: fails while {name} has rows (add a default, or fill the \
                             column in a step of your own)"
                        ));
                    }
                    out.push(change);
                }
                Some(old) => out.extend(alter(name, old, c, &is_enum)),
            }
        }
        for c in &f.columns {
            if t.column(&c.name).is_none() {
                out.push(
                    Change::new(format!("ALTER TABLE {} DROP COLUMN {}", ident(name), ident(&c.name)))
                        .destructive(format!("drops column {name}.{} and its data", c.name)),
                );
            }
        }
    }

    // Tables that go.
    for name in from.tables.keys().filter(|n| !kept(n)) {
        out.push(
            Change::new(format!("DROP TABLE {}", ident(name))).destructive(format!("drops table {name} and its rows")),
        );
    }

    // Keys and indexes that come.
    for (name, t) in &to.tables {
        let f = from.tables.get(name);
        let created = f.is_none();
        let f = f.unwrap_or(&empty);
        if !created {
            if let Some(pk) = &t.primary_key {
                if f.primary_key.as_ref().map(|k| &k.columns) != Some(&pk.columns) {
                    out.push(Change::new(format!(
                        "ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})",
                        ident(name),
                        ident(&pk.name),
                        idents(&pk.columns)
                    )));
                }
            }
            for u in &t.uniques {
                if !f.uniques.iter().any(|k| k.columns == u.columns) {
                    out.push(
                        Change::new(format!(
                            "ALTER TABLE {} ADD CONSTRAINT {} UNIQUE ({})",
                            ident(name),
                            ident(&u.name),
                            idents(&u.columns)
                        ))
                        .note("fails while duplicate values exist"),
                    );
                }
            }
        }
        for i in &t.indexes {
            if !f.indexes.iter().any(|k| k.columns == i.columns && k.unique == i.unique) {
                out.push(Change::new(format!(
                    "CREATE {}INDEX {} ON {} ({})",
                    if i.unique { "UNIQUE " } else { "" },
                    ident(&i.name),
                    ident(name),
                    idents(&i.columns)
                )));
            }
        }
    }

    // Foreign keys that come.
    for (name, t) in &to.tables {
        let f = from.tables.get(name).unwrap_or(&empty);
        for fk in &t.foreign_keys {
            if !f.foreign_keys.iter().any(|k| same_fk(k, fk) && untouched(name, k)) {
                out.push(Change::new(format!(
                    "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}) ON DELETE {}",
                    ident(name),
                    ident(&fk.name),
                    idents(&fk.columns),
                    ident(&fk.table),
                    idents(&fk.references),
                    fk.on_delete
                )));
            }
        }
    }

    // Enums nothing uses any more, and the old copies of remade ones.
    for name in from.enums.keys() {
        if !to.enums.contains_key(name) && !to.uses_type(name) {
            out.push(Change::new(format!("DROP TYPE {}", ident(name))));
        }
    }
    for name in retired {
        out.push(Change::new(format!("DROP TYPE {}", ident(&name))));
    }
    Ok((out, used))
}

fn ends(r: &Rename) -> (&str, &str) {
    match r {
        Rename::Table { from, to } | Rename::Column { from, to, .. } => (from, to),
    }
}

/// The candidates answered yes, each side used once (first answer wins).
fn confirmed(candidates: &[Rename], answers: &[(Rename, bool)]) -> Vec<Rename> {
    let mut out: Vec<Rename> = Vec::new();
    for c in candidates {
        let yes = answers.iter().any(|(a, yes)| *yes && a == c);
        let (f, t) = ends(c);
        if yes && !out.iter().any(|r| ends(r).0 == f || ends(r).1 == t) {
            out.push(c.clone());
        }
    }
    out
}

/// The candidates still to ask: unanswered, and neither side renamed already.
fn unanswered(candidates: &[Rename], renamed: &[Rename], answers: &[(Rename, bool)]) -> Vec<Rename> {
    candidates
        .iter()
        .filter(|c| !answers.iter().any(|(a, _)| a == *c))
        .filter(|c| !renamed.iter().any(|r| ends(r).0 == ends(c).0 || ends(r).1 == ends(c).1))
        .cloned()
        .collect()
}

fn same_fk(a: &super::schema::ForeignKey, b: &super::schema::ForeignKey) -> bool {
    a.columns == b.columns && a.table == b.table && a.references == b.references && a.on_delete == b.on_delete
}

fn idents(names: &[String]) -> String {
    names.iter().map(|n| ident(n)).collect::<Vec<_>>().join(", ")
}

fn drop_constraint(table: &str, name: &str) -> Change {
    Change::new(format!("ALTER TABLE {} DROP CONSTRAINT {}", ident(table), ident(name)))
}

fn alter_column(table: &str, column: &str, what: &str) -> Change {
    Change::new(format!(
        "ALTER TABLE {} ALTER COLUMN {} {what}",
        ident(table),
        ident(column)
    ))
}

fn is_subsequence(short: &[String], long: &[String]) -> bool {
    let mut it = long.iter();
    short.iter().all(|s| it.any(|l| l == s))
}

/// `ADD VALUE` for each new label, placed where the models put it.
fn add_labels(name: &str, old: &[String], new: &[String]) -> Vec<Change> {
    let mut out = Vec::new();
    for (i, label) in new.iter().enumerate() {
        if old.contains(label) {
            continue;
        }
        let place = match new[i + 1..].iter().find(|l| old.contains(l)) {
            Some(next) => format!(" BEFORE {}", literal(next)),
            None if i > 0 => format!(" AFTER {}", literal(&new[i - 1])),
            None => String::new(),
        };
        out.push(
            Change::new(format!(
                "ALTER TYPE {} ADD VALUE {}{place}",
                ident(name),
                literal(label)
            ))
            .note(
                "a label added in a transaction cannot be used in that same transaction (as a default, say): \
                 move such a use to a later migration",
            ),
        );
    }
    out
}

/// `"name" type …` as in `CREATE TABLE` and `ADD COLUMN`.
fn column_def(c: &Column) -> String {
    let mut s = format!("{} {}", ident(&c.name), c.sql_type);
    if let Some(g) = &c.generated {
        s.push_str(&format!(" GENERATED ALWAYS AS ({g}) STORED"));
    }
    if c.identity {
        s.push_str(" GENERATED BY DEFAULT AS IDENTITY");
    }
    if c.not_null {
        s.push_str(" NOT NULL");
    }
    if let Some(d) = &c.default {
        s.push_str(&format!(" DEFAULT {d}"));
    }
    s
}

fn create_table(name: &str, t: &Table) -> String {
    let mut parts: Vec<String> = t.columns.iter().map(column_def).collect();
    if let Some(pk) = &t.primary_key {
        parts.push(format!(
            "CONSTRAINT {} PRIMARY KEY ({})",
            ident(&pk.name),
            idents(&pk.columns)
        ));
    }
    for u in &t.uniques {
        parts.push(format!("CONSTRAINT {} UNIQUE ({})", ident(&u.name), idents(&u.columns)));
    }
    format!("CREATE TABLE {} (\n    {}\n)", ident(name), parts.join(",\n    "))
}

/// The sequence a `nextval('seq'::regclass)` default draws from, as SQL.
fn sequence_of(default: Option<&String>) -> Option<String> {
    let inner = default?.strip_prefix("nextval('")?.strip_suffix("'::regclass)")?;
    Some(inner.replace("''", "'"))
}

/// A column on both sides, changed. `is_enum` tells the types that need a
/// cast through text (PostgreSQL casts no enum to another type directly).
fn alter(table: &str, old: &Column, new: &Column, is_enum: &dyn Fn(&str) -> bool) -> Vec<Change> {
    let mut out = Vec::new();
    if old.generated != new.generated {
        if old.generated.is_some() && new.generated.is_none() {
            // Generated → stored: the values stay (PostgreSQL 13+).
            out.push(alter_column(table, &old.name, "DROP EXPRESSION"));
            let plain = Column {
                generated: None,
                default: None,
                ..old.clone()
            };
            out.extend(alter(table, &plain, new, is_enum));
            return out;
        }
        // A generated column is made again (PostgreSQL before 17 cannot
        // change its expression); a stored value becoming generated is lost.
        // Its keys and indexes went with it and are made again later.
        let mut drop = Change::new(format!("ALTER TABLE {} DROP COLUMN {}", ident(table), ident(&old.name)));
        if old.generated.is_none() {
            drop = drop.destructive(format!(
                "{table}.{} becomes generated: its values are replaced",
                old.name
            ));
        }
        out.push(drop);
        out.push(Change::new(format!(
            "ALTER TABLE {} ADD COLUMN {}",
            ident(table),
            column_def(new)
        )));
        return out;
    }
    let retyped = old.sql_type != new.sql_type;
    let redefault = old.default != new.default;
    if old.identity && !new.identity {
        out.push(alter_column(table, &old.name, "DROP IDENTITY"));
    }
    // A default in the old type may not convert: it goes first, and comes back after.
    if old.default.is_some() && (retyped || (redefault && new.default.is_none())) {
        out.push(alter_column(table, &old.name, "DROP DEFAULT"));
    }
    // A serial column's own sequence goes when it becomes an identity
    // (which has one of its own): two would leave the identity's behind.
    if let Some(seq) = sequence_of(old.default.as_ref()).filter(|_| new.identity && !old.identity) {
        out.push(Change::new(format!("DROP SEQUENCE {seq}")));
    }
    if retyped {
        let base = |t: &str| t.trim_end_matches("[]").to_string();
        let through_text = is_enum(&base(&old.sql_type)) || is_enum(&base(&new.sql_type));
        let via = if new.sql_type.ends_with("[]") { "text[]" } else { "text" };
        let using = if through_text && new.sql_type != via {
            format!("{}::{via}::{}", ident(&old.name), new.sql_type)
        } else {
            format!("{}::{}", ident(&old.name), new.sql_type)
        };
        let change = alter_column(table, &old.name, &format!("TYPE {} USING {using}", new.sql_type));
        out.push(if widens(&old.sql_type, &new.sql_type) {
            change
        } else {
            change.destructive(format!(
                "{table}.{} changes type from {} to {}: values that do not convert make it fail, or are cut",
                old.name, old.sql_type, new.sql_type
            ))
        });
    }
    // Back from an identity to a serial default: its sequence is made again.
    let new_sequence = sequence_of(new.default.as_ref()).filter(|_| old.identity && redefault);
    if let Some(seq) = &new_sequence {
        out.push(Change::new(format!(
            "CREATE SEQUENCE IF NOT EXISTS {seq} OWNED BY {}.{}",
            ident(table),
            ident(&old.name)
        )));
    }
    if let Some(d) = new.default.as_ref().filter(|_| retyped || redefault) {
        out.push(alter_column(table, &old.name, &format!("SET DEFAULT {d}")));
    }
    if let Some(seq) = &new_sequence {
        out.push(Change::new(format!(
            "SELECT setval({}, coalesce(max({}), 0) + 1, false) FROM {}",
            literal(seq),
            ident(&old.name),
            ident(table)
        )));
    }
    if !old.not_null && new.not_null {
        out.push(alter_column(table, &old.name, "SET NOT NULL").note("fails while the column holds NULLs"));
    }
    if old.not_null && !new.not_null && !new.identity {
        out.push(alter_column(table, &old.name, "DROP NOT NULL"));
    }
    if !old.identity && new.identity {
        out.push(alter_column(table, &old.name, "ADD GENERATED BY DEFAULT AS IDENTITY"));
        // The sequence starts past the values already there.
        out.push(Change::new(format!(
            "SELECT setval(pg_get_serial_sequence({}, {}), coalesce(max({}), 0) + 1, false) FROM {}",
            literal(&ident(table)),
            literal(&old.name),
            ident(&old.name),
            ident(table)
        )));
    }
    out
}

/// A type change that keeps every value as it is (a wider integer or
/// float, a longer or unbounded string, an unbounded numeric).
fn widens(old: &str, new: &str) -> bool {
    const INTEGERS: [&str; 4] = ["smallint", "integer", "bigint", "numeric"];
    let rank = |t: &str| INTEGERS.iter().position(|i| *i == t);
    if let (Some(a), Some(b)) = (rank(old), rank(new)) {
        return a < b;
    }
    let length = |t: &str, prefix: &str| -> Option<Option<u32>> {
        let rest = t.strip_prefix(prefix)?;
        if rest.is_empty() {
            return Some(None);
        }
        rest.strip_prefix('(')?.strip_suffix(')')?.parse().ok().map(Some)
    };
    let varchar = |t: &str| length(t, "character varying");
    match (old, new) {
        ("real", "double precision") => true,
        (o, "numeric") => o.starts_with("numeric("),
        (o, "text") => varchar(o).is_some() || length(o, "character").is_some(),
        (o, n) => match (varchar(o), varchar(n)) {
            (Some(_), Some(None)) => true,
            (Some(Some(a)), Some(Some(b))) => a <= b,
            _ => false,
        },
    }
}

/// The names duet gave a table's keys and indexes, renamed with what they
/// are named after (so a later table of the old name can use them): each
/// `(old name, new name)` changed in `t`, and the statements.
fn rename_named(table: &str, t: &mut Table, rename: &dyn Fn(&str, &str) -> Option<String>) -> Vec<Change> {
    let mut out = Vec::new();
    let constraint = |out: &mut Vec<Change>, name: &mut String, new: String| {
        out.push(Change::new(format!(
            "ALTER TABLE {} RENAME CONSTRAINT {} TO {}",
            ident(table),
            ident(name),
            ident(&new)
        )));
        *name = new;
    };
    if let Some(pk) = &mut t.primary_key {
        if let Some(n) = rename(&pk.name, "pkey") {
            constraint(&mut out, &mut pk.name, n);
        }
    }
    for u in &mut t.uniques {
        if let Some(n) = rename(&u.name, "key") {
            constraint(&mut out, &mut u.name, n);
        }
    }
    for fk in &mut t.foreign_keys {
        if let Some(n) = rename(&fk.name, "fkey") {
            constraint(&mut out, &mut fk.name, n);
        }
    }
    for i in &mut t.indexes {
        if let Some(n) = rename(&i.name, "idx") {
            out.push(Change::new(format!(
                "ALTER INDEX {} RENAME TO {}",
                ident(&i.name),
                ident(&n)
            )));
            i.name = n;
        }
    }
    out
}

fn rename_table(s: &mut Schema, old: &str, new: &str) -> Vec<Change> {
    let mut out = vec![Change::new(format!(
        "ALTER TABLE {} RENAME TO {}",
        ident(old),
        ident(new)
    ))];
    if let Some(mut t) = s.tables.remove(old) {
        let cols: Vec<String> = t.columns.iter().map(|c| c.name.clone()).collect();
        out.extend(rename_named(new, &mut t, &|name, suffix| {
            if name == pkey_name(old) && suffix == "pkey" {
                return Some(pkey_name(new));
            }
            cols.iter()
                .find_map(|c| (name == duet_name(old, c, suffix)).then(|| duet_name(new, c, suffix)))
        }));
        s.tables.insert(new.to_string(), t);
    }
    for t in s.tables.values_mut() {
        for fk in &mut t.foreign_keys {
            if fk.table == old {
                fk.table = new.to_string();
            }
        }
    }
    out
}

fn rename_column(s: &mut Schema, table: &str, old: &str, new: &str) -> Vec<Change> {
    let mut out = vec![Change::new(format!(
        "ALTER TABLE {} RENAME COLUMN {} TO {}",
        ident(table),
        ident(old),
        ident(new)
    ))];
    if let Some(t) = s.tables.get_mut(table) {
        out.extend(rename_named(table, t, &|name, suffix| {
            (suffix != "pkey" && name == duet_name(table, old, suffix)).then(|| duet_name(table, new, suffix))
        }));
    }
    let swap = |cols: &mut Vec<String>| {
        for c in cols.iter_mut() {
            if c == old {
                *c = new.to_string();
            }
        }
    };
    if let Some(t) = s.tables.get_mut(table) {
        for c in &mut t.columns {
            if c.name == old {
                c.name = new.to_string();
            }
        }
        if let Some(pk) = &mut t.primary_key {
            swap(&mut pk.columns);
        }
        for u in &mut t.uniques {
            swap(&mut u.columns);
        }
        for i in &mut t.indexes {
            swap(&mut i.columns);
        }
        for fk in &mut t.foreign_keys {
            swap(&mut fk.columns);
        }
    }
    for t in s.tables.values_mut() {
        for fk in &mut t.foreign_keys {
            if fk.table == table {
                swap(&mut fk.references);
            }
        }
    }
    out
}
