//! `TokenStore`, `EventStore` and `SettingsStore`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latchkey_core::model::{Change, Event, EventFilter, ListQuery, Page, Token, TokenKind};
use latchkey_core::store::{EventStore, SettingsStore, TokenStore};
use latchkey_core::StoreError;
use serde_json::Value;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::error::{corrupt, db_err, is_foreign_key_violation, is_unique_violation};
use crate::feed;
use crate::sql::{
    like_escape, list_page, ms, opt_ms, order_by, to_json_text, Arg, Filter, RowExt, SortField, StoreResult,
};
use crate::SqlStore;

const TOKEN_COLS: &str = "id, secret_hash, kind, user_id, description, created_at, expires_at, used_at";
const EVENT_COLS: &str = "id, created_at, action, user_id, username, client_ip, context";

const EVENT_SORT: &[SortField] = &[
    SortField { name: "created_at", column: "created_at", text: false, nullable: false },
    SortField { name: "action", column: "action", text: true, nullable: false },
    SortField { name: "username", column: "username", text: true, nullable: true },
];

fn token_from_row(row: &AnyRow) -> StoreResult<Token> {
    let kind = row.text("kind")?;
    Ok(Token {
        id: row.uuid("id")?,
        secret_hash: row.text("secret_hash")?,
        kind: TokenKind::parse(&kind).ok_or_else(|| corrupt(format!("token kind '{kind}'")))?,
        user_id: row.opt_uuid("user_id")?,
        description: row.text("description")?,
        created_at: row.time("created_at")?,
        expires_at: row.opt_time("expires_at")?,
        used_at: row.opt_time("used_at")?,
    })
}

fn event_from_row(row: &AnyRow) -> StoreResult<Event> {
    Ok(Event {
        id: row.uuid("id")?,
        created_at: row.time("created_at")?,
        action: row.text("action")?,
        user_id: row.opt_uuid("user_id")?,
        username: row.opt_text("username")?,
        client_ip: row.opt_text("client_ip")?,
        context: row.json("context")?,
    })
}

