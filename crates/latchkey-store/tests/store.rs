//! The store contract, run against both engines.
//!
//! Every suite function takes a fresh, migrated store; `suite!` instantiates each one as
//! `sqlite::<name>` (a file in a fresh temporary directory) and `postgres::<name>` (a fresh
//! database `lk_test_<hex>` created through `LATCHKEY_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`, dropped afterwards). When PostgreSQL cannot be
//! reached (or `LATCHKEY_TEST_SKIP_POSTGRES` is set) the PostgreSQL tests print a skip line and
//! pass, except with `CI=true`, where they fail.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use latchkey_core::model::*;
use latchkey_core::store::*;
use latchkey_core::StoreError;
use latchkey_store::SqlStore;
use serde_json::json;
use sqlx::Connection;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A fresh database, removed when dropped (also when the test panicked).
struct TestDb {
    store: SqlStore,
    url: String,
    _cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Cleanup::Postgres { admin_url, name } = self {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop runs inside (or after) the test's runtime; use a thread with its own.
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    rt.block_on(async {
                        if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut admin)
                                .await;
                            let _ = admin.close().await;
                        }
                    });
                }
            })
            .join();
        }
    }
}

impl TestDb {
    /// Another store on the same database (as a second process would have).
    async fn second(&self) -> SqlStore {
        SqlStore::connect(&self.url).await.expect("second store connects")
    }

    /// Another fresh database of the same engine.
    async fn sibling(&self, migrate: bool) -> TestDb {
        let db = if self.url.starts_with("sqlite:") {
            Some(sqlite_db(migrate).await)
        } else {
            postgres_db("sibling", migrate).await
        };
        db.expect("PostgreSQL answered a moment ago")
    }
}

fn admin_url() -> String {
    std::env::var("LATCHKEY_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn sqlite_db(migrate: bool) -> TestDb {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("latchkey.db").display());
    let store = SqlStore::connect(&url).await.expect("sqlite connects");
    if migrate {
        store.migrate().await.expect("migrates");
    }
    TestDb { store, url, _cleanup: Cleanup::Sqlite(dir) }
}

/// A fresh PostgreSQL database, or `None` (after printing why) when PostgreSQL is not reachable
/// outside CI.
async fn postgres_db(test: &str, migrate: bool) -> Option<TestDb> {
    let admin = admin_url();
    // scripts/test already found PostgreSQL unreachable (it never sets this under CI).
    if std::env::var("LATCHKEY_TEST_SKIP_POSTGRES").is_ok_and(|v| !v.is_empty()) {
        return unreachable_postgres(test, "LATCHKEY_TEST_SKIP_POSTGRES is set");
    }
    let connected = tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(&admin)).await;
    let mut conn = match connected {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return unreachable_postgres(test, &e.to_string()),
        Err(_) => return unreachable_postgres(test, "timed out"),
    };
    let name = format!("lk_test_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("CREATE DATABASE");
    let _ = conn.close().await;
    let mut url = url::Url::parse(&admin).expect("admin URL parses");
    url.set_path(&format!("/{name}"));
    let cleanup = Cleanup::Postgres { admin_url: admin, name };
    let url = url.to_string();
    let store = SqlStore::connect(&url).await.expect("postgres connects");
    if migrate {
        store.migrate().await.expect("migrates");
    }
    Some(TestDb { store, url, _cleanup: cleanup })
}

fn unreachable_postgres(test: &str, why: &str) -> Option<TestDb> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("PostgreSQL at {} is not reachable ({why}) and CI=true", admin_url());
    }
    eprintln!("SKIPPED postgres::{test}: PostgreSQL at {} is not reachable ({why})", admin_url());
    None
}

async fn run_sqlite<F, Fut>(test: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    test(sqlite_db(true).await).await;
}

async fn run_postgres<F, Fut>(name: &str, test: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some(db) = postgres_db(name, true).await {
        test(db).await;
    }
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::run_sqlite(super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::run_postgres(stringify!($name), super::$name).await;
                }
            )*
        }
    };
}

suite!(
    migrate_is_idempotent,
    users_crud,
    usernames_are_unique_case_insensitively,
    find_user_by_login_prefers_username,
    list_users_searches_orders_and_pages,
    uid_numbers_start_at_2000_and_are_stable,
    groups_crud_parents_and_membership,
    delete_user_cascades,
    sessions_lifecycle,
    flows_stages_and_bindings,
    flow_state_respects_expiry,
    insert_flow_state_is_single_use,
    tokens_find_and_consume,
    consume_token_is_atomic,
    events_newest_first_with_filters,
    settings_get_set_and_delete,
    change_feed_reaches_other_stores,
    backup_restore_round_trip,
    backup_pages_through_large_tables,
    restore_refuses_non_empty_or_newer,
    policies_upsert_by_name,
    policy_bindings_order_upsert_and_cleanup,
    policy_bindings_go_with_flows_and_stages,
    applications_providers_and_outposts,
    consent_grants,
    throttles_put_get_list_delete,
    reputation_clamps_and_is_atomic,
    authenticator_devices_crud_and_replay,
    app_passwords_crud_and_change,
);

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).single().expect("valid time")
}

fn new_user(username: &str) -> NewUser {
    NewUser {
        id: Uuid::now_v7(),
        username: username.into(),
        name: format!("{username} name"),
        email: Some(format!("{username}@example.test")),
        is_active: true,
        kind: UserKind::Internal,
        attributes: json!({"team": "blue"}),
        password_hash: Some("$argon2id$v=19$stub".into()),
        password_changed_at: Some(t(0)),
        created_at: t(0),
    }
}

fn new_group(name: &str, parent_id: Option<Uuid>) -> NewGroup {
    NewGroup {
        id: Uuid::now_v7(),
        name: name.into(),
        parent_id,
        is_superuser: false,
        attributes: json!({}),
        created_at: t(0),
    }
}

fn session(user_id: Uuid, key_hash: &str, created: i64) -> Session {
    Session {
        key_hash: key_hash.into(),
        id: key_hash[..8.min(key_hash.len())].to_string(),
        user_id,
        created_at: t(created),
        last_seen: t(created),
        expires_at: t(created + 3600),
        client_ip: Some("192.0.2.1".into()),
        user_agent: Some("test".into()),
        amr: vec!["pwd".into(), "otp".into()],
    }
}

fn token(kind: TokenKind, user_id: Option<Uuid>, secret_hash: &str, expires_at: Option<DateTime<Utc>>) -> Token {
    Token {
        id: Uuid::now_v7(),
        secret_hash: secret_hash.into(),
        kind,
        user_id,
        description: "test token".into(),
        created_at: t(0),
        expires_at,
        used_at: None,
    }
}

fn event(action: &str, at: i64, user: Option<(Uuid, &str)>) -> Event {
    Event {
        id: Uuid::now_v7(),
        created_at: t(at),
        action: action.into(),
        user_id: user.map(|u| u.0),
        username: user.map(|u| u.1.to_string()),
        client_ip: Some("198.51.100.7".into()),
        context: json!({"at": at}),
    }
}

fn query(search: Option<&str>, ordering: Option<&str>, page: u32, page_size: u32) -> ListQuery {
    ListQuery { search: search.map(Into::into), ordering: ordering.map(Into::into), page, page_size }
}

fn usernames(page: &Page<User>) -> Vec<&str> {
    page.items.iter().map(|u| u.username.as_str()).collect()
}

