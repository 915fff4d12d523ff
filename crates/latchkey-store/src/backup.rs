//! Logical backup and restore: every table (except the change feed and running flows) as one
//! JSON document, portable between SQLite and PostgreSQL.
//!
//! Format: `{"format":"latchkey-backup","schema_version":N,"created_at":<unix ms>,"engine":"…",
//! "tables":{"users":[{"id":"…",…},…],…}}`, tables in foreign-key order. Values are JSON strings,
//! integers (times are unix milliseconds), booleans or null; JSON-typed columns (attributes,
//! settings…) are kept as the JSON text they are stored as.
//!
//! The column list of each table is spelled out below rather than discovered, so that booleans come
//! out as booleans from SQLite too and typed NULLs can be bound on PostgreSQL. A unit test checks
//! it against the migrated schema.

use std::io::{Read, Write};

use latchkey_core::StoreError;
use serde::Deserialize;
use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use crate::error::{db_err, is_foreign_key_violation, is_unique_violation};
use crate::sql::{bind_all, now_ms, Arg, RowExt, StoreResult};
use crate::SqlStore;

pub(crate) const FORMAT: &str = "latchkey-backup";
/// Rows read per query; keeps memory flat however large the events table is.
const PAGE: i64 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Text,
    Int,
    Bool,
}

pub(crate) struct Table {
    pub name: &'static str,
    /// Primary key columns (all TEXT), for paging through the table in a stable order.
    pub key: &'static [&'static str],
    pub columns: &'static [(&'static str, Ty)],
    /// Self-references, filled in after every row of the table exists.
    pub deferred: &'static [&'static str],
}

use Ty::{Bool, Int, Text};

/// Backed-up tables in foreign-key order. Not included: `changes` (only meaningful to running
/// processes), `flow_states` (flows in progress), `schema_version` (carried as `schema_version`).
pub(crate) const TABLES: &[Table] = &[
    Table {
        name: "users",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("username", Text),
            ("name", Text),
            ("email", Text),
            ("is_active", Bool),
            ("kind", Text),
            ("attributes", Text),
            ("password_hash", Text),
            ("password_changed_at", Int),
            ("uid_number", Int),
            ("created_at", Int),
            ("last_login", Int),
        ],
        deferred: &[],
    },
    Table {
        name: "groups",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("name", Text),
            ("parent_id", Text),
            ("is_superuser", Bool),
            ("attributes", Text),
            ("gid_number", Int),
            ("created_at", Int),
        ],
        deferred: &["parent_id"],
    },
    Table {
        name: "group_members",
        key: &["group_id", "user_id"],
        columns: &[("group_id", Text), ("user_id", Text)],
        deferred: &[],
    },
    Table {
        name: "sessions",
        key: &["key_hash"],
        columns: &[
            ("key_hash", Text),
            ("id", Text),
            ("user_id", Text),
            ("created_at", Int),
            ("last_seen", Int),
            ("expires_at", Int),
            ("client_ip", Text),
            ("user_agent", Text),
            ("amr", Text),
        ],
        deferred: &[],
    },
    Table {
        name: "flows",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("slug", Text),
            ("name", Text),
            ("title", Text),
            ("designation", Text),
            ("settings", Text),
            ("created_at", Int),
        ],
        deferred: &[],
    },
    Table {
        name: "stages",
        key: &["id"],
        columns: &[("id", Text), ("name", Text), ("kind", Text), ("config", Text), ("created_at", Int)],
        deferred: &[],
    },
    Table {
        name: "flow_stage_bindings",
        key: &["id"],
        columns: &[("id", Text), ("flow_id", Text), ("stage_id", Text), ("order", Int), ("settings", Text)],
        deferred: &[],
    },
    Table {
        name: "tokens",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("secret_hash", Text),
            ("kind", Text),
            ("user_id", Text),
            ("description", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("used_at", Int),
        ],
        deferred: &[],
    },
    Table {
        name: "events",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("created_at", Int),
            ("action", Text),
            ("user_id", Text),
            ("username", Text),
            ("client_ip", Text),
            ("context", Text),
        ],
        deferred: &[],
    },
    Table { name: "settings", key: &["key"], columns: &[("key", Text), ("value", Text)], deferred: &[] },
    Table {
        name: "policies",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("name", Text),
            ("kind", Text),
            ("config", Text),
            ("execution_logging", Bool),
            ("created_at", Int),
        ],
        deferred: &[],
    },
    Table {
        name: "providers",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("name", Text),
            ("kind", Text),
            ("authorization_flow_id", Text),
            ("config", Text),
            ("created_at", Int),
        ],
        deferred: &[],
    },
    Table {
        name: "applications",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("name", Text),
            ("slug", Text),
            ("provider_id", Text),
            ("launch_url", Text),
            ("icon", Text),
            ("description", Text),
            ("group", Text),
            ("policy_engine_mode", Text),
            ("open_in_new_tab", Bool),
            ("created_at", Int),
        ],
        deferred: &[],
    },
    // After everything a binding can name (no foreign keys, but a restore should read in order).
    Table {
        name: "policy_bindings",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("target_kind", Text),
            ("target_id", Text),
            ("subject_kind", Text),
            ("subject_id", Text),
            ("order", Int),
            ("negate", Bool),
            ("enabled", Bool),
            ("timeout_ms", Int),
            ("failure_result", Bool),
            ("created_at", Int),
        ],
        deferred: &[],
    },
    Table {
        name: "outposts",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("name", Text),
            ("kind", Text),
            ("provider_ids", Text),
            ("config", Text),
            ("created_at", Int),
        ],
        deferred: &[],
    },
    Table {
        name: "consent_grants",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("user_id", Text),
            ("application_id", Text),
            ("permissions", Text),
            ("created_at", Int),
            ("expires_at", Int),
        ],
        deferred: &[],
    },
    Table {
        name: "authenticator_devices",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("user_id", Text),
            ("kind", Text),
            ("name", Text),
            ("secret", Text),
            ("data", Text),
            ("confirmed", Bool),
            ("created_at", Int),
            ("last_used_at", Int),
            ("last_step", Int),
        ],
        deferred: &[],
    },
    Table {
        name: "app_passwords",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("user_id", Text),
            ("name", Text),
            ("secret_hash", Text),
            ("applications", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("last_used_at", Int),
        ],
        deferred: &[],
    },
    Table {
        name: "throttles",
        key: &["key"],
        columns: &[
            ("key", Text),
            ("failures", Int),
            ("window_start", Int),
            ("last_failure", Int),
            ("blocked_until", Int),
        ],
        deferred: &[],
    },
    Table {
        name: "reputation",
        key: &["key"],
        columns: &[("key", Text), ("score", Int), ("updated_at", Int)],
        deferred: &[],
    },
];

