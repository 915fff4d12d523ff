//! `DeviceStore`: authenticator devices (TOTP, static recovery codes, WebAuthn).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latchkey_core::model::{AuthenticatorDevice, DeviceKind};
use latchkey_core::store::DeviceStore;
use latchkey_core::StoreError;
use serde_json::Value;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::error::db_err;
use crate::sql::{ms, opt_ms, to_json_text, RowExt, StoreResult};
use crate::SqlStore;

const COLS: &str = "id, user_id, kind, name, secret, data, confirmed, created_at, last_used_at, last_step";

fn from_row(row: &AnyRow) -> StoreResult<AuthenticatorDevice> {
    let kind = row.text("kind")?;
    Ok(AuthenticatorDevice {
        id: row.uuid("id")?,
        user_id: row.uuid("user_id")?,
        kind: DeviceKind::parse(&kind)
            .ok_or_else(|| StoreError::Database(format!("unknown authenticator kind '{kind}'")))?,
        name: row.text("name")?,
        secret: row.opt_text("secret")?,
        data: row.json("data")?,
        confirmed: row.flag("confirmed")?,
        created_at: row.time("created_at")?,
        last_used_at: row.opt_time("last_used_at")?,
        last_step: row.opt_int("last_step")?,
    })
}

#[async_trait]
impl DeviceStore for SqlStore {
    async fn create_device(&self, d: &AuthenticatorDevice) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO authenticator_devices ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(d.id.to_string())
        .bind(d.user_id.to_string())
        .bind(d.kind.as_str())
        .bind(&d.name)
        .bind(d.secret.clone())
        .bind(to_json_text(&d.data))
        .bind(d.confirmed)
        .bind(ms(d.created_at))
        .bind(opt_ms(d.last_used_at))
        .bind(d.last_step)
        .execute(self.pool())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn list_devices(&self, user_id: Uuid) -> StoreResult<Vec<AuthenticatorDevice>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM authenticator_devices WHERE user_id = $1 ORDER BY created_at, id"
        ))
        .bind(user_id.to_string())
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        rows.iter().map(from_row).collect()
    }

    async fn get_device(&self, id: Uuid) -> StoreResult<Option<AuthenticatorDevice>> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM authenticator_devices WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.as_ref().map(from_row).transpose()
    }

    async fn update_device(&self, d: &AuthenticatorDevice) -> StoreResult<()> {
        let result = sqlx::query(
            "UPDATE authenticator_devices SET name = $1, secret = $2, data = $3, confirmed = $4, \
             last_used_at = $5 WHERE id = $6",
        )
        .bind(&d.name)
        .bind(d.secret.clone())
        .bind(to_json_text(&d.data))
        .bind(d.confirmed)
        .bind(opt_ms(d.last_used_at))
        .bind(d.id.to_string())
        .execute(self.pool())
        .await
        .map_err(db_err)?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("authenticator device {}", d.id)));
        }
        Ok(())
    }

    async fn replace_device_data(
        &self,
        id: Uuid,
        expected: &Value,
        data: &Value,
        used_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let result =
            sqlx::query("UPDATE authenticator_devices SET data = $1, last_used_at = $2 WHERE id = $3 AND data = $4")
                .bind(to_json_text(data))
                .bind(ms(used_at))
                .bind(id.to_string())
                .bind(to_json_text(expected))
                .execute(self.pool())
                .await
                .map_err(db_err)?;
        Ok(result.rows_affected() == 1)
    }

    async fn delete_device(&self, id: Uuid) -> StoreResult<bool> {
        let result = sqlx::query("DELETE FROM authenticator_devices WHERE id = $1")
            .bind(id.to_string())
            .execute(self.pool())
            .await
            .map_err(db_err)?;
        Ok(result.rows_affected() > 0)
    }

    async fn record_totp_step(&self, id: Uuid, step: i64, used_at: DateTime<Utc>) -> StoreResult<bool> {
        // One statement: of two concurrent uses of the same code exactly one wins.
        let result = sqlx::query(
            "UPDATE authenticator_devices SET last_step = $1, last_used_at = $2 \
             WHERE id = $3 AND (last_step IS NULL OR last_step < $1)",
        )
        .bind(step)
        .bind(ms(used_at))
        .bind(id.to_string())
        .execute(self.pool())
        .await
        .map_err(db_err)?;
        Ok(result.rows_affected() == 1)
    }
}
