//! `ApplicationStore` (applications, providers, outposts) and `ConsentStore`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latchkey_core::model::{Application, Change, ConsentGrant, Outpost, Provider};
use latchkey_core::store::{ApplicationStore, ConsentStore};
use latchkey_core::StoreError;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::error::{corrupt, db_err, is_foreign_key_violation};
use crate::feed;
use crate::flows::id_taken;
use crate::policies::Unbind;
use crate::sql::{like_escape, ms, opt_ms, to_json_text, RowExt, StoreResult};
use crate::SqlStore;

const APP_COLS: &str = "id, name, slug, provider_id, launch_url, icon, description, \"group\", policy_engine_mode, \
                        open_in_new_tab, created_at";
const PROVIDER_COLS: &str = "id, name, kind, authorization_flow_id, config, created_at";
const OUTPOST_COLS: &str = "id, name, kind, provider_ids, config, created_at";
const CONSENT_COLS: &str = "id, user_id, application_id, permissions, created_at, expires_at";

fn app_from_row(row: &AnyRow) -> StoreResult<Application> {
    Ok(Application {
        id: row.uuid("id")?,
        name: row.text("name")?,
        slug: row.text("slug")?,
        provider_id: row.opt_uuid("provider_id")?,
        launch_url: row.opt_text("launch_url")?,
        icon: row.opt_text("icon")?,
        description: row.text("description")?,
        group: row.opt_text("group")?,
        policy_engine_mode: row.text("policy_engine_mode")?,
        open_in_new_tab: row.flag("open_in_new_tab")?,
        created_at: row.time("created_at")?,
    })
}

fn provider_from_row(row: &AnyRow) -> StoreResult<Provider> {
    Ok(Provider {
        id: row.uuid("id")?,
        name: row.text("name")?,
        kind: row.text("kind")?,
        authorization_flow_id: row.opt_uuid("authorization_flow_id")?,
        config: row.json("config")?,
        created_at: row.time("created_at")?,
    })
}

/// A JSON array column read into a typed list.
fn json_list<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> StoreResult<Vec<T>> {
    serde_json::from_value(row.json(col)?).map_err(|e| corrupt(format!("column {col}: {e}")))
}

fn list_json<T: serde::Serialize>(items: &[T]) -> String {
    // A list of UUIDs or strings always serialises.
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_string())
}

fn outpost_from_row(row: &AnyRow) -> StoreResult<Outpost> {
    Ok(Outpost {
        id: row.uuid("id")?,
        name: row.text("name")?,
        kind: row.text("kind")?,
        provider_ids: json_list(row, "provider_ids")?,
        config: row.json("config")?,
        created_at: row.time("created_at")?,
    })
}

fn consent_from_row(row: &AnyRow) -> StoreResult<ConsentGrant> {
    Ok(ConsentGrant {
        id: row.uuid("id")?,
        user_id: row.uuid("user_id")?,
        application_id: row.uuid("application_id")?,
        permissions: json_list(row, "permissions")?,
        created_at: row.time("created_at")?,
        expires_at: row.opt_time("expires_at")?,
    })
}

impl SqlStore {
    async fn one_where<T>(
        &self,
        cols: &str,
        table: &str,
        column: &str,
        value: String,
        map: fn(&AnyRow) -> StoreResult<T>,
    ) -> StoreResult<Option<T>> {
        let row = sqlx::query(&format!("SELECT {cols} FROM {table} WHERE {column} = $1"))
            .bind(value)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.as_ref().map(map).transpose()
    }

    async fn all_by<T>(
        &self,
        cols: &str,
        table: &str,
        order: &str,
        map: fn(&AnyRow) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let rows = sqlx::query(&format!("SELECT {cols} FROM {table} ORDER BY {order}"))
            .fetch_all(self.pool())
            .await
            .map_err(db_err)?;
        rows.iter().map(map).collect()
    }
}