/// Waits up to `within` for `wanted` on `rx`, ignoring other changes.
async fn expect_change(rx: &mut tokio::sync::broadcast::Receiver<Change>, wanted: &Change, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(c)) if &c == wanted => return,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("change feed failed while waiting for {wanted:?}: {e}"),
            Err(_) => panic!("no {wanted:?} within {within:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------------

async fn migrate_is_idempotent(db: TestDb) {
    let latest = SqlStore::latest_schema_version();
    assert!(latest >= 1);
    assert_eq!(db.store.schema_version().await.unwrap(), latest);
    assert_eq!(db.store.migrate().await.unwrap(), (latest, latest), "second migrate is a no-op");
    db.store.ping().await.unwrap();

    let fresh = db.sibling(false).await;
    assert_eq!(fresh.store.schema_version().await.unwrap(), 0);
    assert_eq!(fresh.store.migrate().await.unwrap(), (0, latest));

    // Two processes migrating one database at once: one does the work, the other waits and
    // finds it done.
    let racing = db.sibling(false).await;
    let other = racing.second().await;
    let (a, b) = tokio::join!(racing.store.migrate(), other.migrate());
    assert_eq!(a.unwrap().1, latest);
    assert_eq!(b.unwrap().1, latest);
    assert_eq!(other.schema_version().await.unwrap(), latest);
    other.close().await;
    racing.store.close().await;
    fresh.store.close().await;
    db.store.close().await;
}

async fn users_crud(db: TestDb) {
    let s = &db.store;
    assert_eq!(s.count_users().await.unwrap(), 0);
    let created = s.create_user(new_user("alice")).await.unwrap();
    assert_eq!(created.uid_number, 2000);
    let got = s.get_user(created.id).await.unwrap().expect("exists");
    assert_eq!(got, created, "what create returns is what is stored");
    assert_eq!(got.attributes, json!({"team": "blue"}));
    assert_eq!(got.password_changed_at, Some(t(0)));
    assert_eq!(s.get_user_by_username("ALICE").await.unwrap().map(|u| u.id), Some(created.id));
    assert_eq!(s.get_user(Uuid::now_v7()).await.unwrap(), None);

    let mut changed = got.clone();
    changed.username = "Alice2".into();
    changed.name = "Alice Example".into();
    changed.email = None;
    changed.is_active = false;
    changed.kind = UserKind::ServiceAccount;
    changed.attributes = json!({"a": [1, 2]});
    s.update_user(&changed).await.unwrap();
    assert_eq!(s.get_user(created.id).await.unwrap().unwrap(), changed);

    s.set_password_hash(created.id, "new-hash", t(50)).await.unwrap();
    let u = s.get_user(created.id).await.unwrap().unwrap();
    assert_eq!(u.password_hash.as_deref(), Some("new-hash"));
    assert_eq!(u.password_changed_at, Some(t(50)));

    // A rehash only replaces the hash it was computed from.
    s.upgrade_password_hash(created.id, "stale-hash", "rehash").await.unwrap();
    assert_eq!(s.get_user(created.id).await.unwrap().unwrap().password_hash.as_deref(), Some("new-hash"));
    s.upgrade_password_hash(created.id, "new-hash", "rehash").await.unwrap();
    assert_eq!(s.get_user(created.id).await.unwrap().unwrap().password_hash.as_deref(), Some("rehash"));

    s.set_last_login(created.id, t(99)).await.unwrap();
    assert_eq!(s.get_user(created.id).await.unwrap().unwrap().last_login, Some(t(99)));

    let missing = User { id: Uuid::now_v7(), ..changed.clone() };
    assert!(matches!(s.update_user(&missing).await, Err(StoreError::NotFound(_))));
    assert!(matches!(s.set_password_hash(missing.id, "x", t(1)).await, Err(StoreError::NotFound(_))));

    assert_eq!(s.count_users().await.unwrap(), 1);
    s.delete_user(created.id).await.unwrap();
    assert_eq!(s.get_user(created.id).await.unwrap(), None);
    assert_eq!(s.count_users().await.unwrap(), 0);
    s.delete_user(created.id).await.unwrap();
    db.store.close().await;
}

async fn usernames_are_unique_case_insensitively(db: TestDb) {
    let s = &db.store;
    s.create_user(new_user("bob")).await.unwrap();
    match s.create_user(new_user("BoB")).await {
        Err(StoreError::Conflict(msg)) => assert_eq!(msg, "username 'BoB' is already taken"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let carol = s.create_user(new_user("carol")).await.unwrap();
    let renamed = User { username: "BOB".into(), ..carol.clone() };
    assert!(matches!(s.update_user(&renamed).await, Err(StoreError::Conflict(m)) if m.contains("already taken")));
    // Changing only the case of one's own name is fine.
    s.update_user(&User { username: "Carol".into(), ..carol }).await.unwrap();
    assert_eq!(s.count_users().await.unwrap(), 2);
    db.store.close().await;
}

async fn find_user_by_login_prefers_username(db: TestDb) {
    let s = &db.store;
    let dave = s.create_user(new_user("dave")).await.unwrap();
    assert_eq!(s.find_user_by_login("DAVE").await.unwrap().map(|u| u.id), Some(dave.id));
    assert_eq!(s.find_user_by_login("Dave@Example.TEST").await.unwrap().map(|u| u.id), Some(dave.id));
    assert_eq!(s.find_user_by_login("nobody").await.unwrap(), None);

    // A username that looks like someone else's email wins over that email.
    let mut erin = new_user("dave@example.test");
    erin.email = None;
    let erin = s.create_user(erin).await.unwrap();
    assert_eq!(s.find_user_by_login("dave@example.test").await.unwrap().map(|u| u.id), Some(erin.id));

    // An email shared by two accounts identifies neither.
    let mut f1 = new_user("frank");
    f1.email = Some("shared@example.test".into());
    let mut f2 = new_user("fiona");
    f2.email = Some("Shared@example.test".into());
    s.create_user(f1).await.unwrap();
    s.create_user(f2).await.unwrap();
    assert_eq!(s.find_user_by_login("shared@example.test").await.unwrap(), None);
    db.store.close().await;
}

async fn list_users_searches_orders_and_pages(db: TestDb) {
    let s = &db.store;
    for (i, name) in ["carol", "alice", "bob", "alfred", "dan_x"].iter().enumerate() {
        let mut u = new_user(name);
        u.created_at = t(i as i64);
        s.create_user(u).await.unwrap();
    }
    let all = s.list_users(&ListQuery::all()).await.unwrap();
    assert_eq!(all.total, 5);
    assert_eq!(usernames(&all), ["alfred", "alice", "bob", "carol", "dan_x"], "default ordering is username");

    let desc = s.list_users(&query(None, Some("-username"), 1, 100)).await.unwrap();
    assert_eq!(usernames(&desc), ["dan_x", "carol", "bob", "alice", "alfred"]);
    let by_created = s.list_users(&query(None, Some("created_at"), 1, 100)).await.unwrap();
    assert_eq!(usernames(&by_created), ["carol", "alice", "bob", "alfred", "dan_x"]);
    let unknown = s.list_users(&query(None, Some("password_hash"), 1, 100)).await.unwrap();
    assert_eq!(usernames(&unknown), usernames(&all), "unknown ordering falls back to the default");

    let search = s.list_users(&query(Some("AL"), None, 1, 100)).await.unwrap();
    assert_eq!((usernames(&search), search.total), (vec!["alfred", "alice"], 2));
    let by_email = s.list_users(&query(Some("bob@EXAMPLE"), None, 1, 100)).await.unwrap();
    assert_eq!(usernames(&by_email), ["bob"]);
    // LIKE wildcards in a search are literal.
    let underscore = s.list_users(&query(Some("n_x"), None, 1, 100)).await.unwrap();
    assert_eq!(usernames(&underscore), ["dan_x"]);
    let percent = s.list_users(&query(Some("%"), None, 1, 100)).await.unwrap();
    assert_eq!(percent.total, 0);

    let p2 = s.list_users(&query(None, None, 2, 2)).await.unwrap();
    assert_eq!((usernames(&p2), p2.total), (vec!["bob", "carol"], 5));
    let p3 = s.list_users(&query(None, None, 3, 2)).await.unwrap();
    assert_eq!(usernames(&p3), ["dan_x"]);
    let p9 = s.list_users(&query(None, None, 9, 2)).await.unwrap();
    assert_eq!((p9.items.len(), p9.total), (0, 5));
    let searched_page = s.list_users(&query(Some("al"), Some("-username"), 2, 1)).await.unwrap();
    assert_eq!((usernames(&searched_page), searched_page.total), (vec!["alfred"], 2));
    db.store.close().await;
}

async fn uid_numbers_start_at_2000_and_are_stable(db: TestDb) {
    let s = &db.store;
    let a = s.create_user(new_user("u1")).await.unwrap();
    let b = s.create_user(new_user("u2")).await.unwrap();
    assert_eq!((a.uid_number, b.uid_number), (2000, 2001));
    s.update_user(&User { name: "renamed".into(), ..a.clone() }).await.unwrap();
    assert_eq!(s.get_user(a.id).await.unwrap().unwrap().uid_number, 2000, "stable across updates");

    // Concurrent creators each get their own number.
    let mut handles = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        handles.push(tokio::spawn(async move { s.create_user(new_user(&format!("c{i}"))).await.unwrap().uid_number }));
    }
    let mut numbers = Vec::new();
    for h in handles {
        numbers.push(h.await.unwrap());
    }
    numbers.sort();
    assert_eq!(numbers, (2002..2010).collect::<Vec<_>>());

    let g = s.create_group(new_group("g1", None)).await.unwrap();
    assert_eq!(g.gid_number, 2000);
    assert_eq!(s.create_group(new_group("g2", None)).await.unwrap().gid_number, 2001);
    db.store.close().await;
}

async fn groups_crud_parents_and_membership(db: TestDb) {
    let s = &db.store;
    let parent = s.create_group(new_group("Family", None)).await.unwrap();
    let child = s.create_group(new_group("kids", Some(parent.id))).await.unwrap();
    assert_eq!(s.get_group(child.id).await.unwrap().unwrap(), child);
    assert_eq!(s.get_group_by_name("FAMILY").await.unwrap().map(|g| g.id), Some(parent.id));
    match s.create_group(new_group("family", None)).await {
        Err(StoreError::Conflict(m)) => assert_eq!(m, "group name 'family' is already taken"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(s.create_group(new_group("orphan", Some(Uuid::now_v7()))).await, Err(StoreError::Conflict(_))));

    let mut admins = s.create_group(new_group("admins", None)).await.unwrap();
    admins.is_superuser = true;
    admins.attributes = json!({"k": "v"});
    admins.parent_id = Some(parent.id);
    s.update_group(&admins).await.unwrap();
    assert_eq!(s.get_group(admins.id).await.unwrap().unwrap(), admins);
    let clash = Group { name: "KIDS".into(), ..admins.clone() };
    assert!(matches!(s.update_group(&clash).await, Err(StoreError::Conflict(_))));

    let names: Vec<String> = s.all_groups().await.unwrap().into_iter().map(|g| g.name).collect();
    assert_eq!(names, ["admins", "Family", "kids"]);
    let listed = s.list_groups(&query(Some("i"), Some("-name"), 1, 10)).await.unwrap();
    assert_eq!(listed.items.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["kids", "Family", "admins"]);
    let listed = s.list_groups(&query(Some("ad"), None, 1, 10)).await.unwrap();
    assert_eq!((listed.items.len(), listed.total), (1, 1));

    let user = s.create_user(new_user("gina")).await.unwrap();
    s.add_member(child.id, user.id).await.unwrap();
    s.add_member(child.id, user.id).await.unwrap();
    s.add_member(parent.id, user.id).await.unwrap();
    let mut ids = s.direct_group_ids(user.id).await.unwrap();
    ids.sort();
    let mut expected = vec![child.id, parent.id];
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(s.direct_member_ids(child.id).await.unwrap(), [user.id]);
    // The whole-directory reads the LDAP snapshot makes: every membership, every active user.
    let mut all = s.all_memberships().await.unwrap();
    all.sort();
    let mut expected_pairs = vec![(child.id, user.id), (parent.id, user.id)];
    expected_pairs.sort();
    assert_eq!(all, expected_pairs);
    let mut inactive = s.create_user(new_user("hidden")).await.unwrap();
    inactive.is_active = false;
    s.update_user(&inactive).await.unwrap();
    let active: Vec<String> = s.all_active_users().await.unwrap().into_iter().map(|u| u.username).collect();
    assert!(active.contains(&"gina".to_string()) && !active.contains(&"hidden".to_string()), "{active:?}");
    s.remove_member(child.id, user.id).await.unwrap();
    s.remove_member(child.id, user.id).await.unwrap();
    assert_eq!(s.direct_group_ids(user.id).await.unwrap(), [parent.id]);
    assert!(s.add_member(Uuid::now_v7(), user.id).await.is_err());

    // Deleting a group drops its memberships and makes its children top-level.
    s.delete_group(parent.id).await.unwrap();
    assert_eq!(s.get_group(parent.id).await.unwrap(), None);
    assert_eq!(s.get_group(child.id).await.unwrap().unwrap().parent_id, None);
    assert_eq!(s.get_group(admins.id).await.unwrap().unwrap().parent_id, None);
    assert!(s.direct_group_ids(user.id).await.unwrap().is_empty());
    assert!(matches!(s.update_group(&Group { id: Uuid::now_v7(), ..child }).await, Err(StoreError::NotFound(_))));
    db.store.close().await;
}

async fn delete_user_cascades(db: TestDb) {
    let s = &db.store;
    let user = s.create_user(new_user("henry")).await.unwrap();
    let other = s.create_user(new_user("irene")).await.unwrap();
    let group = s.create_group(new_group("staff", None)).await.unwrap();
    s.add_member(group.id, user.id).await.unwrap();
    s.add_member(group.id, other.id).await.unwrap();
    s.create_session(&session(user.id, "aaaaaaaaaaaa", 0)).await.unwrap();
    s.create_session(&session(other.id, "bbbbbbbbbbbb", 0)).await.unwrap();
    s.create_token(&token(TokenKind::Api, Some(user.id), "h1", None)).await.unwrap();
    s.create_token(&token(TokenKind::Api, Some(other.id), "h2", None)).await.unwrap();
    s.record_event(&event("login", 1, Some((user.id, "henry")))).await.unwrap();

    s.delete_user(user.id).await.unwrap();
    assert_eq!(s.direct_member_ids(group.id).await.unwrap(), [other.id]);
    assert_eq!(s.get_session("aaaaaaaaaaaa").await.unwrap(), None);
    assert!(s.list_tokens(Some(user.id)).await.unwrap().is_empty());
    assert_eq!(s.list_sessions(None).await.unwrap().len(), 1);
    assert_eq!(s.list_tokens(None).await.unwrap().len(), 1);
    // The audit trail outlives the account.
    let filter = EventFilter { user_id: Some(user.id), ..Default::default() };
    assert_eq!(s.list_events(&filter, &ListQuery::default()).await.unwrap().total, 1);
    db.store.close().await;
}

async fn sessions_lifecycle(db: TestDb) {
    let s = &db.store;
    let user = s.create_user(new_user("jack")).await.unwrap();
    let other = s.create_user(new_user("kate")).await.unwrap();
    let s1 = session(user.id, "abcdef0011", 0);
    let s2 = session(user.id, "abcdef2233", 10);
    let s3 = session(other.id, "ffff000011", 20);
    for x in [&s1, &s2, &s3] {
        s.create_session(x).await.unwrap();
    }
    assert!(matches!(s.create_session(&s1).await, Err(StoreError::Conflict(_))));
    assert!(s.create_session(&session(Uuid::now_v7(), "zzzzzzzz", 0)).await.is_err(), "needs an existing user");
    assert_eq!(s.get_session("abcdef0011").await.unwrap().unwrap(), s1);
    assert_eq!(s.get_session("nope").await.unwrap(), None);

    let listed = s.list_sessions(Some(user.id)).await.unwrap();
    assert_eq!(listed, [s2.clone(), s1.clone()], "newest first");
    assert_eq!(s.list_sessions(None).await.unwrap().len(), 3);

    let found: Vec<String> = s.find_sessions_by_id("abcdef").await.unwrap().into_iter().map(|x| x.key_hash).collect();
    assert_eq!(found, ["abcdef0011", "abcdef2233"]);
    assert_eq!(s.find_sessions_by_id("abcdef00").await.unwrap().len(), 1);
    assert!(s.find_sessions_by_id("ABCDEF").await.unwrap().is_empty(), "prefixes are case-sensitive");
    assert!(s.find_sessions_by_id("ab%").await.unwrap().is_empty(), "wildcards are literal");

    s.touch_session("abcdef0011", t(500)).await.unwrap();
    assert_eq!(s.get_session("abcdef0011").await.unwrap().unwrap().last_seen, t(500));
    s.touch_session("abcdef0011", t(400)).await.unwrap();
    assert_eq!(s.get_session("abcdef0011").await.unwrap().unwrap().last_seen, t(500), "never backwards");

    s.delete_session("abcdef0011").await.unwrap();
    s.delete_session("abcdef0011").await.unwrap();
    assert_eq!(s.get_session("abcdef0011").await.unwrap(), None);
    assert_eq!(s.delete_user_sessions(user.id).await.unwrap(), 1);
    assert_eq!(s.delete_user_sessions(user.id).await.unwrap(), 0);

    // Expiry: absolute (expires_at) and idle (last_seen).
    s.create_session(&session(user.id, "exp-abs", 0)).await.unwrap(); // expires at t(3600)
    s.create_session(&session(user.id, "exp-idle", 3000)).await.unwrap(); // last seen t(3000)
    s.create_session(&session(user.id, "alive", 3500)).await.unwrap();
    let ended = s.delete_expired_sessions(t(3600), t(3200)).await.unwrap();
    assert_eq!(ended, 3, "exp-abs, exp-idle and kate's ffff000011 (last seen t(20))");
    let left: Vec<String> = s.list_sessions(None).await.unwrap().into_iter().map(|x| x.key_hash).collect();
    assert_eq!(left, ["alive"]);
    db.store.close().await;
}

async fn flows_stages_and_bindings(db: TestDb) {
    let s = &db.store;
    let flow = Flow {
        id: Uuid::now_v7(),
        slug: "default-authentication-flow".into(),
        name: "Login".into(),
        title: "Welcome".into(),
        designation: FlowDesignation::Authentication,
        settings: json!({"a": 1}),
        created_at: t(0),
    };
    let stored = s.upsert_flow(&flow).await.unwrap();
    assert_eq!(stored, flow);
    let again = Flow { id: Uuid::now_v7(), title: "Hello".into(), created_at: t(100), ..flow.clone() };
    let updated = s.upsert_flow(&again).await.unwrap();
    assert_eq!(updated.id, flow.id, "the id is kept on update");
    assert_eq!(updated.created_at, t(0));
    assert_eq!(updated.title, "Hello");
    assert_eq!(s.get_flow_by_slug(&flow.slug).await.unwrap().unwrap(), updated);
    assert_eq!(s.get_flow_by_slug("nope").await.unwrap(), None);

    let mut stages = Vec::new();
    for name in ["ident", "password", "login"] {
        let st =
            Stage { id: Uuid::now_v7(), name: name.into(), kind: name.into(), config: json!({}), created_at: t(0) };
        stages.push(s.upsert_stage(&st).await.unwrap());
    }
    let re = Stage { id: Uuid::now_v7(), config: json!({"x": true}), ..stages[0].clone() };
    let re = s.upsert_stage(&re).await.unwrap();
    assert_eq!(re.id, stages[0].id);
    assert_eq!(s.get_stage(re.id).await.unwrap().unwrap().config, json!({"x": true}));
    assert_eq!(s.get_stage_by_name("password").await.unwrap().unwrap().id, stages[1].id);
    assert_eq!(s.list_stages().await.unwrap().len(), 3);

    // Bound out of order; read back by order.
    for (stage, order) in [(&stages[2], 30), (&stages[0], 10), (&stages[1], 20)] {
        let b =
            FlowStageBinding { id: Uuid::now_v7(), flow_id: flow.id, stage_id: stage.id, order, settings: json!({}) };
        assert_eq!(s.upsert_binding(&b).await.unwrap(), b);
    }
    let bindings = s.flow_bindings(flow.id).await.unwrap();
    let order: Vec<(i64, &str)> = bindings.iter().map(|(b, st)| (b.order, st.name.as_str())).collect();
    assert_eq!(order, [(10, "ident"), (20, "password"), (30, "login")]);
    assert_eq!(bindings[0].1.config, json!({"x": true}));

    let rebind = FlowStageBinding { id: Uuid::now_v7(), settings: json!({"mode": "any"}), ..bindings[1].0.clone() };
    let rebound = s.upsert_binding(&rebind).await.unwrap();
    assert_eq!(rebound.id, bindings[1].0.id, "the binding id is kept on update");
    assert_eq!(s.flow_bindings(flow.id).await.unwrap()[1].0.settings, json!({"mode": "any"}));
    let dangling = FlowStageBinding { stage_id: Uuid::now_v7(), ..rebind.clone() };
    assert!(s.upsert_binding(&dangling).await.is_err());

    s.delete_binding(bindings[0].0.id).await.unwrap();
    assert_eq!(s.flow_bindings(flow.id).await.unwrap().len(), 2);
    s.delete_stage(stages[1].id).await.unwrap();
    assert_eq!(s.flow_bindings(flow.id).await.unwrap().len(), 1, "bindings of a deleted stage go too");
    assert_eq!(s.list_flows().await.unwrap().len(), 1);
    s.delete_flow(flow.id).await.unwrap();
    assert!(s.list_flows().await.unwrap().is_empty());
    assert!(s.flow_bindings(flow.id).await.unwrap().is_empty());
    db.store.close().await;
}

async fn flow_state_respects_expiry(db: TestDb) {
    let s = &db.store;
    let state = FlowStateRecord { key: "k1".into(), data: json!({"step": 1}), expires_at: t(100) };
    s.put_flow_state(&state).await.unwrap();
    assert_eq!(s.get_flow_state("k1", t(99)).await.unwrap(), Some(state.clone()));
    assert_eq!(s.get_flow_state("k1", t(100)).await.unwrap(), None, "expired at expires_at");
    let next = FlowStateRecord { data: json!({"step": 2}), expires_at: t(200), ..state.clone() };
    s.put_flow_state(&next).await.unwrap();
    assert_eq!(s.get_flow_state("k1", t(150)).await.unwrap(), Some(next));
    s.put_flow_state(&FlowStateRecord { key: "k2".into(), data: json!(null), expires_at: t(50) }).await.unwrap();
    assert_eq!(s.delete_expired_flow_states(t(60)).await.unwrap(), 1);
    s.delete_flow_state("k1").await.unwrap();
    assert_eq!(s.get_flow_state("k1", t(0)).await.unwrap(), None);
    db.store.close().await;
}

async fn insert_flow_state_is_single_use(db: TestDb) {
    let s = std::sync::Arc::new(db.store.clone());
    let first = FlowStateRecord { key: "jti:a".into(), data: json!({"n": 1}), expires_at: t(100) };
    assert!(s.insert_flow_state(&first, t(10)).await.unwrap());
    let again = FlowStateRecord { data: json!({"n": 2}), ..first.clone() };
    assert!(!s.insert_flow_state(&again, t(20)).await.unwrap(), "an unexpired key is taken");
    assert_eq!(s.get_flow_state("jti:a", t(20)).await.unwrap(), Some(first.clone()), "and left alone");
    // Once expired (and before housekeeping removes it), the key is free again.
    let later = FlowStateRecord { expires_at: t(300), ..again.clone() };
    assert!(s.insert_flow_state(&later, t(100)).await.unwrap());
    assert_eq!(s.get_flow_state("jti:a", t(150)).await.unwrap(), Some(later));
    // Concurrent inserts of one key: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let r = FlowStateRecord { key: "jti:race".into(), data: json!({"n": i}), expires_at: t(1000) };
            s.insert_flow_state(&r, t(10)).await.unwrap()
        }));
    }
    let mut wins = 0;
    for task in tasks {
        wins += usize::from(task.await.unwrap());
    }
    assert_eq!(wins, 1);
    db.store.close().await;
}

