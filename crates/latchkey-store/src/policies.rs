//! `PolicyStore`: policies and the bindings that attach policies, users or groups to flows, stage
//! bindings and applications.
//!
//! Bindings name their target and subject by kind and id, without foreign keys; every delete of
//! something a binding can name removes those bindings in the same transaction (see [`Unbind`]).

use async_trait::async_trait;
use latchkey_core::model::{BindingSubject, BindingTarget, Change, Policy, PolicyBinding};
use latchkey_core::store::PolicyStore;
use latchkey_core::StoreError;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use uuid::Uuid;

use crate::error::{corrupt, db_err};
use crate::feed;
use crate::flows::id_taken;
use crate::sql::{ms, to_json_text, RowExt, StoreResult};
use crate::SqlStore;

const POLICY_COLS: &str = "id, name, kind, config, execution_logging, created_at";
const BINDING_COLS: &str = "id, target_kind, target_id, subject_kind, subject_id, \"order\", negate, enabled, \
                            timeout_ms, failure_result, created_at";

/// Policy bindings to remove after a row they may name was deleted.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Unbind {
    /// Bindings whose target is (this kind, the deleted id).
    Target(&'static str),
    /// Bindings whose subject is (this kind, the deleted id).
    Subject(&'static str),
    /// Bindings on stage bindings that no longer exist (they cascade from flows and stages).
    OrphanedStageBindings,
}

impl Unbind {
    /// Runs after the delete of `id`, in its transaction; returns how many bindings went.
    pub(crate) async fn run(self, conn: &mut AnyConnection, id: Uuid) -> StoreResult<u64> {
        let query = match self {
            Unbind::Target(kind) => {
                sqlx::query("DELETE FROM policy_bindings WHERE target_kind = $1 AND target_id = $2")
                    .bind(kind)
                    .bind(id.to_string())
            }
            Unbind::Subject(kind) => {
                sqlx::query("DELETE FROM policy_bindings WHERE subject_kind = $1 AND subject_id = $2")
                    .bind(kind)
                    .bind(id.to_string())
            }
            Unbind::OrphanedStageBindings => sqlx::query(
                "DELETE FROM policy_bindings WHERE target_kind = 'stage_binding' AND NOT EXISTS \
                 (SELECT 1 FROM flow_stage_bindings b WHERE b.id = policy_bindings.target_id)",
            ),
        };
        Ok(query.execute(conn).await.map_err(db_err)?.rows_affected())
    }
}

/// Runs every `unbind` for `id`; returns how many bindings went in all.
pub(crate) async fn unbind_all(conn: &mut AnyConnection, unbind: &[Unbind], id: Uuid) -> StoreResult<u64> {
    let mut removed = 0;
    for u in unbind {
        removed += u.run(&mut *conn, id).await?;
    }
    Ok(removed)
}

fn target_table(target: &BindingTarget) -> &'static str {
    match target {
        BindingTarget::Flow(_) => "flows",
        BindingTarget::StageBinding(_) => "flow_stage_bindings",
        BindingTarget::Application(_) => "applications",
    }
}

fn subject_table(subject: &BindingSubject) -> &'static str {
    match subject {
        BindingSubject::Policy(_) => "policies",
        BindingSubject::User(_) => "users",
        BindingSubject::Group(_) => "groups",
    }
}

fn policy_from_row(row: &AnyRow) -> StoreResult<Policy> {
    Ok(Policy {
        id: row.uuid("id")?,
        name: row.text("name")?,
        kind: row.text("kind")?,
        config: row.json("config")?,
        execution_logging: row.flag("execution_logging")?,
        created_at: row.time("created_at")?,
    })
}

fn binding_from_row(row: &AnyRow) -> StoreResult<PolicyBinding> {
    let (target_kind, subject_kind) = (row.text("target_kind")?, row.text("subject_kind")?);
    Ok(PolicyBinding {
        id: row.uuid("id")?,
        target: BindingTarget::from_parts(&target_kind, row.uuid("target_id")?)
            .ok_or_else(|| corrupt(format!("binding target kind '{target_kind}'")))?,
        subject: BindingSubject::from_parts(&subject_kind, row.uuid("subject_id")?)
            .ok_or_else(|| corrupt(format!("binding subject kind '{subject_kind}'")))?,
        order: row.int("order")?,
        negate: row.flag("negate")?,
        enabled: row.flag("enabled")?,
        timeout_ms: row.int("timeout_ms")?,
        failure_result: row.flag("failure_result")?,
        created_at: row.time("created_at")?,
    })
}

impl SqlStore {
    async fn policy_where(&self, clause: &str, value: String) -> StoreResult<Option<Policy>> {
        let row = sqlx::query(&format!("SELECT {POLICY_COLS} FROM policies WHERE {clause}"))
            .bind(value)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.as_ref().map(policy_from_row).transpose()
    }