/// Tables that are not backed up, on purpose.
pub(crate) const SKIPPED: &[&str] = &["changes", "flow_states", "schema_version", "mails", "invitations"];

fn quoted(column: &str) -> String {
    format!("\"{column}\"")
}

fn column_list(table: &Table) -> String {
    table.columns.iter().map(|(c, _)| quoted(c)).collect::<Vec<_>>().join(", ")
}

fn write_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(format!("cannot write the backup: {e}"))
}

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::Conflict(message.into())
}

fn row_to_json(table: &Table, row: &AnyRow) -> StoreResult<Map<String, Value>> {
    let mut out = Map::new();
    for &(column, ty) in table.columns {
        let value = match ty {
            Text => row.opt_text(column)?.map(Value::String),
            Int => row.opt_int(column)?.map(Value::from),
            Bool => row.opt_flag(column)?.map(Value::Bool),
        };
        out.insert(column.to_string(), value.unwrap_or(Value::Null));
    }
    Ok(out)
}

fn json_to_arg(table: &str, column: &str, ty: Ty, value: Option<&Value>) -> StoreResult<Arg> {
    let bad = || invalid(format!("invalid backup: {table}.{column} has a value of the wrong type"));
    let value = value.filter(|v| !v.is_null());
    Ok(match ty {
        Text => Arg::Text(value.map(|v| v.as_str().map(str::to_string).ok_or_else(bad)).transpose()?),
        Int => Arg::Int(value.map(|v| v.as_i64().ok_or_else(bad)).transpose()?),
        // Accepts 0/1 too, as older or hand-made documents may carry them.
        Bool => Arg::Bool(
            value
                .map(|v| match v {
                    Value::Bool(b) => Ok(*b),
                    Value::Number(n) if n.as_i64() == Some(0) => Ok(false),
                    Value::Number(n) if n.as_i64() == Some(1) => Ok(true),
                    _ => Err(bad()),
                })
                .transpose()?,
        ),
    })
}

#[derive(Deserialize)]
struct Document {
    format: String,
    schema_version: i64,
    #[serde(default)]
    tables: Map<String, Value>,
}