async fn tokens_find_and_consume(db: TestDb) {
    let s = &db.store;
    let user = s.create_user(new_user("leo")).await.unwrap();
    let api = token(TokenKind::Api, Some(user.id), "api-hash", None);
    let rec = token(TokenKind::Recovery, Some(user.id), "rec-hash", Some(t(100)));
    let setup = token(TokenKind::Setup, None, "setup-hash", None);
    for x in [&api, &rec, &setup] {
        s.create_token(x).await.unwrap();
    }
    assert!(matches!(s.create_token(&api).await, Err(StoreError::Conflict(_))));

    assert_eq!(s.find_token(TokenKind::Api, "api-hash", t(0)).await.unwrap(), Some(api.clone()));
    assert_eq!(s.find_token(TokenKind::Recovery, "api-hash", t(0)).await.unwrap(), None, "kind must match");
    assert_eq!(s.find_token(TokenKind::Recovery, "rec-hash", t(99)).await.unwrap(), Some(rec.clone()));
    assert_eq!(s.find_token(TokenKind::Recovery, "rec-hash", t(100)).await.unwrap(), None, "expired");
    assert!(s.find_token(TokenKind::Setup, "setup-hash", t(0)).await.unwrap().is_some());

    assert!(!s.consume_token(rec.id, t(100)).await.unwrap(), "expired tokens cannot be consumed");
    assert!(s.consume_token(rec.id, t(50)).await.unwrap());
    assert!(!s.consume_token(rec.id, t(51)).await.unwrap(), "only once");
    assert_eq!(s.find_token(TokenKind::Recovery, "rec-hash", t(60)).await.unwrap(), None, "used");
    assert!(!s.consume_token(Uuid::now_v7(), t(0)).await.unwrap());
    // Used or expired, a token is still found for replay detection, by kind and hash only.
    assert_eq!(s.find_token_any(TokenKind::Recovery, "rec-hash").await.unwrap().map(|x| x.used_at), Some(Some(t(50))));
    assert_eq!(s.find_token_any(TokenKind::Api, "rec-hash").await.unwrap(), None, "kind must match");
    assert_eq!(s.find_token_any(TokenKind::Recovery, "nope").await.unwrap(), None);

    let mine: Vec<Uuid> = s.list_tokens(Some(user.id)).await.unwrap().into_iter().map(|x| x.id).collect();
    assert_eq!(mine.len(), 2);
    assert!(mine.contains(&api.id) && mine.contains(&rec.id));
    let used = s.list_tokens(Some(user.id)).await.unwrap().into_iter().find(|x| x.id == rec.id).unwrap();
    assert_eq!(used.used_at, Some(t(50)));
    assert_eq!(s.list_tokens(None).await.unwrap().len(), 3);
    s.delete_token(api.id).await.unwrap();
    assert_eq!(s.find_token(TokenKind::Api, "api-hash", t(0)).await.unwrap(), None);
    // Purging: only what expired before the cut-off; tokens without expiry stay.
    assert_eq!(s.delete_expired_tokens(t(100)).await.unwrap(), 0, "expires at 100: not before 100");
    assert_eq!(s.delete_expired_tokens(t(101)).await.unwrap(), 1);
    assert_eq!(s.find_token_any(TokenKind::Recovery, "rec-hash").await.unwrap(), None);
    assert!(s.find_token(TokenKind::Setup, "setup-hash", t(1000)).await.unwrap().is_some());
    db.store.close().await;
}

