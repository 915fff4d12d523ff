//! `GroupStore`.

use async_trait::async_trait;
use latchkey_core::model::{Change, Group, ListQuery, NewGroup, Page};
use latchkey_core::store::GroupStore;
use latchkey_core::StoreError;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::error::{db_err, is_foreign_key_violation, is_unique_violation_on};
use crate::feed;
use crate::policies::Unbind;
use crate::sql::{list_page, ms, order_by, stored_time, to_json_text, Arg, Filter, RowExt, SortField, StoreResult};
use crate::SqlStore;

const COLS: &str = "id, name, parent_id, is_superuser, attributes, gid_number, created_at";

const SORT: &[SortField] = &[
    SortField { name: "name", column: "name", text: true, nullable: false },
    SortField { name: "created_at", column: "created_at", text: false, nullable: false },
];

const ALLOCATION_ATTEMPTS: usize = 64;

fn group_from_row(row: &AnyRow) -> StoreResult<Group> {
    Ok(Group {
        id: row.uuid("id")?,
        name: row.text("name")?,
        parent_id: row.opt_uuid("parent_id")?,
        is_superuser: row.flag("is_superuser")?,
        attributes: row.json("attributes")?,
        gid_number: row.int("gid_number")?,
        created_at: row.time("created_at")?,
    })
}

fn name_taken(name: &str) -> StoreError {
    StoreError::Conflict(format!("group name '{name}' is already taken"))
}

fn no_parent(parent: Option<Uuid>) -> StoreError {
    match parent {
        Some(p) => StoreError::Conflict(format!("parent group {p} does not exist")),
        None => StoreError::Conflict("the group refers to a group that does not exist".to_string()),
    }
}

fn ids_from_rows(rows: &[AnyRow], col: &str) -> StoreResult<Vec<Uuid>> {
    rows.iter().map(|r| r.uuid(col)).collect()
}

impl SqlStore {
    async fn group_where(&self, clause: &str, arg: Arg) -> StoreResult<Option<Group>> {
        let sql = format!("SELECT {COLS} FROM groups WHERE {clause}");
        let row = arg.bind(sqlx::query(&sql)).fetch_optional(self.pool()).await.map_err(db_err)?;
        row.as_ref().map(group_from_row).transpose()
    }

    async fn membership_write(&self, sql: &str, group_id: Uuid, user_id: Uuid) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let result =
            sqlx::query(sql).bind(group_id.to_string()).bind(user_id.to_string()).execute(&mut *tx).await.map_err(
                |e| {
                    if is_foreign_key_violation(&e) {
                        StoreError::NotFound(format!("group {group_id} or user {user_id}"))
                    } else {
                        db_err(e)
                    }
                },
            )?;
        // Idempotent calls that change nothing have nothing to announce.
        if result.rows_affected() > 0 {
            feed::record(&mut tx, &Change::User(user_id)).await?;
        }
        tx.commit().await.map_err(db_err)
    }
}

#[async_trait]
impl GroupStore for SqlStore {
    async fn create_group(&self, group: NewGroup) -> StoreResult<Group> {
        let sql = format!(
            "INSERT INTO groups ({COLS}) VALUES ($1, $2, $3, $4, $5, \
             (SELECT COALESCE(MAX(gid_number), 1999) + 1 FROM groups), $6) RETURNING gid_number"
        );
        let attributes = to_json_text(&group.attributes);
        for _ in 0..ALLOCATION_ATTEMPTS {
            let result = sqlx::query(&sql)
                .bind(group.id.to_string())
                .bind(&group.name)
                .bind(group.parent_id.map(|p| p.to_string()))
                .bind(group.is_superuser)
                .bind(&attributes)
                .bind(ms(group.created_at))
                .fetch_one(self.pool())
                .await;
            match result {
                Ok(row) => {
                    // Group trees cached elsewhere (sessions, LDAP) must see the new group.
                    let mut conn = self.pool().acquire().await.map_err(db_err)?;
                    feed::record(&mut conn, &Change::Groups).await?;
                    return Ok(Group {
                        id: group.id,
                        name: group.name,
                        parent_id: group.parent_id,
                        is_superuser: group.is_superuser,
                        attributes: group.attributes,
                        gid_number: row.int("gid_number")?,
                        created_at: stored_time(group.created_at),
                    });
                }
                Err(e) if is_unique_violation_on(&e, "gid_number") => continue,
                Err(e) if is_unique_violation_on(&e, "name") => return Err(name_taken(&group.name)),
                Err(e) if is_unique_violation_on(&e, "groups") => {
                    return Err(StoreError::Conflict(format!("group {} already exists", group.id)))
                }
                Err(e) if is_foreign_key_violation(&e) => return Err(no_parent(group.parent_id)),
                Err(e) => return Err(db_err(e)),
            }
        }
        Err(StoreError::Conflict("could not allocate a gid number; try again".to_string()))
    }