impl SqlStore {
    /// Writes a consistent online backup of every table as one JSON document to `out`. All reads
    /// happen in one read-only snapshot transaction, so concurrent writes are either wholly in
    /// the backup or wholly absent.
    pub async fn backup(&self, out: &mut (dyn Write + Send)) -> Result<(), StoreError> {
        let latest = Self::latest_schema_version();
        let mut tx = self.pool().begin_with(self.engine_kind().begin_snapshot()).await.map_err(db_err)?;
        let version = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?
            .int("v")?;
        if version != latest {
            return Err(invalid(format!(
                "the database has schema version {version}, this Latchkey expects {latest}; migrate it first"
            )));
        }
        let header = serde_json::json!({
            "format": FORMAT,
            "schema_version": version,
            "created_at": now_ms(),
            "engine": self.engine_kind().name(),
        });
        let header = serde_json::to_string(&header).map_err(write_err)?;
        // The header object without its closing brace, followed by the tables.
        let header = header.strip_suffix('}').unwrap_or(&header);
        write!(out, "{header},\"tables\":{{").map_err(write_err)?;
        for (i, table) in TABLES.iter().enumerate() {
            if i > 0 {
                out.write_all(b",").map_err(write_err)?;
            }
            write!(out, "\n{}:[", serde_json::Value::from(table.name)).map_err(write_err)?;
            write_table(&mut tx, table, out).await?;
            out.write_all(b"]").map_err(write_err)?;
        }
        out.write_all(b"\n}}\n").map_err(write_err)?;
        out.flush().map_err(write_err)?;
        tx.rollback().await.map_err(db_err)?;
        Ok(())
    }

    /// Restores a document written by [`SqlStore::backup`] (from either engine) into this store,
    /// which must be migrated and empty. Everything is inserted in one transaction: a failed
    /// restore leaves the store as it was.
    pub async fn restore(&self, input: &mut (dyn Read + Send)) -> Result<(), StoreError> {
        let doc: Document =
            serde_json::from_reader(input).map_err(|e| invalid(format!("not a Latchkey backup: {e}")))?;
        if doc.format != FORMAT {
            return Err(invalid(format!("not a Latchkey backup (format '{}')", doc.format)));
        }
        let latest = Self::latest_schema_version();
        if doc.schema_version > latest {
            return Err(invalid(format!(
                "the backup has schema version {}, newer than this Latchkey supports ({latest}); \
                 restore it with a newer Latchkey",
                doc.schema_version
            )));
        }
        let ours = self.schema_version().await?;
        if ours != latest {
            return Err(invalid(format!(
                "the database has schema version {ours}, this Latchkey expects {latest}; migrate it first"
            )));
        }
        for name in doc.tables.keys() {
            if !TABLES.iter().any(|t| t.name == name) && !SKIPPED.contains(&name.as_str()) {
                tracing::warn!(table = %name, "the backup has a table this version does not know; skipping it");
            }
        }
        let mut tx = self.begin_write().await?;
        for table in ["users", "groups", "flows", "policies", "providers", "applications", "outposts"] {
            let n = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?
                .int("n")?;
            if n > 0 {
                return Err(StoreError::Conflict(format!(
                    "the database is not empty (it has {table}); restore only into a fresh database"
                )));
            }
        }
        for table in TABLES {
            let rows = match doc.tables.get(table.name) {
                None | Some(Value::Null) => continue,
                Some(Value::Array(rows)) => rows,
                Some(_) => return Err(invalid(format!("invalid backup: table {} is not a list", table.name))),
            };
            restore_table(&mut tx, table, rows).await?;
        }
        tx.commit().await.map_err(db_err)
    }
}

async fn write_table(
    tx: &mut Transaction<'static, Any>,
    table: &Table,
    out: &mut (dyn Write + Send),
) -> StoreResult<()> {
    let cols = column_list(table);
    let order = table.key.iter().map(|k| quoted(k)).collect::<Vec<_>>().join(", ");
    // Keyset paging: after the last key seen, in key order.
    let after = match table.key {
        [k] => format!("{} > $1", quoted(k)),
        [k1, k2] => format!("({0} > $1 OR ({0} = $1 AND {1} > $2))", quoted(k1), quoted(k2)),
        _ => return Err(StoreError::Database(format!("table {} has an unsupported key", table.name))),
    };
    let limit_param = table.key.len() + 1;
    let first_sql = format!("SELECT {cols} FROM {} ORDER BY {order} LIMIT $1", table.name);
    let next_sql = format!("SELECT {cols} FROM {} WHERE {after} ORDER BY {order} LIMIT ${limit_param}", table.name);
    let mut last_key: Option<Vec<String>> = None;
    let mut first = true;
    loop {
        let rows = match &last_key {
            None => sqlx::query(&first_sql).bind(PAGE).fetch_all(&mut **tx).await,
            Some(key) => {
                let args = key.iter().map(|k| Arg::text(k.clone())).collect();
                bind_all(sqlx::query(&next_sql), args).bind(PAGE).fetch_all(&mut **tx).await
            }
        }
        .map_err(db_err)?;
        for row in &rows {
            let json = row_to_json(table, row)?;
            out.write_all(if first { b"\n" } else { b",\n" }).map_err(write_err)?;
            first = false;
            serde_json::to_writer(&mut *out, &json).map_err(write_err)?;
        }
        match rows.last() {
            Some(row) if rows.len() as i64 == PAGE => {
                last_key = Some(table.key.iter().map(|k| row.text(k)).collect::<StoreResult<Vec<_>>>()?);
            }
            _ => return Ok(()),
        }
    }
}