async fn consume_token_is_atomic(db: TestDb) {
    let s = &db.store;
    for round in 0..10 {
        let tok = token(TokenKind::Setup, None, &format!("race-{round}"), None);
        s.create_token(&tok).await.unwrap();
        let (a, b) = (s.clone(), s.clone());
        let ha = tokio::spawn(async move { a.consume_token(tok.id, t(1)).await.unwrap() });
        let hb = tokio::spawn(async move { b.consume_token(tok.id, t(2)).await.unwrap() });
        let (ra, rb) = (ha.await.unwrap(), hb.await.unwrap());
        assert!(ra ^ rb, "exactly one of two concurrent consumers wins (round {round}: {ra} {rb})");
    }
    db.store.close().await;
}

async fn events_newest_first_with_filters(db: TestDb) {
    let s = &db.store;
    let uid = Uuid::now_v7();
    let evs = [
        event("login", 10, Some((uid, "Mia"))),
        event("login_failed", 20, Some((uid, "Mia"))),
        event("login", 30, Some((Uuid::now_v7(), "ned"))),
        event("user_created", 40, None),
        event("login", 50, Some((uid, "Mia"))),
    ];
    for e in &evs {
        s.record_event(e).await.unwrap();
    }
    let all = s.list_events(&EventFilter::default(), &ListQuery::default()).await.unwrap();
    assert_eq!(all.total, 5);
    assert_eq!(all.items.iter().map(|e| e.created_at).collect::<Vec<_>>(), [t(50), t(40), t(30), t(20), t(10)]);
    assert_eq!(all.items[0], evs[4]);

    let logins = EventFilter { action: Some("login".into()), ..Default::default() };
    assert_eq!(s.list_events(&logins, &ListQuery::default()).await.unwrap().total, 3);
    let mine = EventFilter { user_id: Some(uid), ..Default::default() };
    assert_eq!(s.list_events(&mine, &ListQuery::default()).await.unwrap().total, 3);
    let by_name = EventFilter { username: Some("mia".into()), action: Some("login".into()), ..Default::default() };
    assert_eq!(s.list_events(&by_name, &ListQuery::default()).await.unwrap().total, 2);
    let window = EventFilter { since: Some(t(20)), until: Some(t(40)), ..Default::default() };
    let w = s.list_events(&window, &ListQuery::default()).await.unwrap();
    assert_eq!(w.items.iter().map(|e| e.created_at).collect::<Vec<_>>(), [t(30), t(20)], "since ≤ t < until");

    let page = s.list_events(&EventFilter::default(), &query(None, None, 2, 2)).await.unwrap();
    assert_eq!((page.items.iter().map(|e| e.created_at).collect::<Vec<_>>(), page.total), (vec![t(30), t(20)], 5));
    let oldest_first = s.list_events(&EventFilter::default(), &query(None, Some("created_at"), 1, 1)).await.unwrap();
    assert_eq!(oldest_first.items[0].created_at, t(10));
    let searched = s.list_events(&EventFilter::default(), &query(Some("FAILED"), None, 1, 10)).await.unwrap();
    assert_eq!(searched.total, 1);
    db.store.close().await;
}

async fn settings_get_set_and_delete(db: TestDb) {
    let s = &db.store;
    assert_eq!(s.get_setting("branding").await.unwrap(), None);
    s.set_setting("branding", &json!({"title": "Home"})).await.unwrap();
    assert_eq!(s.get_setting("branding").await.unwrap(), Some(json!({"title": "Home"})));
    s.set_setting("branding", &json!("plain")).await.unwrap();
    assert_eq!(s.get_setting("branding").await.unwrap(), Some(json!("plain")));
    s.set_setting("other", &json!(2)).await.unwrap();
    s.delete_setting("branding").await.unwrap();
    assert_eq!(s.get_setting("branding").await.unwrap(), None);
    assert_eq!(s.get_setting("other").await.unwrap(), Some(json!(2)), "only the named setting goes");
    s.delete_setting("branding").await.unwrap();
    db.store.close().await;
}

