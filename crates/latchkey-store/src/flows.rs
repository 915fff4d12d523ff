//! `FlowStore`: flows, stages, their bindings, and the server-side state of running flows.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latchkey_core::model::{Change, Flow, FlowDesignation, FlowStageBinding, FlowStateRecord, Stage};
use latchkey_core::store::FlowStore;
use latchkey_core::StoreError;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::error::{corrupt, db_err, is_foreign_key_violation, is_unique_violation};
use crate::feed;
use crate::policies::{unbind_all, Unbind};
use crate::sql::{ms, to_json_text, RowExt, StoreResult};
use crate::SqlStore;

const FLOW_COLS: &str = "id, slug, name, title, designation, settings, created_at";
const STAGE_COLS: &str = "id, name, kind, config, created_at";

fn flow_from_row(row: &AnyRow) -> StoreResult<Flow> {
    let designation = row.text("designation")?;
    Ok(Flow {
        id: row.uuid("id")?,
        slug: row.text("slug")?,
        name: row.text("name")?,
        title: row.text("title")?,
        designation: FlowDesignation::parse(&designation)
            .ok_or_else(|| corrupt(format!("flow designation '{designation}'")))?,
        settings: row.json("settings")?,
        created_at: row.time("created_at")?,
    })
}

fn stage_from_row(row: &AnyRow) -> StoreResult<Stage> {
    Ok(Stage {
        id: row.uuid("id")?,
        name: row.text("name")?,
        kind: row.text("kind")?,
        config: row.json("config")?,
        created_at: row.time("created_at")?,
    })
}

impl SqlStore {
    /// Deletes one row by id, then the policy bindings `unbind` names, and records
    /// `Change::Config` if the row existed.
    pub(crate) async fn delete_config_row(&self, table: &str, id: Uuid, unbind: &[Unbind]) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let result = sqlx::query(&format!("DELETE FROM {table} WHERE id = $1"))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if result.rows_affected() > 0 {
            unbind_all(&mut tx, unbind, id).await?;
            feed::record(&mut tx, &Change::Config).await?;
        }
        tx.commit().await.map_err(db_err)
    }
}

pub(crate) fn id_taken(what: &str, id: Uuid) -> impl Fn(sqlx::Error) -> StoreError + '_ {
    move |e| {
        if is_unique_violation(&e) {
            StoreError::Conflict(format!("{what} id {id} is already used by another {what}"))
        } else {
            db_err(e)
        }
    }
}