#[async_trait]
impl ApplicationStore for SqlStore {
    async fn upsert_application(&self, app: &Application) -> StoreResult<Application> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO applications ({APP_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (slug) DO UPDATE SET name = excluded.name, provider_id = excluded.provider_id, \
             launch_url = excluded.launch_url, icon = excluded.icon, description = excluded.description, \
             \"group\" = excluded.\"group\", policy_engine_mode = excluded.policy_engine_mode, \
             open_in_new_tab = excluded.open_in_new_tab \
             RETURNING id, created_at"
        ))
        .bind(app.id.to_string())
        .bind(&app.name)
        .bind(&app.slug)
        .bind(app.provider_id.map(|p| p.to_string()))
        .bind(&app.launch_url)
        .bind(&app.icon)
        .bind(&app.description)
        .bind(&app.group)
        .bind(&app.policy_engine_mode)
        .bind(app.open_in_new_tab)
        .bind(ms(app.created_at))
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_foreign_key_violation(&e) {
                StoreError::NotFound(format!("provider {}", app.provider_id.map(|p| p.to_string()).unwrap_or_default()))
            } else {
                id_taken("application", app.id)(e)
            }
        })?;
        let stored = Application { id: row.uuid("id")?, created_at: row.time("created_at")?, ..app.clone() };
        feed::record(&mut tx, &Change::Config).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(stored)
    }

    async fn get_application(&self, id: Uuid) -> StoreResult<Option<Application>> {
        self.one_where(APP_COLS, "applications", "id", id.to_string(), app_from_row).await
    }

    async fn get_application_by_slug(&self, slug: &str) -> StoreResult<Option<Application>> {
        self.one_where(APP_COLS, "applications", "slug", slug.to_string(), app_from_row).await
    }

    async fn list_applications(&self) -> StoreResult<Vec<Application>> {
        self.all_by(APP_COLS, "applications", "lower(name), name, slug", app_from_row).await
    }

    async fn delete_application(&self, id: Uuid) -> StoreResult<()> {
        // Consent grants cascade; policy bindings on it go explicitly.
        self.delete_config_row("applications", id, &[Unbind::Target("application")]).await
    }

    async fn upsert_provider(&self, provider: &Provider) -> StoreResult<Provider> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO providers ({PROVIDER_COLS}) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, \
             authorization_flow_id = excluded.authorization_flow_id, config = excluded.config \
             RETURNING id, created_at"
        ))
        .bind(provider.id.to_string())
        .bind(&provider.name)
        .bind(&provider.kind)
        .bind(provider.authorization_flow_id.map(|f| f.to_string()))
        .bind(to_json_text(&provider.config))
        .bind(ms(provider.created_at))
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_foreign_key_violation(&e) {
                let flow = provider.authorization_flow_id.map(|f| f.to_string()).unwrap_or_default();
                StoreError::NotFound(format!("flow {flow}"))
            } else {
                id_taken("provider", provider.id)(e)
            }
        })?;
        let stored = Provider { id: row.uuid("id")?, created_at: row.time("created_at")?, ..provider.clone() };
        feed::record(&mut tx, &Change::Config).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(stored)
    }

    async fn get_provider(&self, id: Uuid) -> StoreResult<Option<Provider>> {
        self.one_where(PROVIDER_COLS, "providers", "id", id.to_string(), provider_from_row).await
    }

    async fn get_provider_by_name(&self, name: &str) -> StoreResult<Option<Provider>> {
        self.one_where(PROVIDER_COLS, "providers", "name", name.to_string(), provider_from_row).await
    }

    async fn list_providers(&self) -> StoreResult<Vec<Provider>> {
        self.all_by(PROVIDER_COLS, "providers", "name", provider_from_row).await
    }

    async fn delete_provider(&self, id: Uuid) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        // Applications keep existing without it (ON DELETE SET NULL).
        let result = sqlx::query("DELETE FROM providers WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if result.rows_affected() == 0 {
            return tx.commit().await.map_err(db_err);
        }
        // Outposts stop serving it: their provider lists are JSON, so rewrite the ones naming it.
        let rows = sqlx::query(&format!("SELECT {OUTPOST_COLS} FROM outposts WHERE provider_ids LIKE $1 ESCAPE '\\'"))
            .bind(format!("%{}%", like_escape(&id.to_string())))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        for row in &rows {
            let outpost = outpost_from_row(row)?;
            let kept: Vec<Uuid> = outpost.provider_ids.iter().copied().filter(|p| *p != id).collect();
            sqlx::query("UPDATE outposts SET provider_ids = $1 WHERE id = $2")
                .bind(list_json(&kept))
                .bind(outpost.id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        feed::record(&mut tx, &Change::Config).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn upsert_outpost(&self, outpost: &Outpost) -> StoreResult<Outpost> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO outposts ({OUTPOST_COLS}) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, provider_ids = excluded.provider_ids, \
             config = excluded.config \
             RETURNING id, created_at"
        ))
        .bind(outpost.id.to_string())
        .bind(&outpost.name)
        .bind(&outpost.kind)
        .bind(list_json(&outpost.provider_ids))
        .bind(to_json_text(&outpost.config))
        .bind(ms(outpost.created_at))
        .fetch_one(&mut *tx)
        .await
        .map_err(id_taken("outpost", outpost.id))?;
        let stored = Outpost { id: row.uuid("id")?, created_at: row.time("created_at")?, ..outpost.clone() };
        feed::record(&mut tx, &Change::Config).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(stored)
    }

    async fn get_outpost_by_name(&self, name: &str) -> StoreResult<Option<Outpost>> {
        self.one_where(OUTPOST_COLS, "outposts", "name", name.to_string(), outpost_from_row).await
    }

    async fn list_outposts(&self) -> StoreResult<Vec<Outpost>> {
        self.all_by(OUTPOST_COLS, "outposts", "name", outpost_from_row).await
    }

    async fn delete_outpost(&self, id: Uuid) -> StoreResult<()> {
        self.delete_config_row("outposts", id, &[]).await
    }
}