async fn change_feed_reaches_other_stores(db: TestDb) {
    let writer = &db.store;
    let reader = db.second().await;
    let mut theirs = reader.subscribe();
    let mut ours = writer.subscribe();
    // Changes recorded before a store connected are not replayed.
    let user = writer.create_user(new_user("olga")).await.unwrap();
    writer.create_session(&session(user.id, "feedfeedfeed", 0)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let within = Duration::from_millis(1500);
    writer.delete_session("feedfeedfeed").await.unwrap();
    expect_change(&mut theirs, &Change::Session("feedfeedfeed".into()), within).await;
    expect_change(&mut ours, &Change::Session("feedfeedfeed".into()), within).await;

    writer.set_password_hash(user.id, "h", t(1)).await.unwrap();
    expect_change(&mut theirs, &Change::User(user.id), within).await;

    let group = writer.create_group(new_group("feeders", None)).await.unwrap();
    writer.add_member(group.id, user.id).await.unwrap();
    expect_change(&mut theirs, &Change::User(user.id), within).await;
    writer.update_group(&Group { is_superuser: true, ..group }).await.unwrap();
    expect_change(&mut theirs, &Change::Groups, within).await;
    writer.set_setting("x", &json!(1)).await.unwrap();
    expect_change(&mut theirs, &Change::Config, within).await;

    // And the other way round.
    reader.delete_user(user.id).await.unwrap();
    expect_change(&mut ours, &Change::User(user.id), within).await;

    // A late subscriber to a third store sees nothing old.
    let third = db.second().await;
    let mut late = third.subscribe();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(late.try_recv().is_err(), "old changes are not replayed");

    reader.close().await;
    third.close().await;
    // Once closed, subscribers learn that the feed ended (after what was already buffered).
    loop {
        match tokio::time::timeout(Duration::from_secs(2), theirs.recv()).await {
            Ok(Ok(_)) => continue,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => break,
            other => panic!("expected the feed to close, got {other:?}"),
        }
    }
    assert!(matches!(reader.subscribe().try_recv(), Err(tokio::sync::broadcast::error::TryRecvError::Closed)));
    db.store.close().await;
}

/// Fills a store with one of everything the backup must carry.
async fn populate(s: &SqlStore) -> (User, Group, Group) {
    let user = s.create_user(new_user("pam")).await.unwrap();
    let mut quinn = new_user("quinn");
    quinn.email = None;
    quinn.password_hash = None;
    quinn.password_changed_at = None;
    quinn.is_active = false;
    s.create_user(quinn).await.unwrap();
    s.set_last_login(user.id, t(5)).await.unwrap();
    // Created child-first so restore must cope with the self-reference order.
    let child = s.create_group(new_group("child", None)).await.unwrap();
    let mut parent = s.create_group(new_group("parent", None)).await.unwrap();
    parent.is_superuser = true;
    s.update_group(&parent).await.unwrap();
    let child = Group { parent_id: Some(parent.id), ..child };
    s.update_group(&child).await.unwrap();
    s.add_member(child.id, user.id).await.unwrap();
    s.add_member(parent.id, user.id).await.unwrap();
    s.create_session(&session(user.id, "0123456789ab", 0)).await.unwrap();
    s.create_token(&token(TokenKind::Api, Some(user.id), "tok-hash", Some(t(1000)))).await.unwrap();
    s.create_token(&token(TokenKind::Setup, None, "setup-hash", None)).await.unwrap();
    s.record_event(&event("login", 1, Some((user.id, "pam")))).await.unwrap();
    s.set_setting("greeting", &json!({"text": "hi \"there\" ✓"})).await.unwrap();
    let flow = Flow {
        id: Uuid::now_v7(),
        slug: "f".into(),
        name: "F".into(),
        title: "T".into(),
        designation: FlowDesignation::Recovery,
        settings: json!({}),
        created_at: t(0),
    };
    let flow = s.upsert_flow(&flow).await.unwrap();
    let stage = s
        .upsert_stage(&Stage {
            id: Uuid::now_v7(),
            name: "st".into(),
            kind: "k".into(),
            config: json!({"c": 1}),
            created_at: t(0),
        })
        .await
        .unwrap();
    s.upsert_binding(&FlowStageBinding {
        id: Uuid::now_v7(),
        flow_id: flow.id,
        stage_id: stage.id,
        order: 10,
        settings: json!({}),
    })
    .await
    .unwrap();
    let mut totp = device(user.id, DeviceKind::Totp, "phone");
    totp.last_step = Some(42);
    s.create_device(&totp).await.unwrap();
    s.create_device(&device(user.id, DeviceKind::Static, "codes")).await.unwrap();
    populate_access(s, &user, &parent, &flow).await;
    (user, parent, child)
}

/// The policy/application half of `populate`.
async fn populate_access(s: &SqlStore, user: &User, group: &Group, flow: &Flow) {
    let p = s.upsert_policy(&policy("only-staff", json!({"expr": "true"}))).await.unwrap();
    let provider = s
        .upsert_provider(&Provider {
            id: Uuid::now_v7(),
            name: "proxy-1".into(),
            kind: "proxy".into(),
            authorization_flow_id: Some(flow.id),
            config: json!({"external_host": "https://app.example.test"}),
            created_at: t(0),
        })
        .await
        .unwrap();
    let mut app = application("wiki", Some(provider.id));
    app.launch_url = None;
    app.group = None;
    let app = s.upsert_application(&app).await.unwrap();
    s.upsert_application(&application("chat", None)).await.unwrap();
    s.upsert_policy_binding(&binding(BindingTarget::Application(app.id), BindingSubject::Policy(p.id), 0))
        .await
        .unwrap();
    s.upsert_policy_binding(&binding(BindingTarget::Flow(flow.id), BindingSubject::Group(group.id), 5)).await.unwrap();
    s.upsert_outpost(&outpost("embedded", vec![provider.id])).await.unwrap();
    s.put_consent(&consent(user.id, app.id, &["openid", "email"], None)).await.unwrap();
    s.put_throttle(&throttle("ip:192.0.2.9", 3, Some(t(600)))).await.unwrap();
    s.put_throttle(&throttle("user:pam", 1, None)).await.unwrap();
    s.adjust_reputation("ip:192.0.2.9", -3, -100, 100, t(1)).await.unwrap();
}

/// Everything observable through the traits, for comparing two stores.
async fn snapshot(s: &SqlStore) -> serde_json::Value {
    let users = s.list_users(&ListQuery::all()).await.unwrap().items;
    let mut memberships = Vec::new();
    let mut user_json = Vec::new();
    for u in &users {
        memberships.push((u.id, s.direct_group_ids(u.id).await.unwrap()));
        user_json.push(json!([u, u.password_hash]));
    }
    let mut bindings = Vec::new();
    for f in s.list_flows().await.unwrap() {
        bindings.push(s.flow_bindings(f.id).await.unwrap());
    }
    let tokens: Vec<_> = s.list_tokens(None).await.unwrap().into_iter().map(|t| json!([t, t.secret_hash])).collect();
    let sessions: Vec<_> = s.list_sessions(None).await.unwrap().into_iter().map(|x| json!([x, x.key_hash])).collect();
    let mut consents = Vec::new();
    let mut devices = Vec::new();
    for u in &users {
        consents.push(s.list_consents(u.id).await.unwrap());
        for d in s.list_devices(u.id).await.unwrap() {
            devices.push(json!([d, d.secret, d.data, d.last_step]));
        }
    }
    json!({
        "users": user_json,
        "groups": s.all_groups().await.unwrap(),
        "memberships": memberships,
        "sessions": sessions,
        "tokens": tokens,
        "events": s.list_events(&EventFilter::default(), &ListQuery::all()).await.unwrap(),
        "flows": s.list_flows().await.unwrap(),
        "stages": s.list_stages().await.unwrap(),
        "bindings": bindings,
        "greeting": s.get_setting("greeting").await.unwrap(),
        "policies": s.list_policies().await.unwrap(),
        "policy_bindings": s.list_policy_bindings().await.unwrap(),
        "applications": s.list_applications().await.unwrap(),
        "providers": s.list_providers().await.unwrap(),
        "outposts": s.list_outposts().await.unwrap(),
        "consents": consents,
        "throttles": s.list_throttles(t(0)).await.unwrap(),
        "throttle_pam": s.get_throttle("user:pam").await.unwrap(),
        "reputation": s.get_reputation("ip:192.0.2.9").await.unwrap(),
        "devices": devices,
    })
}

async fn backup_restore_round_trip(db: TestDb) {
    let (user, parent, child) = populate(&db.store).await;
    let mut out = Vec::new();
    db.store.backup(&mut out).await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out).expect("the backup is JSON");
    assert_eq!(doc["format"], "latchkey-backup");
    assert_eq!(doc["schema_version"], SqlStore::latest_schema_version());
    assert_eq!(doc["tables"]["users"].as_array().unwrap().len(), 2);
    assert!(doc["tables"]["users"][0]["is_active"].is_boolean(), "booleans are booleans on every engine");
    assert!(doc["tables"].get("changes").is_none());
    for table in ["policies", "policy_bindings", "applications", "providers", "outposts", "consent_grants"] {
        assert!(!doc["tables"][table].as_array().unwrap().is_empty(), "{table} is backed up");
    }
    assert_eq!(doc["tables"]["throttles"].as_array().unwrap().len(), 2);
    assert_eq!(doc["tables"]["reputation"][0]["score"], -3);

    // Into a fresh store of the same engine.
    let fresh = db.sibling(true).await;
    fresh.store.restore(&mut out.as_slice()).await.unwrap();
    assert_eq!(snapshot(&fresh.store).await, snapshot(&db.store).await);
    assert_eq!(fresh.store.get_group(child.id).await.unwrap().unwrap().parent_id, Some(parent.id));
    assert_eq!(fresh.store.direct_group_ids(user.id).await.unwrap().len(), 2);
    // Numbering continues after the restored ones.
    let next = fresh.store.create_user(new_user("rita")).await.unwrap();
    assert_eq!(next.uid_number, 2002);
    assert_eq!(fresh.store.list_policy_bindings().await.unwrap().len(), 2);
    assert_eq!(fresh.store.get_reputation("ip:192.0.2.9").await.unwrap().unwrap().score, -3);
    fresh.store.close().await;
    db.store.close().await;
}

