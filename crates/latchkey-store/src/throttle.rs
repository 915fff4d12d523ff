//! `ThrottleStore`: brute-force counters and reputation scores.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latchkey_core::model::{Reputation, ThrottleRecord};
use latchkey_core::store::ThrottleStore;
use sqlx::any::AnyRow;

use crate::error::db_err;
use crate::sql::{ms, opt_ms, RowExt, StoreResult};
use crate::SqlStore;

const THROTTLE_COLS: &str = "key, failures, window_start, last_failure, blocked_until";

fn throttle_from_row(row: &AnyRow) -> StoreResult<ThrottleRecord> {
    Ok(ThrottleRecord {
        key: row.text("key")?,
        failures: row.int("failures")?,
        window_start: row.time("window_start")?,
        last_failure: row.time("last_failure")?,
        blocked_until: row.opt_time("blocked_until")?,
    })
}

#[async_trait]
impl ThrottleStore for SqlStore {
    async fn get_throttle(&self, key: &str) -> StoreResult<Option<ThrottleRecord>> {
        let row = sqlx::query(&format!("SELECT {THROTTLE_COLS} FROM throttles WHERE key = $1"))
            .bind(key)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.as_ref().map(throttle_from_row).transpose()
    }

    async fn put_throttle(&self, record: &ThrottleRecord) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO throttles ({THROTTLE_COLS}) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (key) DO UPDATE SET failures = excluded.failures, window_start = excluded.window_start, \
             last_failure = excluded.last_failure, blocked_until = excluded.blocked_until"
        ))
        .bind(&record.key)
        .bind(record.failures)
        .bind(ms(record.window_start))
        .bind(ms(record.last_failure))
        .bind(opt_ms(record.blocked_until))
        .execute(self.pool())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn delete_throttle(&self, key: &str) -> StoreResult<bool> {
        let result =
            sqlx::query("DELETE FROM throttles WHERE key = $1").bind(key).execute(self.pool()).await.map_err(db_err)?;
        Ok(result.rows_affected() > 0)
    }

    async fn list_throttles(&self, now: DateTime<Utc>) -> StoreResult<Vec<ThrottleRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {THROTTLE_COLS} FROM throttles WHERE blocked_until > $1 ORDER BY blocked_until DESC, key"
        ))
        .bind(ms(now))
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        rows.iter().map(throttle_from_row).collect()
    }

    async fn adjust_reputation(
        &self,
        key: &str,
        delta: i64,
        min: i64,
        max: i64,
        now: DateTime<Utc>,
    ) -> StoreResult<i64> {
        // One statement, so concurrent adjustments of one key never lose an update: the row lock
        // (PostgreSQL) or the write lock (SQLite) serialises them.
        let engine = self.engine_kind();
        let sql = format!(
            "INSERT INTO reputation (key, score, updated_at) VALUES ($1, {}, $5) \
             ON CONFLICT (key) DO UPDATE SET score = {}, updated_at = excluded.updated_at \
             RETURNING score",
            engine.clamp_sql("$2", "$3", "$4"),
            engine.clamp_sql("reputation.score + $2", "$3", "$4"),
        );
        let row = sqlx::query(&sql)
            .bind(key)
            .bind(delta)
            .bind(min)
            .bind(max)
            .bind(ms(now))
            .fetch_one(self.pool())
            .await
            .map_err(db_err)?;
        row.int("score")
    }

    async fn get_reputation(&self, key: &str) -> StoreResult<Option<Reputation>> {
        let row = sqlx::query("SELECT key, score, updated_at FROM reputation WHERE key = $1")
            .bind(key)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.map(|r| Ok(Reputation { key: r.text("key")?, score: r.int("score")?, updated_at: r.time("updated_at")? }))
            .transpose()
    }
}
