//! `AppPasswordStore`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latchkey_core::app_passwords::AppPassword;
use latchkey_core::model::Change;
use latchkey_core::store::AppPasswordStore;
use latchkey_core::StoreError;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::error::{corrupt, db_err, is_foreign_key_violation, is_unique_violation};
use crate::feed;
use crate::sql::{ms, opt_ms, RowExt, StoreResult};
use crate::SqlStore;

const COLS: &str = "id, user_id, name, secret_hash, applications, created_at, expires_at, last_used_at";

fn from_row(row: &AnyRow) -> StoreResult<AppPassword> {
    let applications = match row.opt_text("applications")? {
        Some(text) => Some(serde_json::from_str(&text).map_err(|e| corrupt(format!("column applications: {e}")))?),
        None => None,
    };
    Ok(AppPassword {
        id: row.uuid("id")?,
        user_id: row.uuid("user_id")?,
        name: row.text("name")?,
        secret_hash: row.text("secret_hash")?,
        applications,
        created_at: row.time("created_at")?,
        expires_at: row.opt_time("expires_at")?,
        last_used_at: row.opt_time("last_used_at")?,
    })
}

#[async_trait]
impl AppPasswordStore for SqlStore {
    async fn create_app_password(&self, p: &AppPassword) -> StoreResult<()> {
        let applications = match &p.applications {
            Some(a) => Some(serde_json::to_string(a).map_err(|e| StoreError::Database(e.to_string()))?),
            None => None,
        };
        sqlx::query(&format!("INSERT INTO app_passwords ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"))
            .bind(p.id.to_string())
            .bind(p.user_id.to_string())
            .bind(&p.name)
            .bind(&p.secret_hash)
            .bind(applications)
            .bind(ms(p.created_at))
            .bind(opt_ms(p.expires_at))
            .bind(opt_ms(p.last_used_at))
            .execute(self.pool())
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("app password '{}'", p.name))
                } else if is_foreign_key_violation(&e) {
                    StoreError::NotFound(format!("user {}", p.user_id))
                } else {
                    db_err(e)
                }
            })?;
        Ok(())
    }

    async fn find_app_password(&self, secret_hash: &str) -> StoreResult<Option<AppPassword>> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM app_passwords WHERE secret_hash = $1"))
            .bind(secret_hash)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.as_ref().map(from_row).transpose()
    }

    async fn list_app_passwords(&self, user_id: Uuid) -> StoreResult<Vec<AppPassword>> {
        let rows = sqlx::query(&format!("SELECT {COLS} FROM app_passwords WHERE user_id = $1 ORDER BY created_at, id"))
            .bind(user_id.to_string())
            .fetch_all(self.pool())
            .await
            .map_err(db_err)?;
        rows.iter().map(from_row).collect()
    }

    async fn delete_app_password(&self, id: Uuid) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT user_id FROM app_passwords WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        let Some(row) = row else { return Ok(false) };
        let user_id = row.uuid("user_id")?;
        sqlx::query("DELETE FROM app_passwords WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        feed::record(&mut tx, &Change::User(user_id)).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn touch_app_password(&self, id: Uuid, used_at: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query("UPDATE app_passwords SET last_used_at = $1 WHERE id = $2")
            .bind(ms(used_at))
            .bind(id.to_string())
            .execute(self.pool())
            .await
            .map_err(db_err)?;
        Ok(())
    }
}
