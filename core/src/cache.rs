//! The per-connection LRU of named prepared statements, keyed by SQL text
//! and the parameter type OIDs sent with `Parse`.

use std::collections::HashMap;

// Every statement a client runs looks up its whole SQL text here (bulk
// inserts: kilobytes); SipHash showed in profiles, foldhash is several
// times faster and still seeded per process.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;

use crate::row::Column;

pub(crate) enum CacheLookup {
    /// Already parsed (or being parsed) under `name`. `columns` is known once
    /// its first RowDescription arrived; until then the caller describes.
    Hit {
        name: Arc<str>,
        columns: Option<Arc<[Column]>>,
    },
    /// Not cached; these statements were evicted to make room and must be
    /// closed on the server.
    Miss { evicted: Vec<Arc<str>> },
    /// Capacity 0: use the unnamed statement.
    Disabled,
}

struct CacheEntry {
    oids: Vec<u32>,
    name: Arc<str>,
    columns: Option<Arc<[Column]>>,
    last_used: u64,
}

pub(crate) struct StatementCache {
    capacity: usize,
    by_sql: FastMap<String, Vec<CacheEntry>>,
    sql_of: FastMap<Arc<str>, String>,
    clock: u64,
}

impl StatementCache {
    pub fn new(capacity: usize) -> Self {
        StatementCache {
            capacity,
            by_sql: FastMap::default(),
            sql_of: FastMap::default(),
            clock: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.sql_of.len()
    }

    /// `oids` is an iterator so that a hit, the common case, needs no
    /// `Vec` of them.
    pub fn lookup(&mut self, sql: &str, oids: impl Iterator<Item = u32> + Clone) -> CacheLookup {
        if self.capacity == 0 {
            return CacheLookup::Disabled;
        }
        self.clock += 1;
        if let Some(e) = self
            .by_sql
            .get_mut(sql)
            .and_then(|v| v.iter_mut().find(|e| e.oids.iter().copied().eq(oids.clone())))
        {
            e.last_used = self.clock;
            return CacheLookup::Hit {
                name: e.name.clone(),
                columns: e.columns.clone(),
            };
        }
        let mut evicted = Vec::new();
        while self.len() >= self.capacity {
            // Linear scan: eviction only happens on a miss with a full cache,
            // and capacities are small (hundreds).
            let oldest = self
                .by_sql
                .values()
                .flatten()
                .min_by_key(|e| e.last_used)
                .map(|e| e.name.clone());
            match oldest {
                Some(name) => {
                    self.remove(&name);
                    evicted.push(name);
                }
                None => break,
            }
        }
        CacheLookup::Miss { evicted }
    }

    /// The parameter OIDs `sql` was last prepared with (empty if it is not
    /// cached): the types to offer its next values first.
    pub fn param_hint(&self, sql: &str) -> &[u32] {
        self.by_sql
            .get(sql)
            .and_then(|v| v.iter().max_by_key(|e| e.last_used))
            .map_or(&[], |e| &e.oids)
    }

    pub fn insert(&mut self, sql: &str, oids: Vec<u32>, name: Arc<str>) {
        self.sql_of.insert(name.clone(), sql.to_string());
        self.by_sql.entry(sql.to_string()).or_default().push(CacheEntry {
            oids,
            name,
            columns: None,
            last_used: self.clock,
        });
    }

    pub fn set_columns(&mut self, name: &str, columns: Arc<[Column]>) {
        if let Some(sql) = self.sql_of.get(name) {
            if let Some(e) = self
                .by_sql
                .get_mut(sql)
                .and_then(|v| v.iter_mut().find(|e| &*e.name == name))
            {
                e.columns = Some(columns);
            }
        }
    }

    /// Drops the columns of every statement with a column `stale` picks:
    /// its next run describes again.
    pub fn forget_columns(&mut self, stale: impl Fn(&Column) -> bool) {
        for e in self.by_sql.values_mut().flatten() {
            if e.columns.as_ref().is_some_and(|c| c.iter().any(&stale)) {
                e.columns = None;
            }
        }
    }

    /// Forgets one statement (its Parse failed or was skipped).
    pub fn remove(&mut self, name: &str) {
        if let Some(sql) = self.sql_of.remove(name) {
            if let Some(v) = self.by_sql.get_mut(&sql) {
                v.retain(|e| &*e.name != name);
                if v.is_empty() {
                    self.by_sql.remove(&sql);
                }
            }
        }
    }

    /// Forgets every statement for this SQL; returns their names.
    pub fn remove_sql(&mut self, sql: &str) -> Vec<Arc<str>> {
        let names: Vec<Arc<str>> = self
            .by_sql
            .remove(sql)
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.name)
            .collect();
        for n in &names {
            self.sql_of.remove(n);
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut c = StatementCache::new(2);
        for (sql, name) in [("a", "s1"), ("b", "s2")] {
            assert!(matches!(c.lookup(sql, [].into_iter()), CacheLookup::Miss { ref evicted } if evicted.is_empty()));
            c.insert(sql, vec![], name.into());
        }
        assert!(matches!(c.lookup("a", [].into_iter()), CacheLookup::Hit { .. }));
        match c.lookup("c", [].into_iter()) {
            CacheLookup::Miss { evicted } => assert_eq!(evicted, vec![Arc::<str>::from("s2")]),
            _ => panic!("expected a miss"),
        }
        c.insert("c", vec![], "s3".into());
        assert!(
            matches!(c.lookup("a", [23].into_iter()), CacheLookup::Miss { .. }),
            "other param types are another statement"
        );
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn capacity_zero_disables() {
        let mut c = StatementCache::new(0);
        assert!(matches!(c.lookup("a", [].into_iter()), CacheLookup::Disabled));
    }
}