/// Tables larger than one read page (500 rows), including one with a two-column key.
async fn backup_pages_through_large_tables(db: TestDb) {
    let s = &db.store;
    let g1 = s.create_group(new_group("one", None)).await.unwrap();
    let g2 = s.create_group(new_group("two", None)).await.unwrap();
    let mut tasks = Vec::new();
    for chunk in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..150 {
                let u = s.create_user(new_user(&format!("bulk{chunk}-{i}"))).await.unwrap();
                s.add_member(g1.id, u.id).await.unwrap();
                if i % 2 == 0 {
                    s.add_member(g2.id, u.id).await.unwrap();
                }
                s.record_event(&event("bulk", i, Some((u.id, "x")))).await.unwrap();
                s.record_event(&event("bulk2", i, None)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut out = Vec::new();
    s.backup(&mut out).await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(doc["tables"]["users"].as_array().unwrap().len(), 600);
    assert_eq!(doc["tables"]["group_members"].as_array().unwrap().len(), 900);
    assert_eq!(doc["tables"]["events"].as_array().unwrap().len(), 1200);

    let fresh = db.sibling(true).await;
    fresh.store.restore(&mut out.as_slice()).await.unwrap();
    assert_eq!(fresh.store.direct_member_ids(g1.id).await.unwrap().len(), 600);
    assert_eq!(fresh.store.direct_member_ids(g2.id).await.unwrap().len(), 300);
    assert_eq!(snapshot(&fresh.store).await, snapshot(s).await);
    fresh.store.close().await;
    db.store.close().await;
}

async fn restore_refuses_non_empty_or_newer(db: TestDb) {
    let s = &db.store;
    populate(s).await;
    let mut out = Vec::new();
    s.backup(&mut out).await.unwrap();
    match s.restore(&mut out.as_slice()).await {
        Err(StoreError::Conflict(m)) => assert!(m.contains("not empty"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    let other = db.sibling(true).await;
    let mut doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
    doc["schema_version"] = json!(SqlStore::latest_schema_version() + 1);
    let newer = serde_json::to_vec(&doc).unwrap();
    match other.store.restore(&mut newer.as_slice()).await {
        Err(StoreError::Conflict(m)) => assert!(m.contains("newer"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(matches!(other.store.restore(&mut &b"{\"not\": \"a backup\"}"[..]).await, Err(StoreError::Conflict(_))));
    assert!(matches!(other.store.restore(&mut &b"garbage"[..]).await, Err(StoreError::Conflict(_))));
    // A failed restore leaves nothing behind: a row that breaks a rule rolls everything back.
    doc["schema_version"] = json!(SqlStore::latest_schema_version());
    let members = doc["tables"]["group_members"].as_array_mut().unwrap();
    members.push(json!({"group_id": Uuid::now_v7().to_string(), "user_id": Uuid::now_v7().to_string()}));
    let broken = serde_json::to_vec(&doc).unwrap();
    assert!(other.store.restore(&mut broken.as_slice()).await.is_err());
    assert_eq!(other.store.count_users().await.unwrap(), 0);
    other.store.close().await;
    db.store.close().await;
}

// ---------------------------------------------------------------------------------------------
// Engine-specific and cross-engine tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restores_across_engines() {
    let Some(pg) = postgres_db("backup_restores_across_engines", true).await else { return };
    let lite = sqlite_db(true).await;
    populate(&lite.store).await;
    let mut out = Vec::new();
    lite.store.backup(&mut out).await.unwrap();
    pg.store.restore(&mut out.as_slice()).await.unwrap();
    let expected = snapshot(&lite.store).await;
    assert_eq!(snapshot(&pg.store).await, expected, "sqlite → postgres");

    // And back.
    let mut out = Vec::new();
    pg.store.backup(&mut out).await.unwrap();
    let lite2 = sqlite_db(true).await;
    lite2.store.restore(&mut out.as_slice()).await.unwrap();
    assert_eq!(snapshot(&lite2.store).await, expected, "postgres → sqlite");
    for s in [&lite.store, &lite2.store, &pg.store] {
        s.close().await;
    }
}

#[tokio::test]
async fn unreachable_postgres_is_unavailable() {
    match SqlStore::connect("postgres://postgres@127.0.0.1:1/nothing").await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(SqlStore::connect("mysql://x/y").await, Err(StoreError::Database(_))));
}

#[tokio::test]
async fn sqlite_file_is_created_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let url = format!("sqlite://{}", path.display());
    let store = SqlStore::connect(&url).await.unwrap();
    assert_eq!(store.engine(), "sqlite");
    assert_eq!(store.schema_version().await.unwrap(), 0);
    assert_eq!(store.migrate().await.unwrap(), (0, SqlStore::latest_schema_version()));
    let user = store.create_user(new_user("sam")).await.unwrap();
    store.close().await;
    assert!(store.ping().await.is_err(), "closed");
    assert!(path.exists());

    let again = SqlStore::connect(&url).await.unwrap();
    let latest = SqlStore::latest_schema_version();
    assert_eq!(again.migrate().await.unwrap(), (latest, latest));
    assert_eq!(again.get_user(user.id).await.unwrap().map(|u| u.username), Some("sam".into()));
    again.close().await;
}

/// The two migration scripts describe the same tables and columns.
#[tokio::test]
async fn schemas_match_across_engines() {
    use sqlx::Row;
    let Some(pg) = postgres_db("schemas_match_across_engines", true).await else { return };
    let lite = sqlite_db(true).await;
    let mut pg_conn = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    let rows = sqlx::query(
        "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns \
         WHERE table_schema = current_schema()",
    )
    .fetch_all(&mut pg_conn)
    .await
    .unwrap();
    let mut pg_cols: Vec<(String, String)> = rows.iter().map(|r| (r.get("t"), r.get("c"))).collect();
    pg_cols.sort();
    let _ = pg_conn.close().await;

    let mut lite_conn = sqlx::SqliteConnection::connect(&lite.url).await.unwrap();
    let tables: Vec<String> =
        sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
            .fetch_all(&mut lite_conn)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("name"))
            .collect();
    let mut lite_cols = Vec::new();
    for t in tables {
        for r in sqlx::query(&format!("PRAGMA table_info({t})")).fetch_all(&mut lite_conn).await.unwrap() {
            lite_cols.push((t.clone(), r.get::<String, _>("name")));
        }
    }
    lite_cols.sort();
    let _ = lite_conn.close().await;
    assert_eq!(pg_cols, lite_cols);
    pg.store.close().await;
    lite.store.close().await;
}

/// Losing the LISTEN connection (server restart, idle reaper) delays changes by at most the
/// fallback poll; the listener reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_change_feed_survives_lost_connections() {
    let Some(db) = postgres_db("postgres_change_feed_survives_lost_connections", true).await else { return };
    let reader = db.second().await;
    let mut rx = reader.subscribe();
    let user = db.store.create_user(new_user("victor")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let killed = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!killed.is_empty());
    let _ = admin.close().await;

    db.store.set_password_hash(user.id, "h", t(1)).await.unwrap();
    expect_change(&mut rx, &Change::User(user.id), Duration::from_millis(2500)).await;
    // And once the listener is back, signals flow again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    db.store.delete_user(user.id).await.unwrap();
    expect_change(&mut rx, &Change::User(user.id), Duration::from_millis(1500)).await;
    reader.close().await;
    db.store.close().await;
}

// ---------------------------------------------------------------------------------------------
// Policies, applications, consent, throttling
// ---------------------------------------------------------------------------------------------

fn policy(name: &str, config: serde_json::Value) -> Policy {
    Policy {
        id: Uuid::now_v7(),
        name: name.into(),
        kind: "expression".into(),
        config,
        execution_logging: false,
        created_at: t(0),
    }
}

fn binding(target: BindingTarget, subject: BindingSubject, order: i64) -> PolicyBinding {
    PolicyBinding {
        id: Uuid::now_v7(),
        target,
        subject,
        order,
        negate: false,
        enabled: true,
        timeout_ms: 30_000,
        failure_result: false,
        created_at: t(order),
    }
}

fn application(slug: &str, provider_id: Option<Uuid>) -> Application {
    Application {
        id: Uuid::now_v7(),
        name: format!("{slug} app"),
        slug: slug.into(),
        provider_id,
        launch_url: Some(format!("https://{slug}.example.test/")),
        icon: None,
        description: "an app".into(),
        group: Some("tools".into()),
        policy_engine_mode: "any".into(),
        open_in_new_tab: true,
        created_at: t(0),
    }
}

fn outpost(name: &str, provider_ids: Vec<Uuid>) -> Outpost {
    Outpost {
        id: Uuid::now_v7(),
        name: name.into(),
        kind: "proxy".into(),
        provider_ids,
        config: json!({"log_level": "info"}),
        created_at: t(0),
    }
}

fn consent(
    user_id: Uuid,
    application_id: Uuid,
    permissions: &[&str],
    expires_at: Option<DateTime<Utc>>,
) -> ConsentGrant {
    ConsentGrant {
        id: Uuid::now_v7(),
        user_id,
        application_id,
        permissions: permissions.iter().map(|p| p.to_string()).collect(),
        created_at: t(0),
        expires_at,
    }
}

fn throttle(key: &str, failures: i64, blocked_until: Option<DateTime<Utc>>) -> ThrottleRecord {
    ThrottleRecord { key: key.into(), failures, window_start: t(0), last_failure: t(10), blocked_until }
}

fn new_flow(slug: &str) -> Flow {
    Flow {
        id: Uuid::now_v7(),
        slug: slug.into(),
        name: slug.into(),
        title: slug.into(),
        designation: FlowDesignation::Authentication,
        settings: json!({}),
        created_at: t(0),
    }
}

async fn policies_upsert_by_name(db: TestDb) {
    let s = &db.store;
    let mut rx = s.subscribe();
    let p = policy("is-admin", json!({"expression": "return True"}));
    let stored = s.upsert_policy(&p).await.unwrap();
    assert_eq!(stored, p);
    expect_change(&mut rx, &Change::Config, Duration::from_secs(5)).await;
    let again = Policy {
        id: Uuid::now_v7(),
        config: json!({"expression": "return False"}),
        execution_logging: true,
        created_at: t(50),
        ..p.clone()
    };
    let updated = s.upsert_policy(&again).await.unwrap();
    assert_eq!(updated.id, p.id, "the id is kept on update");
    assert_eq!(updated.created_at, t(0));
    assert!(updated.execution_logging);
    assert_eq!(s.get_policy(p.id).await.unwrap().unwrap(), updated);
    assert_eq!(s.get_policy_by_name("is-admin").await.unwrap().unwrap(), updated);
    assert_eq!(s.get_policy_by_name("nope").await.unwrap(), None);

    // Upsert goes by name: another name is another policy, and reusing an id under a new name
    // is a conflict, not a rename.
    let other = s.upsert_policy(&policy("another", json!({}))).await.unwrap();
    assert_ne!(other.id, p.id);
    let renamed = Policy { name: "renamed".into(), ..p.clone() };
    assert!(matches!(s.upsert_policy(&renamed).await, Err(StoreError::Conflict(_))));
    let names: Vec<String> = s.list_policies().await.unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["another", "is-admin"]);
    s.delete_policy(other.id).await.unwrap();
    assert_eq!(s.get_policy(other.id).await.unwrap(), None);
    s.delete_policy(other.id).await.unwrap();
    db.store.close().await;
}

async fn policy_bindings_order_upsert_and_cleanup(db: TestDb) {
    let s = &db.store;
    let user = s.create_user(new_user("bea")).await.unwrap();
    let group = s.create_group(new_group("ops", None)).await.unwrap();
    let p1 = s.upsert_policy(&policy("p1", json!({}))).await.unwrap();
    let p2 = s.upsert_policy(&policy("p2", json!({}))).await.unwrap();
    let app = s.upsert_application(&application("grafana", None)).await.unwrap();
    let other_app = s.upsert_application(&application("wiki", None)).await.unwrap();
    let target = BindingTarget::Application(app.id);

    // Bound out of order; read back by order.
    let b_group = s.upsert_policy_binding(&binding(target, BindingSubject::Group(group.id), 30)).await.unwrap();
    let b_p1 = s.upsert_policy_binding(&binding(target, BindingSubject::Policy(p1.id), 10)).await.unwrap();
    let b_user = s.upsert_policy_binding(&binding(target, BindingSubject::User(user.id), 20)).await.unwrap();
    let b_p2 = s.upsert_policy_binding(&binding(target, BindingSubject::Policy(p2.id), 40)).await.unwrap();
    let elsewhere = s
        .upsert_policy_binding(&binding(BindingTarget::Application(other_app.id), BindingSubject::Policy(p1.id), 0))
        .await
        .unwrap();
    let ids: Vec<Uuid> = s.policy_bindings(target).await.unwrap().iter().map(|b| b.id).collect();
    assert_eq!(ids, [b_p1.id, b_user.id, b_group.id, b_p2.id]);
    assert_eq!(s.list_policy_bindings().await.unwrap().len(), 5);

    // Upsert by (target, subject) keeps the id and updates the rest.
    let changed = PolicyBinding {
        id: Uuid::now_v7(),
        order: 50,
        negate: true,
        enabled: false,
        timeout_ms: 5,
        failure_result: true,
        created_at: t(999),
        ..b_p1.clone()
    };
    let stored = s.upsert_policy_binding(&changed).await.unwrap();
    assert_eq!(stored.id, b_p1.id, "the binding id is kept on update");
    assert_eq!(stored.created_at, b_p1.created_at);
    let bindings = s.policy_bindings(target).await.unwrap();
    assert_eq!(bindings.last().unwrap(), &stored);
    assert_eq!(bindings.len(), 4);

    // Both ends must exist.
    let dangling = binding(target, BindingSubject::Policy(Uuid::now_v7()), 1);
    assert!(matches!(s.upsert_policy_binding(&dangling).await, Err(StoreError::NotFound(_))));
    let dangling = binding(BindingTarget::Flow(Uuid::now_v7()), BindingSubject::User(user.id), 1);
    assert!(matches!(s.upsert_policy_binding(&dangling).await, Err(StoreError::NotFound(_))));

    // Deleting what a binding names removes the binding.
    s.delete_policy(p1.id).await.unwrap();
    let ids: Vec<Uuid> = s.policy_bindings(target).await.unwrap().iter().map(|b| b.id).collect();
    assert_eq!(ids, [b_user.id, b_group.id, b_p2.id]);
    assert!(s.list_policy_bindings().await.unwrap().iter().all(|b| b.id != elsewhere.id));
    let mut rx = s.subscribe();
    s.delete_user(user.id).await.unwrap();
    expect_change(&mut rx, &Change::Config, Duration::from_secs(5)).await;
    s.delete_group(group.id).await.unwrap();
    let ids: Vec<Uuid> = s.policy_bindings(target).await.unwrap().iter().map(|b| b.id).collect();
    assert_eq!(ids, [b_p2.id]);
    s.delete_policy_binding(b_p2.id).await.unwrap();
    assert!(s.policy_bindings(target).await.unwrap().is_empty());

    let b = s.upsert_policy_binding(&binding(target, BindingSubject::Policy(p2.id), 1)).await.unwrap();
    s.upsert_policy_binding(&binding(BindingTarget::Application(other_app.id), BindingSubject::Policy(p2.id), 1))
        .await
        .unwrap();
    s.delete_application(app.id).await.unwrap();
    assert!(s.policy_bindings(target).await.unwrap().is_empty());
    let left = s.list_policy_bindings().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_ne!(left[0].id, b.id);
    assert_eq!(left[0].target, BindingTarget::Application(other_app.id));
    db.store.close().await;
}

async fn policy_bindings_go_with_flows_and_stages(db: TestDb) {
    let s = &db.store;
    let p = s.upsert_policy(&policy("p", json!({}))).await.unwrap();
    let flow = s.upsert_flow(&new_flow("f1")).await.unwrap();
    let other_flow = s.upsert_flow(&new_flow("f2")).await.unwrap();
    let mut stages = Vec::new();
    for name in ["a", "b"] {
        let st =
            Stage { id: Uuid::now_v7(), name: name.into(), kind: name.into(), config: json!({}), created_at: t(0) };
        stages.push(s.upsert_stage(&st).await.unwrap());
    }
    let mut fsbs = Vec::new();
    for (i, (f, st)) in [(&flow, &stages[0]), (&flow, &stages[1]), (&other_flow, &stages[0])].into_iter().enumerate() {
        let b = FlowStageBinding {
            id: Uuid::now_v7(),
            flow_id: f.id,
            stage_id: st.id,
            order: i as i64,
            settings: json!({}),
        };
        fsbs.push(s.upsert_binding(&b).await.unwrap());
        s.upsert_policy_binding(&binding(BindingTarget::StageBinding(b.id), BindingSubject::Policy(p.id), 0))
            .await
            .unwrap();
    }
    s.upsert_policy_binding(&binding(BindingTarget::Flow(flow.id), BindingSubject::Policy(p.id), 0)).await.unwrap();
    s.upsert_policy_binding(&binding(BindingTarget::Flow(other_flow.id), BindingSubject::Policy(p.id), 0))
        .await
        .unwrap();
    assert_eq!(s.list_policy_bindings().await.unwrap().len(), 5);

    // A stage binding removed directly.
    s.delete_binding(fsbs[1].id).await.unwrap();
    assert!(s.policy_bindings(BindingTarget::StageBinding(fsbs[1].id)).await.unwrap().is_empty());
    assert_eq!(s.list_policy_bindings().await.unwrap().len(), 4);
    // A flow, with its stage bindings.
    s.delete_flow(flow.id).await.unwrap();
    assert!(s.policy_bindings(BindingTarget::Flow(flow.id)).await.unwrap().is_empty());
    assert!(s.policy_bindings(BindingTarget::StageBinding(fsbs[0].id)).await.unwrap().is_empty());
    assert_eq!(s.list_policy_bindings().await.unwrap().len(), 2);
    // A stage, with the stage bindings that use it.
    s.delete_stage(stages[0].id).await.unwrap();
    assert!(s.policy_bindings(BindingTarget::StageBinding(fsbs[2].id)).await.unwrap().is_empty());
    let left = s.list_policy_bindings().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].target, BindingTarget::Flow(other_flow.id));
    db.store.close().await;
}