#[async_trait]
impl ConsentStore for SqlStore {
    async fn put_consent(&self, grant: &ConsentGrant) -> StoreResult<()> {
        // Replaces the whole grant of (user, application), its id included.
        sqlx::query(&format!(
            "INSERT INTO consent_grants ({CONSENT_COLS}) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (user_id, application_id) DO UPDATE SET id = excluded.id, \
             permissions = excluded.permissions, created_at = excluded.created_at, expires_at = excluded.expires_at"
        ))
        .bind(grant.id.to_string())
        .bind(grant.user_id.to_string())
        .bind(grant.application_id.to_string())
        .bind(list_json(&grant.permissions))
        .bind(ms(grant.created_at))
        .bind(opt_ms(grant.expires_at))
        .execute(self.pool())
        .await
        .map_err(|e| {
            if is_foreign_key_violation(&e) {
                StoreError::NotFound(format!("user {} or application {}", grant.user_id, grant.application_id))
            } else {
                id_taken("consent grant", grant.id)(e)
            }
        })?;
        Ok(())
    }

    async fn get_consent(
        &self,
        user_id: Uuid,
        application_id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<ConsentGrant>> {
        let row = sqlx::query(&format!(
            "SELECT {CONSENT_COLS} FROM consent_grants WHERE user_id = $1 AND application_id = $2 \
             AND (expires_at IS NULL OR expires_at > $3)"
        ))
        .bind(user_id.to_string())
        .bind(application_id.to_string())
        .bind(ms(now))
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        row.as_ref().map(consent_from_row).transpose()
    }

    async fn list_consents(&self, user_id: Uuid) -> StoreResult<Vec<ConsentGrant>> {
        let rows = sqlx::query(&format!(
            "SELECT {CONSENT_COLS} FROM consent_grants WHERE user_id = $1 ORDER BY created_at, id"
        ))
        .bind(user_id.to_string())
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        rows.iter().map(consent_from_row).collect()
    }

    async fn delete_consent(&self, id: Uuid) -> StoreResult<()> {
        sqlx::query("DELETE FROM consent_grants WHERE id = $1")
            .bind(id.to_string())
            .execute(self.pool())
            .await
            .map_err(db_err)?;
        Ok(())
    }
}
