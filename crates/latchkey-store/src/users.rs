//! `UserStore`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latchkey_core::model::{Change, ListQuery, NewUser, Page, User, UserKind};
use latchkey_core::store::UserStore;
use latchkey_core::StoreError;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::error::{corrupt, db_err, is_unique_violation_on};
use crate::feed;
use crate::policies::Unbind;
use crate::sql::{
    list_page, ms, opt_ms, order_by, stored_time, to_json_text, Arg, Filter, RowExt, SortField, StoreResult,
};
use crate::SqlStore;

const COLS: &str = "id, username, name, email, is_active, kind, attributes, password_hash, password_changed_at, \
                    uid_number, created_at, last_login";

const SORT: &[SortField] = &[
    SortField { name: "username", column: "username", text: true, nullable: false },
    SortField { name: "name", column: "name", text: true, nullable: false },
    SortField { name: "email", column: "email", text: true, nullable: true },
    SortField { name: "created_at", column: "created_at", text: false, nullable: false },
    SortField { name: "last_login", column: "last_login", text: false, nullable: true },
];

/// Concurrent creators can compute the same next number; the unique index refuses one of them.
const ALLOCATION_ATTEMPTS: usize = 64;

fn user_from_row(row: &AnyRow) -> StoreResult<User> {
    let kind = row.text("kind")?;
    Ok(User {
        id: row.uuid("id")?,
        username: row.text("username")?,
        name: row.text("name")?,
        email: row.opt_text("email")?,
        is_active: row.flag("is_active")?,
        kind: UserKind::parse(&kind).ok_or_else(|| corrupt(format!("user kind '{kind}'")))?,
        attributes: row.json("attributes")?,
        password_hash: row.opt_text("password_hash")?,
        password_changed_at: row.opt_time("password_changed_at")?,
        uid_number: row.int("uid_number")?,
        created_at: row.time("created_at")?,
        last_login: row.opt_time("last_login")?,
    })
}

fn username_taken(username: &str) -> StoreError {
    StoreError::Conflict(format!("username '{username}' is already taken"))
}

impl SqlStore {
    async fn user_where(&self, clause: &str, arg: Arg) -> StoreResult<Option<User>> {
        let sql = format!("SELECT {COLS} FROM users WHERE {clause}");
        let row = arg.bind(sqlx::query(&sql)).fetch_optional(self.pool()).await.map_err(db_err)?;
        row.as_ref().map(user_from_row).transpose()
    }
}

