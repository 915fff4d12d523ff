//! `SessionStore`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latchkey_core::model::{Change, Session};
use latchkey_core::store::SessionStore;
use latchkey_core::StoreError;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::error::{corrupt, db_err, is_foreign_key_violation, is_unique_violation};
use crate::feed;
use crate::sql::{like_escape, ms, RowExt, StoreResult};
use crate::SqlStore;

const COLS: &str = "key_hash, id, user_id, created_at, last_seen, expires_at, client_ip, user_agent, amr";

fn session_from_row(row: &AnyRow) -> StoreResult<Session> {
    let amr = row.text("amr")?;
    Ok(Session {
        key_hash: row.text("key_hash")?,
        id: row.text("id")?,
        user_id: row.uuid("user_id")?,
        created_at: row.time("created_at")?,
        last_seen: row.time("last_seen")?,
        expires_at: row.time("expires_at")?,
        client_ip: row.opt_text("client_ip")?,
        user_agent: row.opt_text("user_agent")?,
        amr: serde_json::from_str(&amr).map_err(|e| corrupt(format!("column amr: {e}")))?,
    })
}

fn sessions_from_rows(rows: &[AnyRow]) -> StoreResult<Vec<Session>> {
    rows.iter().map(session_from_row).collect()
}

#[async_trait]
impl SessionStore for SqlStore {
    async fn create_session(&self, session: &Session) -> StoreResult<()> {
        let amr = serde_json::to_string(&session.amr).map_err(|e| StoreError::Database(e.to_string()))?;
        sqlx::query(&format!("INSERT INTO sessions ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
            .bind(&session.key_hash)
            .bind(&session.id)
            .bind(session.user_id.to_string())
            .bind(ms(session.created_at))
            .bind(ms(session.last_seen))
            .bind(ms(session.expires_at))
            .bind(&session.client_ip)
            .bind(&session.user_agent)
            .bind(amr)
            .execute(self.pool())
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict("a session with that key already exists".to_string())
                } else if is_foreign_key_violation(&e) {
                    StoreError::NotFound(format!("user {}", session.user_id))
                } else {
                    db_err(e)
                }
            })?;
        Ok(())
    }

    async fn get_session(&self, key_hash: &str) -> StoreResult<Option<Session>> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM sessions WHERE key_hash = $1"))
            .bind(key_hash)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn find_sessions_by_id(&self, id_prefix: &str) -> StoreResult<Vec<Session>> {
        let rows = sqlx::query(&format!("SELECT {COLS} FROM sessions WHERE id LIKE $1 ESCAPE '\\' ORDER BY id"))
            .bind(format!("{}%", like_escape(id_prefix)))
            .fetch_all(self.pool())
            .await
            .map_err(db_err)?;
        // SQLite's LIKE ignores ASCII case; a prefix match is case-sensitive.
        Ok(sessions_from_rows(&rows)?.into_iter().filter(|s| s.id.starts_with(id_prefix)).collect())
    }

    async fn list_sessions(&self, user_id: Option<Uuid>) -> StoreResult<Vec<Session>> {
        let rows = match user_id {
            Some(u) => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM sessions WHERE user_id = $1 ORDER BY created_at DESC, key_hash"
                ))
                .bind(u.to_string())
                .fetch_all(self.pool())
                .await
            }
            None => {
                sqlx::query(&format!("SELECT {COLS} FROM sessions ORDER BY created_at DESC, key_hash"))
                    .fetch_all(self.pool())
                    .await
            }
        }
        .map_err(db_err)?;
        sessions_from_rows(&rows)
    }

    async fn touch_session(&self, key_hash: &str, last_seen: DateTime<Utc>) -> StoreResult<()> {
        // Never moves backwards: touches are written in the background and may arrive out of order.
        sqlx::query("UPDATE sessions SET last_seen = $1 WHERE key_hash = $2 AND last_seen < $1")
            .bind(ms(last_seen))
            .bind(key_hash)
            .execute(self.pool())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn delete_session(&self, key_hash: &str) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let result = sqlx::query("DELETE FROM sessions WHERE key_hash = $1")
            .bind(key_hash)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if result.rows_affected() > 0 {
            feed::record(&mut tx, &Change::Session(key_hash.to_string())).await?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn delete_user_sessions(&self, user_id: Uuid) -> StoreResult<u64> {
        let mut tx = self.begin_write().await?;
        let ended = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        if ended > 0 {
            feed::record(&mut tx, &Change::User(user_id)).await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(ended)
    }

    async fn delete_expired_sessions(&self, now: DateTime<Utc>, idle_before: DateTime<Utc>) -> StoreResult<u64> {
        // No change is recorded: every process checks expiry itself before trusting a cached session.
        let result = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1 OR last_seen < $2")
            .bind(ms(now))
            .bind(ms(idle_before))
            .execute(self.pool())
            .await
            .map_err(db_err)?;
        Ok(result.rows_affected())
    }
}