async fn applications_providers_and_outposts(db: TestDb) {
    let s = &db.store;
    let flow = s.upsert_flow(&new_flow("authz")).await.unwrap();
    let provider = Provider {
        id: Uuid::now_v7(),
        name: "grafana-oauth".into(),
        kind: "oauth2".into(),
        authorization_flow_id: Some(flow.id),
        config: json!({"client_id": "abc"}),
        created_at: t(0),
    };
    assert_eq!(s.upsert_provider(&provider).await.unwrap(), provider);
    let again = Provider { id: Uuid::now_v7(), config: json!({"client_id": "xyz"}), ..provider.clone() };
    let updated = s.upsert_provider(&again).await.unwrap();
    assert_eq!(updated.id, provider.id, "upsert by name keeps the id");
    assert_eq!(s.get_provider(provider.id).await.unwrap().unwrap().config, json!({"client_id": "xyz"}));
    assert_eq!(s.get_provider_by_name("grafana-oauth").await.unwrap().unwrap(), updated);
    let bad = Provider {
        id: Uuid::now_v7(),
        name: "bad".into(),
        authorization_flow_id: Some(Uuid::now_v7()),
        ..provider.clone()
    };
    assert!(matches!(s.upsert_provider(&bad).await, Err(StoreError::NotFound(_))));

    let app = application("grafana", Some(provider.id));
    assert_eq!(s.upsert_application(&app).await.unwrap(), app);
    let again = Application { id: Uuid::now_v7(), name: "Grafana".into(), icon: Some("g.png".into()), ..app.clone() };
    let updated = s.upsert_application(&again).await.unwrap();
    assert_eq!(updated.id, app.id, "upsert by slug keeps the id");
    assert_eq!(s.get_application(app.id).await.unwrap().unwrap(), updated);
    assert_eq!(s.get_application_by_slug("grafana").await.unwrap().unwrap().name, "Grafana");
    assert_eq!(s.get_application_by_slug("nope").await.unwrap(), None);
    let orphan = Application { provider_id: Some(Uuid::now_v7()), ..application("orphan", None) };
    assert!(matches!(s.upsert_application(&orphan).await, Err(StoreError::NotFound(_))));
    let plain = s.upsert_application(&application("another", None)).await.unwrap();
    assert_eq!(s.list_applications().await.unwrap().len(), 2);

    let second = s
        .upsert_provider(&Provider {
            id: Uuid::now_v7(),
            name: "second".into(),
            authorization_flow_id: None,
            ..provider.clone()
        })
        .await
        .unwrap();
    let op = outpost("embedded", vec![provider.id, second.id]);
    assert_eq!(s.upsert_outpost(&op).await.unwrap(), op);
    let op2 = Outpost { id: Uuid::now_v7(), kind: "ldap".into(), ..op.clone() };
    let stored = s.upsert_outpost(&op2).await.unwrap();
    assert_eq!(stored.id, op.id);
    assert_eq!(s.get_outpost_by_name("embedded").await.unwrap().unwrap().provider_ids, [provider.id, second.id]);
    s.upsert_outpost(&outpost("empty", vec![])).await.unwrap();
    assert_eq!(s.list_outposts().await.unwrap().len(), 2);

    // Deleting a flow leaves the provider without one; deleting a provider leaves its
    // applications without one and takes it off outposts.
    s.delete_flow(flow.id).await.unwrap();
    assert_eq!(s.get_provider(provider.id).await.unwrap().unwrap().authorization_flow_id, None);
    let mut rx = s.subscribe();
    s.delete_provider(provider.id).await.unwrap();
    expect_change(&mut rx, &Change::Config, Duration::from_secs(5)).await;
    assert_eq!(s.get_provider(provider.id).await.unwrap(), None);
    assert_eq!(s.get_application(app.id).await.unwrap().unwrap().provider_id, None);
    assert_eq!(s.get_outpost_by_name("embedded").await.unwrap().unwrap().provider_ids, [second.id]);
    assert_eq!(s.list_providers().await.unwrap().len(), 1);

    s.delete_outpost(op.id).await.unwrap();
    assert_eq!(s.get_outpost_by_name("embedded").await.unwrap(), None);
    s.delete_application(plain.id).await.unwrap();
    assert_eq!(s.get_application(plain.id).await.unwrap(), None);
    db.store.close().await;
}