#[async_trait]
impl UserStore for SqlStore {
    async fn create_user(&self, user: NewUser) -> StoreResult<User> {
        let sql = format!(
            "INSERT INTO users ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
             (SELECT COALESCE(MAX(uid_number), 1999) + 1 FROM users), $10, NULL) RETURNING uid_number"
        );
        let attributes = to_json_text(&user.attributes);
        for _ in 0..ALLOCATION_ATTEMPTS {
            let result = sqlx::query(&sql)
                .bind(user.id.to_string())
                .bind(&user.username)
                .bind(&user.name)
                .bind(&user.email)
                .bind(user.is_active)
                .bind(user.kind.as_str())
                .bind(&attributes)
                .bind(&user.password_hash)
                .bind(opt_ms(user.password_changed_at))
                .bind(ms(user.created_at))
                .fetch_one(self.pool())
                .await;
            match result {
                Ok(row) => {
                    // Readers of whole-directory snapshots (LDAP) learn of the newcomer.
                    let mut conn = self.pool().acquire().await.map_err(db_err)?;
                    feed::record(&mut conn, &Change::User(user.id)).await?;
                    return Ok(User {
                        id: user.id,
                        username: user.username,
                        name: user.name,
                        email: user.email,
                        is_active: user.is_active,
                        kind: user.kind,
                        attributes: user.attributes,
                        password_hash: user.password_hash,
                        password_changed_at: user.password_changed_at.map(stored_time),
                        uid_number: row.int("uid_number")?,
                        created_at: stored_time(user.created_at),
                        last_login: None,
                    });
                }
                Err(e) if is_unique_violation_on(&e, "uid_number") => continue,
                Err(e) if is_unique_violation_on(&e, "username") => return Err(username_taken(&user.username)),
                Err(e) if is_unique_violation_on(&e, "users") => {
                    return Err(StoreError::Conflict(format!("user {} already exists", user.id)))
                }
                Err(e) => return Err(db_err(e)),
            }
        }
        Err(StoreError::Conflict("could not allocate a uid number; try again".to_string()))
    }

    async fn get_user(&self, id: Uuid) -> StoreResult<Option<User>> {
        self.user_where("id = $1", Arg::text(id.to_string())).await
    }

    async fn get_user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        self.user_where("lower(username) = lower($1)", Arg::text(username)).await
    }

    async fn find_user_by_login(&self, login: &str) -> StoreResult<Option<User>> {
        if let Some(user) = self.get_user_by_username(login).await? {
            return Ok(Some(user));
        }
        // Emails are not unique: an address shared by several accounts identifies none of them.
        let sql = format!("SELECT {COLS} FROM users WHERE lower(email) = lower($1) LIMIT 2");
        let rows = sqlx::query(&sql).bind(login).fetch_all(self.pool()).await.map_err(db_err)?;
        match rows.as_slice() {
            [row] => Ok(Some(user_from_row(row)?)),
            _ => Ok(None),
        }
    }

    async fn list_users(&self, query: &ListQuery) -> StoreResult<Page<User>> {
        let mut filter = Filter::new();
        filter.search(&["username", "name", "email"], query.search.as_deref());
        let order = order_by(SORT, query.ordering.as_deref(), "username", "id ASC");
        list_page(self.pool(), &format!("SELECT {COLS} FROM users"), "FROM users", filter, &order, query, user_from_row)
            .await
    }

    async fn update_user(&self, user: &User) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let result = sqlx::query(
            "UPDATE users SET username = $1, name = $2, email = $3, is_active = $4, kind = $5, attributes = $6 \
             WHERE id = $7",
        )
        .bind(&user.username)
        .bind(&user.name)
        .bind(&user.email)
        .bind(user.is_active)
        .bind(user.kind.as_str())
        .bind(to_json_text(&user.attributes))
        .bind(user.id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation_on(&e, "username") {
                username_taken(&user.username)
            } else {
                db_err(e)
            }
        })?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {}", user.id)));
        }
        feed::record(&mut tx, &Change::User(user.id)).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn set_password_hash(&self, id: Uuid, hash: &str, changed_at: DateTime<Utc>) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let result = sqlx::query("UPDATE users SET password_hash = $1, password_changed_at = $2 WHERE id = $3")
            .bind(hash)
            .bind(ms(changed_at))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {id}")));
        }
        feed::record(&mut tx, &Change::User(id)).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn upgrade_password_hash(&self, id: Uuid, old_hash: &str, new_hash: &str) -> StoreResult<()> {
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2 AND password_hash = $3")
            .bind(new_hash)
            .bind(id.to_string())
            .bind(old_hash)
            .execute(self.pool())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn set_last_login(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query("UPDATE users SET last_login = $1 WHERE id = $2")
            .bind(ms(at))
            .bind(id.to_string())
            .execute(self.pool())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn delete_user(&self, id: Uuid) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        // Memberships, sessions, tokens and consent grants go with it (ON DELETE CASCADE); policy
        // bindings naming it are deleted explicitly.
        let result = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if result.rows_affected() > 0 {
            feed::record(&mut tx, &Change::User(id)).await?;
            if Unbind::Subject("user").run(&mut tx, id).await? > 0 {
                feed::record(&mut tx, &Change::Config).await?;
            }
        }
        tx.commit().await.map_err(db_err)
    }

    async fn count_users(&self) -> StoreResult<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users").fetch_one(self.pool()).await.map_err(db_err)?;
        Ok(u64::try_from(row.int("n")?).unwrap_or(0))
    }

    async fn all_active_users(&self) -> StoreResult<Vec<User>> {
        let sql = format!("SELECT {COLS} FROM users WHERE is_active = $1");
        let rows = sqlx::query(&sql).bind(true).fetch_all(self.pool()).await.map_err(db_err)?;
        rows.iter().map(user_from_row).collect()
    }
}