    /// Fails with `NotFound` unless `table` has row `id`; on PostgreSQL the row stays locked
    /// against deletion until the transaction ends.
    async fn require_row(&self, conn: &mut AnyConnection, table: &str, what: &str, id: Uuid) -> StoreResult<()> {
        let sql = format!("SELECT id FROM {table} WHERE id = $1{}", self.engine_kind().key_share_lock());
        let row = sqlx::query(&sql).bind(id.to_string()).fetch_optional(conn).await.map_err(db_err)?;
        match row {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound(format!("{what} {id}"))),
        }
    }
}

#[async_trait]
impl PolicyStore for SqlStore {
    async fn upsert_policy(&self, policy: &Policy) -> StoreResult<Policy> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO policies ({POLICY_COLS}) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, config = excluded.config, \
             execution_logging = excluded.execution_logging \
             RETURNING id, created_at"
        ))
        .bind(policy.id.to_string())
        .bind(&policy.name)
        .bind(&policy.kind)
        .bind(to_json_text(&policy.config))
        .bind(policy.execution_logging)
        .bind(ms(policy.created_at))
        .fetch_one(&mut *tx)
        .await
        .map_err(id_taken("policy", policy.id))?;
        let stored = Policy { id: row.uuid("id")?, created_at: row.time("created_at")?, ..policy.clone() };
        feed::record(&mut tx, &Change::Config).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(stored)
    }

    async fn get_policy(&self, id: Uuid) -> StoreResult<Option<Policy>> {
        self.policy_where("id = $1", id.to_string()).await
    }

    async fn get_policy_by_name(&self, name: &str) -> StoreResult<Option<Policy>> {
        self.policy_where("name = $1", name.to_string()).await
    }

    async fn list_policies(&self) -> StoreResult<Vec<Policy>> {
        let rows = sqlx::query(&format!("SELECT {POLICY_COLS} FROM policies ORDER BY name"))
            .fetch_all(self.pool())
            .await
            .map_err(db_err)?;
        rows.iter().map(policy_from_row).collect()
    }

    async fn delete_policy(&self, id: Uuid) -> StoreResult<()> {
        self.delete_config_row("policies", id, &[Unbind::Subject("policy")]).await
    }

    async fn upsert_policy_binding(&self, binding: &PolicyBinding) -> StoreResult<PolicyBinding> {
        let mut tx = self.begin_write().await?;
        // No foreign keys can guard the polymorphic columns: check both ends exist (and keep
        // them from being deleted before this commits).
        let (target, subject) = (binding.target, binding.subject);
        self.require_row(&mut tx, target_table(&target), target.kind_str(), target.id()).await?;
        self.require_row(&mut tx, subject_table(&subject), subject.kind_str(), subject.id()).await?;
        let row = sqlx::query(&format!(
            "INSERT INTO policy_bindings ({BINDING_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (target_kind, target_id, subject_kind, subject_id) DO UPDATE SET \
             \"order\" = excluded.\"order\", negate = excluded.negate, enabled = excluded.enabled, \
             timeout_ms = excluded.timeout_ms, failure_result = excluded.failure_result \
             RETURNING id, created_at"
        ))
        .bind(binding.id.to_string())
        .bind(target.kind_str())
        .bind(target.id().to_string())
        .bind(subject.kind_str())
        .bind(subject.id().to_string())
        .bind(binding.order)
        .bind(binding.negate)
        .bind(binding.enabled)
        .bind(binding.timeout_ms)
        .bind(binding.failure_result)
        .bind(ms(binding.created_at))
        .fetch_one(&mut *tx)
        .await
        .map_err(id_taken("policy binding", binding.id))?;
        let stored = PolicyBinding { id: row.uuid("id")?, created_at: row.time("created_at")?, ..binding.clone() };
        feed::record(&mut tx, &Change::Config).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(stored)
    }

    async fn policy_bindings(&self, target: BindingTarget) -> StoreResult<Vec<PolicyBinding>> {
        let rows = sqlx::query(&format!(
            "SELECT {BINDING_COLS} FROM policy_bindings WHERE target_kind = $1 AND target_id = $2 \
             ORDER BY \"order\", created_at, id"
        ))
        .bind(target.kind_str())
        .bind(target.id().to_string())
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        rows.iter().map(binding_from_row).collect()
    }

    async fn list_policy_bindings(&self) -> StoreResult<Vec<PolicyBinding>> {
        let rows = sqlx::query(&format!(
            "SELECT {BINDING_COLS} FROM policy_bindings \
             ORDER BY target_kind, target_id, \"order\", created_at, id"
        ))
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        rows.iter().map(binding_from_row).collect()
    }

    async fn delete_policy_binding(&self, id: Uuid) -> StoreResult<()> {
        self.delete_config_row("policy_bindings", id, &[]).await
    }
}