async fn consent_grants(db: TestDb) {
    let s = &db.store;
    let user = s.create_user(new_user("cora")).await.unwrap();
    let other = s.create_user(new_user("dan")).await.unwrap();
    let app = s.upsert_application(&application("mail", None)).await.unwrap();
    let app2 = s.upsert_application(&application("docs", None)).await.unwrap();

    let first = consent(user.id, app.id, &["openid"], Some(t(100)));
    s.put_consent(&first).await.unwrap();
    assert_eq!(s.get_consent(user.id, app.id, t(50)).await.unwrap().unwrap(), first);
    assert_eq!(s.get_consent(user.id, app.id, t(100)).await.unwrap(), None, "expired at expires_at");
    assert_eq!(s.get_consent(other.id, app.id, t(50)).await.unwrap(), None);

    // Replaces the grant of (user, application).
    let second = consent(user.id, app.id, &["openid", "profile", "email"], None);
    s.put_consent(&second).await.unwrap();
    assert_eq!(s.get_consent(user.id, app.id, t(1_000_000)).await.unwrap().unwrap(), second);
    assert_eq!(s.list_consents(user.id).await.unwrap(), std::slice::from_ref(&second));

    let dangling = consent(user.id, Uuid::now_v7(), &[], None);
    assert!(matches!(s.put_consent(&dangling).await, Err(StoreError::NotFound(_))));

    s.put_consent(&consent(user.id, app2.id, &[], None)).await.unwrap();
    s.put_consent(&consent(other.id, app.id, &["openid"], None)).await.unwrap();
    assert_eq!(s.list_consents(user.id).await.unwrap().len(), 2);
    s.delete_consent(second.id).await.unwrap();
    assert_eq!(s.get_consent(user.id, app.id, t(0)).await.unwrap(), None);
    s.delete_user(user.id).await.unwrap();
    assert!(s.list_consents(user.id).await.unwrap().is_empty());
    s.delete_application(app.id).await.unwrap();
    assert!(s.list_consents(other.id).await.unwrap().is_empty(), "grants go with the application");
    db.store.close().await;
}

async fn throttles_put_get_list_delete(db: TestDb) {
    let s = &db.store;
    assert_eq!(s.get_throttle("user:x").await.unwrap(), None);
    let r = throttle("user:x", 2, None);
    s.put_throttle(&r).await.unwrap();
    assert_eq!(s.get_throttle("user:x").await.unwrap().unwrap(), r);
    let r = ThrottleRecord { failures: 5, last_failure: t(20), blocked_until: Some(t(300)), ..r };
    s.put_throttle(&r).await.unwrap();
    assert_eq!(s.get_throttle("user:x").await.unwrap().unwrap(), r);
    s.put_throttle(&throttle("ip:192.0.2.1", 9, Some(t(600)))).await.unwrap();
    s.put_throttle(&throttle("ip:192.0.2.2", 9, Some(t(30)))).await.unwrap();
    s.put_throttle(&throttle("ip:192.0.2.3", 1, None)).await.unwrap();

    let keys = |v: Vec<ThrottleRecord>| v.into_iter().map(|r| r.key).collect::<Vec<_>>();
    assert_eq!(keys(s.list_throttles(t(100)).await.unwrap()), ["ip:192.0.2.1", "user:x"]);
    assert_eq!(keys(s.list_throttles(t(300)).await.unwrap()), ["ip:192.0.2.1"], "blocked_until is exclusive");
    assert_eq!(s.list_throttles(t(0)).await.unwrap().len(), 3);
    assert!(s.delete_throttle("user:x").await.unwrap());
    assert!(!s.delete_throttle("user:x").await.unwrap());
    assert_eq!(s.get_throttle("user:x").await.unwrap(), None);
    db.store.close().await;
}

async fn reputation_clamps_and_is_atomic(db: TestDb) {
    let s = &db.store;
    assert_eq!(s.get_reputation("ip:a").await.unwrap(), None);
    assert_eq!(s.adjust_reputation("ip:a", -3, -5, 5, t(1)).await.unwrap(), -3);
    assert_eq!(s.adjust_reputation("ip:a", -3, -5, 5, t(2)).await.unwrap(), -5, "clamped at min");
    assert_eq!(s.adjust_reputation("ip:a", 20, -5, 5, t(3)).await.unwrap(), 5, "clamped at max");
    assert_eq!(
        s.get_reputation("ip:a").await.unwrap().unwrap(),
        Reputation { key: "ip:a".into(), score: 5, updated_at: t(3) }
    );
    assert_eq!(s.adjust_reputation("ip:b", 50, -10, 10, t(1)).await.unwrap(), 10, "a new key is clamped too");
    assert_eq!(s.adjust_reputation("ip:c", -50, -10, 10, t(1)).await.unwrap(), -10);

    // Two writers (one through a second pool, as another process) never lose an increment.
    let other = db.second().await;
    let (a, b) = (s.clone(), other.clone());
    let one = tokio::spawn(async move {
        for _ in 0..50 {
            a.adjust_reputation("user:race", 1, -1000, 1000, Utc::now()).await.unwrap();
        }
    });
    let two = tokio::spawn(async move {
        for _ in 0..50 {
            b.adjust_reputation("user:race", 1, -1000, 1000, Utc::now()).await.unwrap();
        }
    });
    one.await.unwrap();
    two.await.unwrap();
    assert_eq!(s.get_reputation("user:race").await.unwrap().unwrap().score, 100);
    other.close().await;
    db.store.close().await;
}

// ---------------------------------------------------------------------------------------------
// Authenticator devices
// ---------------------------------------------------------------------------------------------

fn device(user_id: Uuid, kind: DeviceKind, name: &str) -> AuthenticatorDevice {
    AuthenticatorDevice {
        id: Uuid::now_v7(),
        user_id,
        kind,
        name: name.into(),
        secret: Some("sealed-secret".into()),
        data: json!({"codes": [{"hash": "ab", "used": false}]}),
        confirmed: false,
        created_at: t(0),
        last_used_at: None,
        last_step: None,
    }
}

async fn authenticator_devices_crud_and_replay(db: TestDb) {
    let s = &db.store;
    let user = s.create_user(new_user("mfa")).await.unwrap();
    let other = s.create_user(new_user("other")).await.unwrap();
    let mut totp = device(user.id, DeviceKind::Totp, "phone");
    s.create_device(&totp).await.unwrap();
    let codes = device(user.id, DeviceKind::Static, "codes");
    s.create_device(&codes).await.unwrap();
    s.create_device(&device(other.id, DeviceKind::Totp, "theirs")).await.unwrap();
    let listed = s.list_devices(user.id).await.unwrap();
    assert_eq!(listed.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["phone", "codes"]);
    assert_eq!(s.get_device(totp.id).await.unwrap().as_ref(), Some(&totp));

    totp.confirmed = true;
    totp.name = "pixel".into();
    totp.last_used_at = Some(t(3));
    s.update_device(&totp).await.unwrap();
    let got = s.get_device(totp.id).await.unwrap().unwrap();
    assert!(got.confirmed);
    assert_eq!(got.name, "pixel");

    // Replay protection: a step is accepted once, and never one at or before the last.
    assert!(s.record_totp_step(totp.id, 100, t(5)).await.unwrap());
    assert!(!s.record_totp_step(totp.id, 100, t(6)).await.unwrap());
    assert!(!s.record_totp_step(totp.id, 99, t(6)).await.unwrap());
    assert!(s.record_totp_step(totp.id, 101, t(7)).await.unwrap());
    let got = s.get_device(totp.id).await.unwrap().unwrap();
    assert_eq!((got.last_step, got.last_used_at), (Some(101), Some(t(7))));
    // Concurrent uses of one step: exactly one wins.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s2 = s.clone();
        let id = totp.id;
        tasks.push(tokio::spawn(async move { s2.record_totp_step(id, 200, t(8)).await.unwrap() }));
    }
    let mut wins = 0;
    for task in tasks {
        wins += usize::from(task.await.unwrap());
    }
    assert_eq!(wins, 1);

    // Static codes: compare-and-swap on the data.
    let used = json!({"codes": [{"hash": "ab", "used": true}]});
    assert!(s.replace_device_data(codes.id, &codes.data, &used, t(9)).await.unwrap());
    assert!(!s.replace_device_data(codes.id, &codes.data, &used, t(9)).await.unwrap());
    assert_eq!(s.get_device(codes.id).await.unwrap().unwrap().data, used);

    assert!(s.delete_device(codes.id).await.unwrap());
    assert!(!s.delete_device(codes.id).await.unwrap());
    assert!(matches!(s.update_device(&codes).await, Err(StoreError::NotFound(_))));
    // Devices go with their user.
    s.delete_user(user.id).await.unwrap();
    assert!(s.get_device(totp.id).await.unwrap().is_none());
    assert_eq!(s.list_devices(other.id).await.unwrap().len(), 1);
    db.store.close().await;
}

async fn app_passwords_crud_and_change(db: TestDb) {
    use latchkey_core::app_passwords::AppPassword;
    let s = &db.store;
    let user = s.create_user(new_user("dav")).await.unwrap();
    let app = Uuid::now_v7();
    let p = |name: &str, hash: &str, apps: Option<Vec<Uuid>>| AppPassword {
        id: Uuid::now_v7(),
        user_id: user.id,
        name: name.into(),
        secret_hash: hash.into(),
        applications: apps,
        created_at: t(1),
        expires_at: Some(t(100)),
        last_used_at: None,
    };
    let phone = p("phone", "h-phone", Some(vec![app]));
    s.create_app_password(&phone).await.unwrap();
    s.create_app_password(&p("laptop", "h-laptop", None)).await.unwrap();
    // One name per user; one hash overall.
    assert!(matches!(s.create_app_password(&p("phone", "h-other", None)).await, Err(StoreError::Conflict(_))));
    assert!(matches!(s.create_app_password(&p("other", "h-phone", None)).await, Err(StoreError::Conflict(_))));
    assert_eq!(s.find_app_password("h-phone").await.unwrap().as_ref(), Some(&phone));
    assert_eq!(s.find_app_password("nope").await.unwrap(), None);
    let names: Vec<String> = s.list_app_passwords(user.id).await.unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["phone", "laptop"]);
    s.touch_app_password(phone.id, t(5)).await.unwrap();
    assert_eq!(s.find_app_password("h-phone").await.unwrap().unwrap().last_used_at, Some(t(5)));
    // Revocation is announced to every process.
    let mut feed = s.subscribe();
    assert!(s.delete_app_password(phone.id).await.unwrap());
    expect_change(&mut feed, &Change::User(user.id), Duration::from_millis(1500)).await;
    assert!(!s.delete_app_password(phone.id).await.unwrap());
    assert_eq!(s.find_app_password("h-phone").await.unwrap(), None);
    // They go with their user.
    s.delete_user(user.id).await.unwrap();
    assert_eq!(s.find_app_password("h-laptop").await.unwrap(), None);
}