#[async_trait]
impl FlowStore for SqlStore {
    async fn upsert_flow(&self, flow: &Flow) -> StoreResult<Flow> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO flows ({FLOW_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (slug) DO UPDATE SET name = excluded.name, title = excluded.title, \
             designation = excluded.designation, settings = excluded.settings \
             RETURNING id, created_at"
        ))
        .bind(flow.id.to_string())
        .bind(&flow.slug)
        .bind(&flow.name)
        .bind(&flow.title)
        .bind(flow.designation.as_str())
        .bind(to_json_text(&flow.settings))
        .bind(ms(flow.created_at))
        .fetch_one(&mut *tx)
        .await
        .map_err(id_taken("flow", flow.id))?;
        let stored = Flow { id: row.uuid("id")?, created_at: row.time("created_at")?, ..flow.clone() };
        feed::record(&mut tx, &Change::Config).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(stored)
    }

    async fn get_flow_by_slug(&self, slug: &str) -> StoreResult<Option<Flow>> {
        let row = sqlx::query(&format!("SELECT {FLOW_COLS} FROM flows WHERE slug = $1"))
            .bind(slug)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.as_ref().map(flow_from_row).transpose()
    }

    async fn list_flows(&self) -> StoreResult<Vec<Flow>> {
        let rows = sqlx::query(&format!("SELECT {FLOW_COLS} FROM flows ORDER BY slug"))
            .fetch_all(self.pool())
            .await
            .map_err(db_err)?;
        rows.iter().map(flow_from_row).collect()
    }

    async fn delete_flow(&self, id: Uuid) -> StoreResult<()> {
        // Its stage bindings cascade; policy bindings on it or on them go explicitly.
        self.delete_config_row("flows", id, &[Unbind::Target("flow"), Unbind::OrphanedStageBindings]).await
    }

    async fn upsert_stage(&self, stage: &Stage) -> StoreResult<Stage> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO stages ({STAGE_COLS}) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, config = excluded.config \
             RETURNING id, created_at"
        ))
        .bind(stage.id.to_string())
        .bind(&stage.name)
        .bind(&stage.kind)
        .bind(to_json_text(&stage.config))
        .bind(ms(stage.created_at))
        .fetch_one(&mut *tx)
        .await
        .map_err(id_taken("stage", stage.id))?;
        let stored = Stage { id: row.uuid("id")?, created_at: row.time("created_at")?, ..stage.clone() };
        feed::record(&mut tx, &Change::Config).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(stored)
    }

    async fn get_stage(&self, id: Uuid) -> StoreResult<Option<Stage>> {
        let row = sqlx::query(&format!("SELECT {STAGE_COLS} FROM stages WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.as_ref().map(stage_from_row).transpose()
    }

    async fn get_stage_by_name(&self, name: &str) -> StoreResult<Option<Stage>> {
        let row = sqlx::query(&format!("SELECT {STAGE_COLS} FROM stages WHERE name = $1"))
            .bind(name)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.as_ref().map(stage_from_row).transpose()
    }

    async fn list_stages(&self) -> StoreResult<Vec<Stage>> {
        let rows = sqlx::query(&format!("SELECT {STAGE_COLS} FROM stages ORDER BY name"))
            .fetch_all(self.pool())
            .await
            .map_err(db_err)?;
        rows.iter().map(stage_from_row).collect()
    }

    async fn delete_stage(&self, id: Uuid) -> StoreResult<()> {
        // Bindings that use it cascade; policy bindings on those go explicitly.
        self.delete_config_row("stages", id, &[Unbind::OrphanedStageBindings]).await
    }

    async fn upsert_binding(&self, binding: &FlowStageBinding) -> StoreResult<FlowStageBinding> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "INSERT INTO flow_stage_bindings (id, flow_id, stage_id, \"order\", settings) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (flow_id, stage_id, \"order\") DO UPDATE SET settings = excluded.settings \
             RETURNING id",
        )
        .bind(binding.id.to_string())
        .bind(binding.flow_id.to_string())
        .bind(binding.stage_id.to_string())
        .bind(binding.order)
        .bind(to_json_text(&binding.settings))
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_foreign_key_violation(&e) {
                StoreError::NotFound(format!("flow {} or stage {}", binding.flow_id, binding.stage_id))
            } else {
                id_taken("binding", binding.id)(e)
            }
        })?;
        let stored = FlowStageBinding { id: row.uuid("id")?, ..binding.clone() };
        feed::record(&mut tx, &Change::Config).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(stored)
    }

    async fn flow_bindings(&self, flow_id: Uuid) -> StoreResult<Vec<(FlowStageBinding, Stage)>> {
        let rows = sqlx::query(
            "SELECT b.id AS binding_id, b.flow_id, b.stage_id, b.\"order\" AS binding_order, \
             b.settings AS binding_settings, s.id, s.name, s.kind, s.config, s.created_at \
             FROM flow_stage_bindings b JOIN stages s ON s.id = b.stage_id \
             WHERE b.flow_id = $1 ORDER BY b.\"order\", b.id",
        )
        .bind(flow_id.to_string())
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let binding = FlowStageBinding {
                    id: row.uuid("binding_id")?,
                    flow_id: row.uuid("flow_id")?,
                    stage_id: row.uuid("stage_id")?,
                    order: row.int("binding_order")?,
                    settings: row.json("binding_settings")?,
                };
                Ok((binding, stage_from_row(row)?))
            })
            .collect()
    }

    async fn delete_binding(&self, id: Uuid) -> StoreResult<()> {
        self.delete_config_row("flow_stage_bindings", id, &[Unbind::Target("stage_binding")]).await
    }

    async fn get_flow_state(&self, key: &str, now: DateTime<Utc>) -> StoreResult<Option<FlowStateRecord>> {
        let row = sqlx::query("SELECT key, data, expires_at FROM flow_states WHERE key = $1 AND expires_at > $2")
            .bind(key)
            .bind(ms(now))
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.map(|r| {
            Ok(FlowStateRecord { key: r.text("key")?, data: r.json("data")?, expires_at: r.time("expires_at")? })
        })
        .transpose()
    }

    async fn put_flow_state(&self, state: &FlowStateRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO flow_states (key, data, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at",
        )
        .bind(&state.key)
        .bind(to_json_text(&state.data))
        .bind(ms(state.expires_at))
        .execute(self.pool())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn insert_flow_state(&self, state: &FlowStateRecord, now: DateTime<Utc>) -> StoreResult<bool> {
        // One statement: the unique key decides between concurrent callers, and a leftover
        // expired row (housekeeping not run yet) is taken over rather than blocking the key.
        let result = sqlx::query(
            "INSERT INTO flow_states (key, data, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at \
             WHERE flow_states.expires_at <= $4",
        )
        .bind(&state.key)
        .bind(to_json_text(&state.data))
        .bind(ms(state.expires_at))
        .bind(ms(now))
        .execute(self.pool())
        .await
        .map_err(db_err)?;
        Ok(result.rows_affected() == 1)
    }

    async fn delete_flow_state(&self, key: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM flow_states WHERE key = $1").bind(key).execute(self.pool()).await.map_err(db_err)?;
        Ok(())
    }

    async fn delete_expired_flow_states(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let result = sqlx::query("DELETE FROM flow_states WHERE expires_at <= $1")
            .bind(ms(now))
            .execute(self.pool())
            .await
            .map_err(db_err)?;
        Ok(result.rows_affected())
    }
}