#[async_trait]
impl TokenStore for SqlStore {
    async fn create_token(&self, token: &Token) -> StoreResult<()> {
        sqlx::query(&format!("INSERT INTO tokens ({TOKEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"))
            .bind(token.id.to_string())
            .bind(&token.secret_hash)
            .bind(token.kind.as_str())
            .bind(token.user_id.map(|u| u.to_string()))
            .bind(&token.description)
            .bind(ms(token.created_at))
            .bind(opt_ms(token.expires_at))
            .bind(opt_ms(token.used_at))
            .execute(self.pool())
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict("a token with that id or secret already exists".to_string())
                } else if is_foreign_key_violation(&e) {
                    StoreError::NotFound(format!("user {}", token.user_id.map(|u| u.to_string()).unwrap_or_default()))
                } else {
                    db_err(e)
                }
            })?;
        Ok(())
    }

    async fn find_token(&self, kind: TokenKind, secret_hash: &str, now: DateTime<Utc>) -> StoreResult<Option<Token>> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLS} FROM tokens WHERE secret_hash = $1 AND kind = $2 AND used_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $3)"
        ))
        .bind(secret_hash)
        .bind(kind.as_str())
        .bind(ms(now))
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn find_token_any(&self, kind: TokenKind, secret_hash: &str) -> StoreResult<Option<Token>> {
        let row = sqlx::query(&format!("SELECT {TOKEN_COLS} FROM tokens WHERE secret_hash = $1 AND kind = $2"))
            .bind(secret_hash)
            .bind(kind.as_str())
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn delete_expired_tokens(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let result = sqlx::query("DELETE FROM tokens WHERE expires_at IS NOT NULL AND expires_at < $1")
            .bind(ms(before))
            .execute(self.pool())
            .await
            .map_err(db_err)?;
        Ok(result.rows_affected())
    }

    async fn consume_token(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<bool> {
        // One conditional UPDATE: the database lets exactly one of two concurrent callers match.
        let result = sqlx::query(
            "UPDATE tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $1)",
        )
        .bind(ms(now))
        .bind(id.to_string())
        .execute(self.pool())
        .await
        .map_err(db_err)?;
        Ok(result.rows_affected() == 1)
    }

    async fn list_tokens(&self, user_id: Option<Uuid>) -> StoreResult<Vec<Token>> {
        let rows = match user_id {
            Some(u) => {
                sqlx::query(&format!("SELECT {TOKEN_COLS} FROM tokens WHERE user_id = $1 ORDER BY created_at DESC, id"))
                    .bind(u.to_string())
                    .fetch_all(self.pool())
                    .await
            }
            None => {
                sqlx::query(&format!("SELECT {TOKEN_COLS} FROM tokens ORDER BY created_at DESC, id"))
                    .fetch_all(self.pool())
                    .await
            }
        }
        .map_err(db_err)?;
        rows.iter().map(token_from_row).collect()
    }

    async fn count_tokens_since(&self, user_id: Uuid, kind: TokenKind, since: DateTime<Utc>) -> StoreResult<u64> {
        let n = sqlx::query("SELECT COUNT(*) AS n FROM tokens WHERE user_id = $1 AND kind = $2 AND created_at >= $3")
            .bind(user_id.to_string())
            .bind(kind.as_str())
            .bind(ms(since))
            .fetch_one(self.pool())
            .await
            .map_err(db_err)?
            .int("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn delete_token(&self, id: Uuid) -> StoreResult<()> {
        sqlx::query("DELETE FROM tokens WHERE id = $1")
            .bind(id.to_string())
            .execute(self.pool())
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

#[async_trait]
impl EventStore for SqlStore {
    async fn record_event(&self, event: &Event) -> StoreResult<()> {
        sqlx::query(&format!("INSERT INTO events ({EVENT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"))
            .bind(event.id.to_string())
            .bind(ms(event.created_at))
            .bind(&event.action)
            .bind(event.user_id.map(|u| u.to_string()))
            .bind(&event.username)
            .bind(&event.client_ip)
            .bind(to_json_text(&event.context))
            .execute(self.pool())
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("event {} already exists", event.id))
                } else {
                    db_err(e)
                }
            })?;
        Ok(())
    }

    /// Filters: `since` inclusive, `until` exclusive; `username` case-insensitive. `search` matches
    /// action, username and client address. Ordering fields: created_at (default `-created_at`),
    /// action, username.
    async fn list_events(&self, filter: &EventFilter, query: &ListQuery) -> StoreResult<Page<Event>> {
        let mut f = Filter::new();
        if let Some(action) = &filter.action {
            f.add("action = ?", Arg::text(action.clone()));
        }
        if let Some(user_id) = filter.user_id {
            f.add("user_id = ?", Arg::text(user_id.to_string()));
        }
        if let Some(username) = &filter.username {
            f.add("lower(username) = lower(?)", Arg::text(username.clone()));
        }
        if let Some(since) = filter.since {
            f.add("created_at >= ?", Arg::Int(Some(ms(since))));
        }
        if let Some(until) = filter.until {
            f.add("created_at < ?", Arg::Int(Some(ms(until))));
        }
        if let Some(app) = &filter.application {
            // The context is stored as compact JSON, so the pair appears exactly like this.
            let pair = serde_json::to_string(&serde_json::json!({ "application": app })).unwrap_or_default();
            let pair = pair.trim_start_matches('{').trim_end_matches('}');
            f.add("context LIKE ? ESCAPE '\\'", Arg::text(format!("%{}%", like_escape(pair))));
        }
        f.search(&["action", "username", "client_ip"], query.search.as_deref());
        let order = order_by(EVENT_SORT, query.ordering.as_deref(), "-created_at", "id DESC");
        list_page(
            self.pool(),
            &format!("SELECT {EVENT_COLS} FROM events"),
            "FROM events",
            f,
            &order,
            query,
            event_from_row,
        )
        .await
    }
}

#[async_trait]
impl SettingsStore for SqlStore {
    async fn get_setting(&self, key: &str) -> StoreResult<Option<Value>> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.map(|r| r.json("value")).transpose()
    }

    async fn set_setting(&self, key: &str, value: &Value) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(to_json_text(value))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        feed::record(&mut tx, &Change::Config).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn delete_setting(&self, key: &str) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM settings WHERE key = $1").bind(key).execute(&mut *tx).await.map_err(db_err)?;
        feed::record(&mut tx, &Change::Config).await?;
        tx.commit().await.map_err(db_err)
    }
}