async fn restore_table(tx: &mut Transaction<'static, Any>, table: &Table, rows: &[Value]) -> StoreResult<()> {
    let placeholders = (1..=table.columns.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
    let insert = format!("INSERT INTO {} ({}) VALUES ({placeholders})", table.name, column_list(table));
    let conflict = |e: sqlx::Error| {
        if is_unique_violation(&e) || is_foreign_key_violation(&e) {
            invalid(format!("cannot restore {}: {e}", table.name))
        } else {
            db_err(e)
        }
    };
    for row in rows {
        let row = row
            .as_object()
            .ok_or_else(|| invalid(format!("invalid backup: a row of {} is not an object", table.name)))?;
        let args = table
            .columns
            .iter()
            .map(|&(column, ty)| {
                let value = if table.deferred.contains(&column) { None } else { row.get(column) };
                json_to_arg(table.name, column, ty, value)
            })
            .collect::<StoreResult<Vec<_>>>()?;
        bind_all(sqlx::query(&insert), args).execute(&mut **tx).await.map_err(conflict)?;
    }
    for &column in table.deferred {
        let [key] = table.key else {
            return Err(StoreError::Database(format!("table {} has an unsupported key", table.name)));
        };
        let ty = table.columns.iter().find(|(c, _)| *c == column).map(|&(_, t)| t).unwrap_or(Text);
        let update = format!("UPDATE {} SET {} = $1 WHERE {} = $2", table.name, quoted(column), quoted(key));
        for row in rows.iter().filter_map(Value::as_object) {
            let value = json_to_arg(table.name, column, ty, row.get(column))?;
            if matches!(&value, Arg::Text(None) | Arg::Int(None) | Arg::Bool(None)) {
                continue;
            }
            let id = json_to_arg(table.name, key, Text, row.get(*key))?;
            bind_all(sqlx::query(&update), vec![value, id]).execute(&mut **tx).await.map_err(conflict)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bool_columns_accept_numbers_from_hand_made_documents() {
        assert!(matches!(json_to_arg("t", "c", Bool, Some(&Value::from(1))), Ok(Arg::Bool(Some(true)))));
        assert!(matches!(json_to_arg("t", "c", Bool, Some(&Value::Bool(false))), Ok(Arg::Bool(Some(false)))));
        assert!(json_to_arg("t", "c", Bool, Some(&Value::from(2))).is_err());
        assert!(matches!(json_to_arg("t", "c", Int, None), Ok(Arg::Int(None))));
        assert!(json_to_arg("t", "c", Text, Some(&Value::from(3))).is_err());
    }

    /// The spelled-out column lists must match the migrated schema exactly.
    #[tokio::test]
    async fn catalog_matches_the_schema() {
        use sqlx::Row;
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::connect(&format!("sqlite://{}", dir.path().join("c.db").display())).await.unwrap();
        store.migrate().await.unwrap();
        let tables = sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
            .fetch_all(store.pool())
            .await
            .unwrap();
        let mut seen = 0;
        for row in tables {
            let name: String = row.try_get("name").unwrap();
            if SKIPPED.contains(&name.as_str()) {
                continue;
            }
            let table =
                TABLES.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("table {name} is not backed up"));
            seen += 1;
            let info = sqlx::query(&format!("PRAGMA table_info({name})")).fetch_all(store.pool()).await.unwrap();
            let mut actual: Vec<String> = info.iter().map(|r| r.try_get::<String, _>("name").unwrap()).collect();
            let mut listed: Vec<String> = table.columns.iter().map(|(c, _)| c.to_string()).collect();
            actual.sort();
            listed.sort();
            assert_eq!(listed, actual, "columns of {name}");
        }
        assert_eq!(seen, TABLES.len());
        store.close().await;
    }
}
