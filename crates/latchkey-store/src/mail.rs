//! `MailStore`: the persistent outbox the mail worker drains.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latchkey_core::model::{Mail, MailStatus, Token};
use latchkey_core::store::MailStore;
use latchkey_core::StoreError;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::error::db_err;
use crate::sql::{ms, opt_ms, RowExt, StoreResult};
use crate::SqlStore;

const MAIL_COLS: &str =
    "id, recipient, subject, text_body, html_body, status, attempts, next_attempt_at, last_error, created_at, sent_at";

fn mail_from_row(row: &AnyRow) -> StoreResult<Mail> {
    let status = row.text("status")?;
    Ok(Mail {
        id: row.uuid("id")?,
        to: row.text("recipient")?,
        subject: row.text("subject")?,
        text_body: row.text("text_body")?,
        html_body: row.opt_text("html_body")?,
        status: MailStatus::parse(&status)
            .ok_or_else(|| StoreError::Database(format!("unknown mail status '{status}'")))?,
        attempts: row.int("attempts")?,
        next_attempt_at: row.time("next_attempt_at")?,
        last_error: row.opt_text("last_error")?,
        created_at: row.time("created_at")?,
        sent_at: row.opt_time("sent_at")?,
    })
}

fn insert_mail(mail: &Mail) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments<'static>> {
    sqlx::query(
        "INSERT INTO mails (id, recipient, subject, text_body, html_body, status, attempts, next_attempt_at, \
         leased_until, last_error, created_at, sent_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10, $11)",
    )
    .bind(mail.id.to_string())
    .bind(mail.to.clone())
    .bind(mail.subject.clone())
    .bind(mail.text_body.clone())
    .bind(mail.html_body.clone())
    .bind(mail.status.as_str())
    .bind(mail.attempts)
    .bind(ms(mail.next_attempt_at))
    .bind(mail.last_error.clone())
    .bind(ms(mail.created_at))
    .bind(opt_ms(mail.sent_at))
}

#[async_trait]
impl MailStore for SqlStore {
    async fn queue_mail(&self, mail: &Mail) -> StoreResult<()> {
        insert_mail(mail).execute(self.pool()).await.map_err(db_err)?;
        Ok(())
    }

    async fn create_token_with_mail(&self, token: &Token, mail: &Mail) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO tokens (id, secret_hash, kind, user_id, description, created_at, expires_at, used_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(token.id.to_string())
        .bind(&token.secret_hash)
        .bind(token.kind.as_str())
        .bind(token.user_id.map(|u| u.to_string()))
        .bind(&token.description)
        .bind(ms(token.created_at))
        .bind(opt_ms(token.expires_at))
        .bind(opt_ms(token.used_at))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        insert_mail(mail).execute(&mut *tx).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn claim_mails(&self, now: DateTime<Utc>, lease_until: DateTime<Utc>, limit: u32) -> StoreResult<Vec<Mail>> {
        let mut tx = self.begin_write().await?;
        let lock = self.engine_kind().skip_locked();
        let rows = sqlx::query(&format!(
            "SELECT {MAIL_COLS} FROM mails WHERE status = 'queued' AND next_attempt_at <= $1 \
             AND (leased_until IS NULL OR leased_until <= $1) ORDER BY next_attempt_at, id LIMIT $2{lock}"
        ))
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let mails: Vec<Mail> = rows.iter().map(mail_from_row).collect::<StoreResult<_>>()?;
        for mail in &mails {
            sqlx::query("UPDATE mails SET leased_until = $1 WHERE id = $2")
                .bind(ms(lease_until))
                .bind(mail.id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(mails)
    }

    async fn mail_sent(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query(
            "UPDATE mails SET status = 'sent', sent_at = $1, attempts = attempts + 1, leased_until = NULL, \
             last_error = NULL WHERE id = $2",
        )
        .bind(ms(at))
        .bind(id.to_string())
        .execute(self.pool())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn mail_failed(&self, id: Uuid, error: &str, retry_at: Option<DateTime<Utc>>) -> StoreResult<()> {
        let status = if retry_at.is_some() { MailStatus::Queued } else { MailStatus::Failed };
        sqlx::query(
            "UPDATE mails SET status = $1, attempts = attempts + 1, last_error = $2, \
             next_attempt_at = COALESCE($3, next_attempt_at), leased_until = NULL WHERE id = $4",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(opt_ms(retry_at))
        .bind(id.to_string())
        .execute(self.pool())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn list_mails(&self, limit: u32) -> StoreResult<Vec<Mail>> {
        let rows = sqlx::query(&format!("SELECT {MAIL_COLS} FROM mails ORDER BY created_at DESC, id LIMIT $1"))
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await
            .map_err(db_err)?;
        rows.iter().map(mail_from_row).collect()
    }
}