    async fn get_group(&self, id: Uuid) -> StoreResult<Option<Group>> {
        self.group_where("id = $1", Arg::text(id.to_string())).await
    }

    async fn get_group_by_name(&self, name: &str) -> StoreResult<Option<Group>> {
        self.group_where("lower(name) = lower($1)", Arg::text(name)).await
    }

    async fn list_groups(&self, query: &ListQuery) -> StoreResult<Page<Group>> {
        let mut filter = Filter::new();
        filter.search(&["name"], query.search.as_deref());
        let order = order_by(SORT, query.ordering.as_deref(), "name", "id ASC");
        list_page(
            self.pool(),
            &format!("SELECT {COLS} FROM groups"),
            "FROM groups",
            filter,
            &order,
            query,
            group_from_row,
        )
        .await
    }

    async fn all_groups(&self) -> StoreResult<Vec<Group>> {
        let sql = format!("SELECT {COLS} FROM groups ORDER BY lower(name), name, id");
        let rows = sqlx::query(&sql).fetch_all(self.pool()).await.map_err(db_err)?;
        rows.iter().map(group_from_row).collect()
    }

    async fn update_group(&self, group: &Group) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let result = sqlx::query(
            "UPDATE groups SET name = $1, parent_id = $2, is_superuser = $3, attributes = $4 WHERE id = $5",
        )
        .bind(&group.name)
        .bind(group.parent_id.map(|p| p.to_string()))
        .bind(group.is_superuser)
        .bind(to_json_text(&group.attributes))
        .bind(group.id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation_on(&e, "name") {
                name_taken(&group.name)
            } else if is_foreign_key_violation(&e) {
                no_parent(group.parent_id)
            } else {
                db_err(e)
            }
        })?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("group {}", group.id)));
        }
        feed::record(&mut tx, &Change::Groups).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn delete_group(&self, id: Uuid) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        // Memberships cascade; children's parent_id becomes NULL (ON DELETE SET NULL); policy bindings
        // naming it are deleted explicitly.
        let result = sqlx::query("DELETE FROM groups WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if result.rows_affected() > 0 {
            feed::record(&mut tx, &Change::Groups).await?;
            if Unbind::Subject("group").run(&mut tx, id).await? > 0 {
                feed::record(&mut tx, &Change::Config).await?;
            }
        }
        tx.commit().await.map_err(db_err)
    }

    async fn add_member(&self, group_id: Uuid, user_id: Uuid) -> StoreResult<()> {
        self.membership_write(
            "INSERT INTO group_members (group_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            group_id,
            user_id,
        )
        .await
    }

    async fn remove_member(&self, group_id: Uuid, user_id: Uuid) -> StoreResult<()> {
        self.membership_write("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2", group_id, user_id).await
    }

    async fn direct_group_ids(&self, user_id: Uuid) -> StoreResult<Vec<Uuid>> {
        let rows = sqlx::query("SELECT group_id FROM group_members WHERE user_id = $1 ORDER BY group_id")
            .bind(user_id.to_string())
            .fetch_all(self.pool())
            .await
            .map_err(db_err)?;
        ids_from_rows(&rows, "group_id")
    }

    async fn direct_member_ids(&self, group_id: Uuid) -> StoreResult<Vec<Uuid>> {
        let rows = sqlx::query("SELECT user_id FROM group_members WHERE group_id = $1 ORDER BY user_id")
            .bind(group_id.to_string())
            .fetch_all(self.pool())
            .await
            .map_err(db_err)?;
        ids_from_rows(&rows, "user_id")
    }

    async fn all_memberships(&self) -> StoreResult<Vec<(Uuid, Uuid)>> {
        let rows =
            sqlx::query("SELECT group_id, user_id FROM group_members").fetch_all(self.pool()).await.map_err(db_err)?;
        rows.iter().map(|r| Ok((r.uuid("group_id")?, r.uuid("user_id")?))).collect()
    }
}
