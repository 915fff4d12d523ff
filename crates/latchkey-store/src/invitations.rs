//! `InvitationStore`: enrollment invitations.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latchkey_core::model::Invitation;
use latchkey_core::store::InvitationStore;
use serde_json::Value;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::error::db_err;
use crate::sql::{ms, opt_ms, to_json_text, RowExt, StoreResult};
use crate::SqlStore;

const COLS: &str =
    "id, secret_hash, created_by, created_at, expires_at, max_uses, uses, fixed_email, groups, flow_slug";

fn from_row(row: &AnyRow) -> StoreResult<Invitation> {
    let groups = match row.json("groups")? {
        Value::Array(a) => a.into_iter().filter_map(|v| v.as_str().map(String::from)).collect(),
        _ => Vec::new(),
    };
    Ok(Invitation {
        id: row.uuid("id")?,
        secret_hash: row.text("secret_hash")?,
        created_by: row.opt_uuid("created_by")?,
        created_at: row.time("created_at")?,
        expires_at: row.opt_time("expires_at")?,
        max_uses: row.int("max_uses")?,
        uses: row.int("uses")?,
        fixed_email: row.opt_text("fixed_email")?,
        groups,
        flow_slug: row.text("flow_slug")?,
    })
}

#[async_trait]
impl InvitationStore for SqlStore {
    async fn create_invitation(&self, inv: &Invitation) -> StoreResult<()> {
        sqlx::query(&format!("INSERT INTO invitations ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"))
            .bind(inv.id.to_string())
            .bind(&inv.secret_hash)
            .bind(inv.created_by.map(|u| u.to_string()))
            .bind(ms(inv.created_at))
            .bind(opt_ms(inv.expires_at))
            .bind(inv.max_uses)
            .bind(inv.uses)
            .bind(inv.fixed_email.clone())
            .bind(to_json_text(&serde_json::json!(inv.groups)))
            .bind(&inv.flow_slug)
            .execute(self.pool())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn find_invitation(&self, secret_hash: &str, now: DateTime<Utc>) -> StoreResult<Option<Invitation>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM invitations WHERE secret_hash = $1 AND uses < max_uses \
             AND (expires_at IS NULL OR expires_at > $2)"
        ))
        .bind(secret_hash)
        .bind(ms(now))
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        row.as_ref().map(from_row).transpose()
    }

    async fn use_invitation(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<bool> {
        let result = sqlx::query(
            "UPDATE invitations SET uses = uses + 1 WHERE id = $1 AND uses < max_uses \
             AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(id.to_string())
        .bind(ms(now))
        .execute(self.pool())
        .await
        .map_err(db_err)?;
        Ok(result.rows_affected() == 1)
    }

    async fn list_invitations(&self) -> StoreResult<Vec<Invitation>> {
        let rows = sqlx::query(&format!("SELECT {COLS} FROM invitations ORDER BY created_at DESC, id"))
            .fetch_all(self.pool())
            .await
            .map_err(db_err)?;
        rows.iter().map(from_row).collect()
    }

    async fn delete_invitation(&self, id: Uuid) -> StoreResult<()> {
        sqlx::query("DELETE FROM invitations WHERE id = $1")
            .bind(id.to_string())
            .execute(self.pool())
            .await
            .map_err(db_err)?;
        Ok(())
    }
}
