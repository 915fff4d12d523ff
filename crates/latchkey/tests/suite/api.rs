//! The REST API under /api/v1 through real HTTP: authentication (Bearer tokens, session
//! cookie + CSRF header), every resource's CRUD, pagination/search/ordering, every error
//! status, the last-superuser rule, stale edits and the committed OpenAPI document.

use crate::common::*;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

on_both_backends!(
    api_authentication_bearer_cookie_csrf_and_permissions,
    api_users_pagination_errors_and_stale_edits,
    api_last_superuser_is_protected_and_groups_nest,
    api_configuration_objects_crud,
    api_tokens_events_and_settings,
    api_bad_input_to_every_operation_is_never_a_500,
);

struct Api {
    c: reqwest::Client,
    base: String,
    token: Option<String>,
}

struct Answer {
    status: u16,
    body: Value,
    headers: HeaderMap,
}

impl Answer {
    fn etag(&self) -> String {
        self.headers.get("etag").expect("etag").to_str().unwrap().to_string()
    }
}

impl Api {
    fn new(base: &str, token: Option<&str>) -> Api {
        Api { c: client(), base: base.to_string(), token: token.map(String::from) }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Answer {
        let rb = match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        };
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Answer { status, body, headers }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.base)
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.c.get(self.url(path))).await
    }
    async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(self.c.post(self.url(path)).json(&body)).await
    }
    async fn patch(&self, path: &str, body: Value) -> Answer {
        self.send(self.c.patch(self.url(path)).json(&body)).await
    }
    async fn patch_if(&self, path: &str, etag: &str, body: Value) -> Answer {
        self.send(self.c.patch(self.url(path)).header("if-match", etag).json(&body)).await
    }
    async fn delete(&self, path: &str) -> Answer {
        self.send(self.c.delete(self.url(path))).await
    }
    async fn raw_post(&self, path: &str, body: Vec<u8>) -> Answer {
        self.send(self.c.post(self.url(path)).header("content-type", "application/json").body(body)).await
    }
}

#[track_caller]
fn expect(a: &Answer, status: u16) -> &Value {
    assert_eq!(a.status, status, "unexpected answer: {}", a.body);
    &a.body
}

#[track_caller]
fn expect_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "unexpected answer: {}", a.body);
    assert_eq!(a.body["error"], code, "{}", a.body);
    assert!(a.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", a.body);
    assert!(a.body["fields"].is_object(), "{}", a.body);
}

fn admin_token(env: &Env) -> String {
    env.create_user("root", "root-password", &["--group", "admins"]);
    env.cli_ok(&["token", "create", "--user", "root"], "").trim().to_string()
}

async fn api_authentication_bearer_cookie_csrf_and_permissions(env: Env) {
    let token = admin_token(&env);
    env.create_user("bob", "bob-password", &[]);
    let bob_token = env.cli_ok(&["token", "create", "--user", "bob"], "").trim().to_string();
    let server = env.start().await;
    let base = &server.base;

    // No credentials, a wrong token, a wrong scheme: 401 with a Bearer challenge.
    let anon = Api::new(base, None);
    let a = anon.get("users/").await;
    expect_error(&a, 401, "unauthorized");
    assert_eq!(a.headers.get("www-authenticate").unwrap(), "Bearer");
    expect_error(&Api::new(base, Some("lk_api_not-a-token")).get("users/").await, 401, "unauthorized");
    let basic = anon.send(anon.c.get(anon.url("users/")).header("authorization", "Basic cm9vdDpyb290")).await;
    expect_error(&basic, 401, "unauthorized");

    // A valid token of a user who is not a superuser: 403. A superuser's: 200, with or without the slash.
    expect_error(&Api::new(base, Some(&bob_token)).get("users/").await, 403, "forbidden");
    let api = Api::new(base, Some(&token));
    assert_eq!(expect(&api.get("users/").await, 200)["pagination"]["count"], 2);
    assert_eq!(expect(&api.get("users").await, 200)["pagination"]["count"], 2);

    // A revoked token stops working at once.
    let created = api.post("tokens/", json!({"description": "short-lived"})).await;
    let key = expect(&created, 201)["key"].as_str().unwrap().to_string();
    let id = created.body["id"].as_str().unwrap().to_string();
    expect(&Api::new(base, Some(&key)).get("groups/").await, 200);
    assert_eq!(api.delete(&format!("tokens/{id}/")).await.status, 204);
    expect_error(&Api::new(base, Some(&key)).get("groups/").await, 401, "unauthorized");

    // Session cookie: reads work; writes need the CSRF header carrying the authentik_csrf cookie.
    let browser = Api::new(base, None);
    let done = json_login(&browser.c, base, "root", "root-password").await;
    assert_eq!(done["component"], "redirect", "{done}");
    let listed = browser.get("groups/").await;
    expect(&listed, 200);
    let csrf = listed
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("authentik_csrf="))
        .map(|v| v.split(';').next().unwrap().to_string())
        .expect("authentik_csrf cookie");
    let no_header = browser.post("groups/", json!({"name": "via-cookie"})).await;
    expect_error(&no_header, 403, "forbidden");
    assert!(no_header.body["message"].as_str().unwrap().contains("CSRF"));
    let wrong = browser
        .send(browser.c.post(browser.url("groups/")).header("X-authentik-CSRF", "forged").json(&json!({"name": "x"})))
        .await;
    expect_error(&wrong, 403, "forbidden");
    let ok = browser
        .send(
            browser
                .c
                .post(browser.url("groups/"))
                .header("X-authentik-CSRF", &csrf)
                .json(&json!({"name": "via-cookie"})),
        )
        .await;
    expect(&ok, 201);
    let django = browser
        .send(browser.c.post(browser.url("groups/")).header("X-CSRFToken", &csrf).json(&json!({"name": "via-django"})))
        .await;
    expect(&django, 201);

    // A logged-in user who is not a superuser: 403.
    let bob = Api::new(base, None);
    json_login(&bob.c, base, "bob", "bob-password").await;
    expect_error(&bob.get("users/").await, 403, "forbidden");

    // The served OpenAPI document is the committed one.
    let served = client().get(format!("{base}/api/v1/schema.json")).send().await.unwrap().text().await.unwrap();
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi/schema.json")).unwrap();
    assert!(
        served == committed,
        "the served schema differs from openapi/schema.json; regenerate with \
         LATCHKEY_UPDATE_OPENAPI=1 cargo nextest run -p latchkey-web openapi"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "users",
        "groups",
        "applications",
        "providers",
        "outposts",
        "flows",
        "stages",
        "policies",
        "bindings",
        "tokens",
        "events",
        "settings",
    ] {
        assert!(doc["paths"][format!("/api/v1/{path}/")].is_object(), "{path} missing from the schema");
    }

    // Every admin write names the acting administrator.
    let events = expect(&api.get("events/?action=group_created").await, 200).clone();
    let names: Vec<&str> =
        events["results"].as_array().unwrap().iter().map(|e| e["context"]["actor"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["root", "root"], "{events}");
}

async fn api_users_pagination_errors_and_stale_edits(env: Env) {
    let token = admin_token(&env);
    let server = env.start().await;
    let base = &server.base;
    let api = Api::new(base, Some(&token));

    expect(&api.post("groups/", json!({"name": "staff"})).await, 201);
    for i in 0..24 {
        let a = api
            .post("users/", json!({"username": format!("user-{i:02}"), "email": format!("u{i}@example.test")}))
            .await;
        expect(&a, 201);
    }
    let created = api
        .post(
            "users/",
            json!({"username": "carol", "name": "Carol C", "password": "carol-pass-1", "groups": ["staff"]}),
        )
        .await;
    let carol = expect(&created, 201).clone();
    assert_eq!(carol["groups"], json!(["staff"]));
    assert_eq!(carol["is_superuser"], false);
    assert!(created.headers.get("etag").is_some());
    let carol_id = carol["id"].as_str().unwrap();

    // Pagination as authentik shapes it: 26 users, pages of 10.
    let page = expect(&api.get("users/?page=2&page_size=10").await, 200).clone();
    let p = &page["pagination"];
    assert_eq!((p["count"].as_u64(), p["current"].as_u64(), p["total_pages"].as_u64()), (Some(26), Some(2), Some(3)));
    assert_eq!((p["next"].as_u64(), p["previous"].as_u64()), (Some(3), Some(1)));
    assert_eq!((p["start_index"].as_u64(), p["end_index"].as_u64()), (Some(11), Some(20)));
    assert_eq!(page["results"].as_array().unwrap().len(), 10);
    let last = expect(&api.get("users/?page=3&page_size=10").await, 200).clone();
    assert_eq!(last["results"].as_array().unwrap().len(), 6);
    assert_eq!(last["pagination"]["next"], 0);
    // Search and ordering.
    let found = expect(&api.get("users/?search=USER-1&ordering=-username").await, 200).clone();
    let names: Vec<&str> =
        found["results"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 10);
    assert_eq!(names[0], "user-19");
    assert_eq!(names[9], "user-10");
    let by_email = expect(&api.get("users/?search=u7@example").await, 200).clone();
    assert_eq!(by_email["results"][0]["username"], "user-07");

    // Bad parameters: 400 naming the parameter.
    for (q, field) in
        [("ordering=password", "ordering"), ("page=0", "page"), ("page=x", "page"), ("page_size=5000", "page_size")]
    {
        let a = api.get(&format!("users/?{q}")).await;
        expect_error(&a, 400, "invalid");
        assert!(a.body["fields"][field].is_array(), "{q}: {}", a.body);
    }
    // Bad bodies: 400 malformed, 422 validation with fields, 409 duplicate, 413 too large.
    expect_error(&api.raw_post("users/", b"{not json".to_vec()).await, 400, "invalid");
    expect_error(&api.raw_post("users/", b"[1, 2]".to_vec()).await, 400, "invalid");
    let wrong_type = api.post("users/", json!({"username": 42})).await;
    expect_error(&wrong_type, 422, "invalid");
    assert!(wrong_type.body["fields"]["username"].is_array(), "{}", wrong_type.body);
    let unknown = api.post("users/", json!({"username": "dave", "is_admin": true})).await;
    expect_error(&unknown, 422, "invalid");
    assert!(unknown.body["fields"]["is_admin"].is_array(), "{}", unknown.body);
    let missing = api.post("users/", json!({"name": "No Username"})).await;
    assert!(expect(&missing, 422)["fields"]["username"].is_array(), "{}", missing.body);
    let no_target = api.post("bindings/", json!({"policy": "x"})).await;
    assert!(expect(&no_target, 422)["fields"]["target"].is_array(), "{}", no_target.body);
    let bad_name = api.post("users/", json!({"username": "no spaces please"})).await;
    expect_error(&bad_name, 422, "invalid");
    assert!(bad_name.body["fields"]["username"].is_array());
    let bad_email = api.post("users/", json!({"username": "dave", "email": "not-an-address"})).await;
    assert!(expect(&bad_email, 422)["fields"]["email"].is_array());
    expect_error(&api.post("users/", json!({"username": "CAROL"})).await, 409, "conflict");
    let huge = format!("{{\"username\": \"{}\"}}", "x".repeat(100 * 1024));
    let too_large = api.raw_post("users/", huge.into_bytes()).await;
    assert_eq!(too_large.status, 413, "{}", too_large.body);
    // Unknown ids: 404.
    expect_error(&api.get("users/0190a8c4-0000-7000-8000-000000000000/").await, 404, "not_found");
    expect_error(&api.get("users/not-a-uuid/").await, 404, "not_found");
    expect_error(&api.delete("groups/0190a8c4-0000-7000-8000-000000000000/").await, 404, "not_found");

    // Optimistic concurrency: the ETag of what was read; a stale one is refused with 409.
    let read = api.get(&format!("users/{carol_id}/")).await;
    let v1 = read.etag();
    let changed = api.patch_if(&format!("users/{carol_id}/"), &v1, json!({"name": "Carol Changed"})).await;
    assert_eq!(expect(&changed, 200)["name"], "Carol Changed");
    assert_ne!(changed.etag(), v1);
    let stale = api.patch_if(&format!("users/{carol_id}/"), &v1, json!({"name": "Lost Update"})).await;
    expect_error(&stale, 409, "conflict");
    let stale_field =
        api.patch(&format!("users/{carol_id}/"), json!({"name": "Lost", "version": v1.trim_matches('"')})).await;
    expect_error(&stale_field, 409, "conflict");
    assert_eq!(expect(&api.get(&format!("users/{carol_id}/")).await, 200)["name"], "Carol Changed");
    let regrouped =
        api.patch(&format!("users/{carol_id}/"), json!({"groups": [], "email": "carol@example.test"})).await;
    assert_eq!(expect(&regrouped, 200)["groups"], json!([]));
    assert_eq!(regrouped.body["email"], "carol@example.test");
    expect_error(&api.patch(&format!("users/{carol_id}/"), json!({"groups": ["nope"]})).await, 422, "invalid");

    // Password, sessions, recovery link, devices.
    assert_eq!(
        api.post(&format!("users/{carol_id}/set_password/"), json!({"password": "new-carol-pass"})).await.status,
        204
    );
    expect_error(&api.post(&format!("users/{carol_id}/set_password/"), json!({"password": ""})).await, 422, "invalid");
    let browser = client();
    let done = json_login(&browser, base, "carol", "new-carol-pass").await;
    assert_eq!(done["component"], "redirect", "{done}");
    let sessions = expect(&api.get(&format!("users/{carol_id}/sessions/")).await, 200).clone();
    assert_eq!(sessions.as_array().unwrap().len(), 1);
    let sid = sessions[0]["id"].as_str().unwrap();
    assert_eq!(api.delete(&format!("users/{carol_id}/sessions/{sid}/")).await.status, 204);
    assert_eq!(expect(&api.get(&format!("users/{carol_id}/sessions/")).await, 200), &json!([]));
    json_login(&browser, base, "carol", "new-carol-pass").await;
    assert_eq!(expect(&api.delete(&format!("users/{carol_id}/sessions/")).await, 200)["revoked"], 1);
    let link = api.post(&format!("users/{carol_id}/recovery_link/"), json!({"expires_in": 600})).await;
    assert!(expect(&link, 201)["link"].as_str().unwrap().contains("/recovery/use-token/"), "{}", link.body);
    expect_error(
        &api.post(&format!("users/{carol_id}/recovery_link/"), json!({"expires_in": 1})).await,
        422,
        "invalid",
    );
    assert_eq!(expect(&api.get(&format!("users/{carol_id}/devices/")).await, 200), &json!([]));
    expect_error(
        &api.delete(&format!("users/{carol_id}/devices/0190a8c4-0000-7000-8000-000000000000/")).await,
        404,
        "not_found",
    );

    // App passwords: the secret only in the creation answer; unknown applications and
    // duplicate names refused; revocable by id.
    let created =
        api.post(&format!("users/{carol_id}/app_passwords/"), json!({"name": "sync", "expires": "90d"})).await;
    let secret = expect(&created, 201)["secret"].as_str().unwrap().to_string();
    assert!(secret.len() >= 40, "{}", created.body);
    let pw_id = created.body["id"].as_str().unwrap().to_string();
    let listed = expect(&api.get(&format!("users/{carol_id}/app_passwords/")).await, 200).clone();
    assert_eq!(listed[0]["name"], "sync");
    assert!(listed[0]["applications"].is_null() && listed[0]["expires_at"].is_string(), "{listed}");
    assert!(!listed.to_string().contains(&secret));
    expect_error(
        &api.post(&format!("users/{carol_id}/app_passwords/"), json!({"name": "x", "applications": ["nope"]})).await,
        422,
        "invalid",
    );
    expect_error(
        &api.post(&format!("users/{carol_id}/app_passwords/"), json!({"name": "sync"})).await,
        409,
        "conflict",
    );
    assert_eq!(api.delete(&format!("users/{carol_id}/app_passwords/{pw_id}/")).await.status, 204);
    expect_error(&api.delete(&format!("users/{carol_id}/app_passwords/{pw_id}/")).await, 404, "not_found");

    // Delete.
    assert_eq!(api.delete(&format!("users/{carol_id}/")).await.status, 204);
    expect_error(&api.get(&format!("users/{carol_id}/")).await, 404, "not_found");
    let deleted = expect(&api.get("events/?action=user_deleted").await, 200).clone();
    assert_eq!(deleted["results"][0]["username"], "carol");
    assert_eq!(deleted["results"][0]["context"]["actor"], "root");
}

async fn api_last_superuser_is_protected_and_groups_nest(env: Env) {
    let token = admin_token(&env);
    let server = env.start().await;
    let api = Api::new(&server.base, Some(&token));

    let users = expect(&api.get("users/?search=root").await, 200).clone();
    let root_id = users["results"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(users["results"][0]["is_superuser"], true);
    let groups = expect(&api.get("groups/?search=admins").await, 200).clone();
    let admins_id = groups["results"][0]["id"].as_str().unwrap().to_string();

    // Every way of removing the last active superuser is refused with 409.
    expect_error(&api.delete(&format!("users/{root_id}/")).await, 409, "conflict");
    expect_error(&api.patch(&format!("users/{root_id}/"), json!({"is_active": false})).await, 409, "conflict");
    expect_error(&api.patch(&format!("users/{root_id}/"), json!({"groups": []})).await, 409, "conflict");
    expect_error(&api.post(&format!("groups/{admins_id}/remove_user/"), json!({"pk": root_id})).await, 409, "conflict");
    expect_error(&api.patch(&format!("groups/{admins_id}/"), json!({"is_superuser": false})).await, 409, "conflict");
    expect_error(&api.delete(&format!("groups/{admins_id}/")).await, 409, "conflict");
    assert_eq!(expect(&api.get(&format!("users/{root_id}/")).await, 200)["is_active"], true);

    let sub = expect(&api.post("groups/", json!({"name": "sub-admins", "parent": admins_id})).await, 201).clone();
    let sub_id = sub["id"].as_str().unwrap().to_string();

    // Nesting: a superuser flag on a parent makes members of the child superusers.
    let family = expect(&api.post("groups/", json!({"name": "family"})).await, 201).clone();
    let fid = family["id"].as_str().unwrap();
    let kids = api.post("groups/", json!({"name": "kids", "parent": fid})).await;
    let kids = expect(&kids, 201).clone();
    assert_eq!(kids["parent_name"], "family");
    let kid = expect(&api.post("users/", json!({"username": "kid"})).await, 201).clone();
    let kid_id = kid["id"].as_str().unwrap();
    let kids_id = kids["id"].as_str().unwrap();
    assert_eq!(api.post(&format!("groups/{kids_id}/add_user/"), json!({"pk": kid_id})).await.status, 204);
    let members = expect(&api.get(&format!("groups/{kids_id}/members/")).await, 200).clone();
    assert_eq!(members[0]["username"], "kid");
    // A cycle is refused with the field named.
    let cycle = api.patch(&format!("groups/{fid}/"), json!({"parent": kids_id})).await;
    expect_error(&cycle, 422, "invalid");
    assert!(cycle.body["fields"]["parent"].is_array(), "{}", cycle.body);
    expect_error(&api.post("groups/", json!({"name": "FAMILY"})).await, 409, "conflict");
    expect_error(
        &api.post("groups/", json!({"name": "x", "parent": "0190a8c4-0000-7000-8000-000000000000"})).await,
        422,
        "invalid",
    );
    let read = api.get(&format!("groups/{fid}/")).await;
    let promoted = api.patch_if(&format!("groups/{fid}/"), &read.etag(), json!({"is_superuser": true})).await;
    expect(&promoted, 200);
    expect_error(&api.patch_if(&format!("groups/{fid}/"), &read.etag(), json!({"name": "fam"})).await, 409, "conflict");
    assert_eq!(expect(&api.get(&format!("users/{kid_id}/")).await, 200)["is_superuser"], true);

    // With a second superuser, root can go.
    expect_error(
        &api.post(&format!("groups/{kids_id}/remove_user/"), json!({"pk": "0190a8c4-0000-7000-8000-000000000000"}))
            .await,
        422,
        "invalid",
    );
    assert_eq!(api.post(&format!("groups/{admins_id}/remove_user/"), json!({"pk": root_id})).await.status, 204);
    // root is no longer a superuser: its token now gets 403.
    expect_error(&api.get("users/").await, 403, "forbidden");
    let kid_token = server_cli_token(&env, "kid");
    let kid_api = Api::new(&server.base, Some(&kid_token));
    let root = expect(&kid_api.get(&format!("users/{root_id}/")).await, 200).clone();
    assert_eq!((root["groups"].clone(), root["is_superuser"].clone()), (json!([]), json!(false)));

    // kid is now the only superuser (through family): family may not go, admins may, and
    // deleting a parent makes its children top-level.
    expect_error(&kid_api.delete(&format!("groups/{fid}/")).await, 409, "conflict");
    assert_eq!(kid_api.delete(&format!("groups/{admins_id}/")).await.status, 204);
    let orphan = expect(&kid_api.get(&format!("groups/{sub_id}/")).await, 200).clone();
    assert_eq!(orphan["parent"], Value::Null);
}

fn server_cli_token(env: &Env, user: &str) -> String {
    env.cli_ok(&["token", "create", "--user", user], "").trim().to_string()
}

async fn api_configuration_objects_crud(env: Env) {
    let token = admin_token(&env);
    let server = env.start().await;
    let api = Api::new(&server.base, Some(&token));
    expect(&api.post("groups/", json!({"name": "family"})).await, 201);

    // Providers of the three types; an OAuth2 client gets generated credentials.
    let proxy = api
        .post("providers/", json!({"name": "Home", "type": "proxy", "mode": "forward_domain", "external_host": "https://auth.example.test", "cookie_domain": "example.test"}))
        .await;
    let proxy = expect(&proxy, 201).clone();
    assert_eq!(proxy["authorization_flow"], "default-provider-authorization-implicit-consent");
    let oauth = api
        .post("providers/", json!({"name": "Grafana", "type": "oauth2", "redirect_uris": ["https://grafana.example.test/login/generic_oauth"]}))
        .await;
    let oauth = expect(&oauth, 201).clone();
    assert!(oauth["client_id"].as_str().unwrap().len() >= 20, "{oauth}");
    assert!(oauth["client_secret"].as_str().unwrap().len() >= 40, "{oauth}");
    let ldap = api
        .post("providers/", json!({"name": "Directory", "type": "ldap", "base_dn": "dc=example,dc=test", "bind_flow": "default-authentication-flow", "search_group": "family"}))
        .await;
    let ldap = expect(&ldap, 201).clone();
    assert_eq!(ldap["bind_flow"], "default-authentication-flow");
    // Validation is the blueprint's: fields of another type, bad references, duplicates.
    let wrong_field = api.post("providers/", json!({"name": "Bad", "type": "proxy", "client_id": "x"})).await;
    expect_error(&wrong_field, 422, "invalid");
    assert!(wrong_field.body["fields"]["client_id"].is_array(), "{}", wrong_field.body);
    let bad_flow = api
        .post("providers/", json!({"name": "Bad", "type": "ldap", "base_dn": "dc=x", "bind_flow": "no-such-flow"}))
        .await;
    assert!(expect(&bad_flow, 422)["fields"]["bind_flow"].is_array(), "{}", bad_flow.body);
    let bad_type = api.post("providers/", json!({"name": "Bad", "type": "saml"})).await;
    assert!(expect(&bad_type, 422)["fields"]["type"].is_array(), "{}", bad_type.body);
    expect_error(&api.post("providers/", json!({"name": "Home", "type": "proxy"})).await, 409, "conflict");
    let pid = proxy["id"].as_str().unwrap();
    let read = api.get(&format!("providers/{pid}/")).await;
    let changed = api
        .patch_if(
            &format!("providers/{pid}/"),
            &read.etag(),
            json!({"cookie_domain": "home.test", "external_host": "https://auth.home.test"}),
        )
        .await;
    assert_eq!(expect(&changed, 200)["cookie_domain"], "home.test");
    assert_eq!(changed.body["mode"], "forward_domain");
    expect_error(
        &api.patch_if(&format!("providers/{pid}/"), &read.etag(), json!({"mode": "forward_single"})).await,
        409,
        "conflict",
    );
    let rename = api.patch(&format!("providers/{pid}/"), json!({"name": "Other"})).await;
    assert!(expect(&rename, 422)["fields"]["name"].is_array());

    // Applications, bound to providers and groups.
    let app = api
        .post("applications/", json!({"name": "Home", "slug": "home", "provider": "Home", "launch_url": "https://home.example.test", "allowed_groups": ["family"]}))
        .await;
    let app = expect(&app, 201).clone();
    assert_eq!(app["provider"], "Home");
    assert_eq!(app["allowed_groups"], json!(["family"]));
    let taken = api.post("applications/", json!({"name": "Two", "slug": "two", "provider": "Home"})).await;
    assert!(expect(&taken, 422)["fields"]["provider"].is_array(), "{}", taken.body);
    let bad_slug = api.post("applications/", json!({"name": "Bad", "slug": "no spaces"})).await;
    assert!(expect(&bad_slug, 422)["fields"]["slug"].is_array());
    expect_error(&api.post("applications/", json!({"name": "Again", "slug": "home"})).await, 409, "conflict");
    let aid = app["id"].as_str().unwrap();
    let hidden =
        api.patch(&format!("applications/{aid}/"), json!({"launch_url": "blank://blank", "name": "Home page"})).await;
    assert_eq!(expect(&hidden, 200)["launch_url"], "blank://blank");
    assert_eq!(hidden.body["name"], "Home page");
    assert_eq!(hidden.body["allowed_groups"], json!(["family"]));
    let searched = expect(&api.get("applications/?search=home").await, 200).clone();
    assert_eq!(searched["pagination"]["count"], 1);
    assert_eq!(expect(&api.get(&format!("providers/{pid}/")).await, 200)["assigned_application"], "home");

    // The embedded outpost and which providers it serves.
    let outposts = expect(&api.get("outposts/").await, 200).clone();
    let embedded = outposts["results"].as_array().unwrap().iter().find(|o| o["name"] == "embedded").cloned();
    let oid = match embedded {
        Some(o) => o["id"].as_str().unwrap().to_string(),
        None => {
            expect(&api.post("outposts/", json!({"name": "embedded"})).await, 201)["id"].as_str().unwrap().to_string()
        }
    };
    let served = api.patch(&format!("outposts/{oid}/"), json!({"providers": ["Home", "Directory"]})).await;
    assert_eq!(expect(&served, 200)["providers"], json!(["Home", "Directory"]));
    let oauth_outpost = api.patch(&format!("outposts/{oid}/"), json!({"providers": ["Grafana"]})).await;
    expect_error(&oauth_outpost, 422, "invalid");

    // Flows (the defaults are there), stages, policies and bindings.
    let flows = expect(&api.get("flows/?page_size=100").await, 200).clone();
    assert!(flows["pagination"]["count"].as_u64().unwrap() >= 11, "{flows}");
    let login =
        flows["results"].as_array().unwrap().iter().find(|f| f["slug"] == "default-authentication-flow").unwrap();
    assert!(!login["stages"].as_array().unwrap().is_empty());
    let ordered = expect(&api.get("flows/?ordering=-slug").await, 200).clone();
    let slugs: Vec<&str> = ordered["results"].as_array().unwrap().iter().map(|f| f["slug"].as_str().unwrap()).collect();
    let mut sorted = slugs.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(slugs, sorted);
    let stage = expect(&api.post("stages/", json!({"name": "deny-all", "kind": "deny"})).await, 201).clone();
    let flow = api
        .post(
            "flows/",
            json!({"slug": "locked", "name": "Locked", "designation": "authentication", "stages": ["deny-all"]}),
        )
        .await;
    let flow = expect(&flow, 201).clone();
    assert_eq!(flow["stages"], json!(["deny-all"]));
    let bad_stage = api.post("flows/", json!({"slug": "broken", "stages": ["no-such-stage"]})).await;
    expect_error(&bad_stage, 422, "invalid");
    let policy = api
        .post("policies/", json!({"name": "weekdays", "kind": "expression", "config": {"expression": "true"}}))
        .await;
    let policy = expect(&policy, 201).clone();
    let bad_policy =
        api.post("policies/", json!({"name": "broken", "kind": "expression", "config": {"expression": "1 +"}})).await;
    expect_error(&bad_policy, 422, "invalid");
    let binding =
        api.post("bindings/", json!({"target": {"application": "home"}, "policy": "weekdays", "order": 5})).await;
    let binding = expect(&binding, 201).clone();
    assert_eq!(binding["policy"], "weekdays");
    expect_error(
        &api.post("bindings/", json!({"target": {"application": "home"}, "policy": "weekdays"})).await,
        409,
        "conflict",
    );
    let bid = binding["id"].as_str().unwrap();
    let negated = api.patch(&format!("bindings/{bid}/"), json!({"negate": true})).await;
    assert_eq!(expect(&negated, 200)["negate"], true);
    assert_eq!(negated.body["order"], 5);
    assert!(expect(&api.get("bindings/").await, 200)["pagination"]["count"].as_u64().unwrap() >= 2);

    // Deletes, then 404.
    for (path, id) in [
        ("bindings", bid),
        ("policies", policy["id"].as_str().unwrap()),
        ("flows", flow["id"].as_str().unwrap()),
        ("stages", stage["id"].as_str().unwrap()),
        ("applications", aid),
        ("providers", oauth["id"].as_str().unwrap()),
    ] {
        assert_eq!(api.delete(&format!("{path}/{id}/")).await.status, 204, "{path}");
        expect_error(&api.get(&format!("{path}/{id}/")).await, 404, "not_found");
    }
    let audit = expect(&api.get("events/?action=model_deleted&page_size=50").await, 200).clone();
    assert_eq!(audit["pagination"]["count"], 6, "{audit}");
    assert!(audit["results"].as_array().unwrap().iter().all(|e| e["context"]["actor"] == "root"));
}

async fn api_tokens_events_and_settings(env: Env) {
    let token = admin_token(&env);
    let server = env.start().await;
    let api = Api::new(&server.base, Some(&token));

    // Tokens: the key appears once, never in lists.
    let created = api.post("tokens/", json!({"description": "ci", "expires_in": 3600})).await;
    let created = expect(&created, 201).clone();
    assert!(created["key"].as_str().unwrap().starts_with("lk_api_"));
    assert!(created["expires_at"].is_string());
    let tid = created["id"].as_str().unwrap();
    let list = expect(&api.get("tokens/?search=ci").await, 200).clone();
    assert_eq!(list["pagination"]["count"], 1);
    assert!(list["results"][0].get("key").is_none());
    assert_eq!(list["results"][0]["user"], "root");
    assert_eq!(expect(&api.get(&format!("tokens/{tid}/")).await, 200)["description"], "ci");
    expect_error(&api.post("tokens/", json!({"expires_in": 5})).await, 422, "invalid");
    expect_error(&api.post("tokens/", json!({"user": "0190a8c4-0000-7000-8000-000000000000"})).await, 422, "invalid");
    assert_eq!(api.delete(&format!("tokens/{tid}/")).await.status, 204);
    expect_error(&api.delete(&format!("tokens/{tid}/")).await, 404, "not_found");

    // Events: filters by action, user, application and time; newest first; read-only.
    expect(&api.post("applications/", json!({"name": "Wiki", "slug": "wiki"})).await, 201);
    let all = expect(&api.get("events/?page_size=5").await, 200).clone();
    assert!(all["pagination"]["count"].as_u64().unwrap() >= 3);
    let times: Vec<&str> =
        all["results"].as_array().unwrap().iter().map(|e| e["created_at"].as_str().unwrap()).collect();
    // Every timestamp has milliseconds, so the text orders as the time does.
    assert!(times.iter().all(|t| t.len() == "2026-01-01T00:00:00.000Z".len() && t.ends_with('Z')), "{times:?}");
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted);
    let tokens = expect(&api.get("events/?action=token_created").await, 200).clone();
    assert_eq!(tokens["pagination"]["count"], 2, "{tokens}");
    let by_user = expect(&api.get("events/?username=root&action=token_deleted").await, 200).clone();
    assert_eq!(by_user["pagination"]["count"], 1);
    let uid = by_user["results"][0]["user_id"].as_str().unwrap();
    let by_id = expect(&api.get(&format!("events/?user={uid}&action=token_deleted")).await, 200).clone();
    assert_eq!(by_id["pagination"]["count"], 1);
    let app_events = expect(&api.get("events/?application=wiki").await, 200).clone();
    assert_eq!(app_events["pagination"]["count"], 1, "{app_events}");
    assert_eq!(app_events["results"][0]["action"], "model_created");
    let future = expect(&api.get("events/?since=2999-01-01T00:00:00Z").await, 200).clone();
    assert_eq!(future["pagination"]["count"], 0);
    let past = expect(&api.get("events/?until=2000-01-01T00:00:00Z").await, 200).clone();
    assert_eq!(past["pagination"]["count"], 0);
    let bad_time = api.get("events/?since=yesterday").await;
    expect_error(&bad_time, 400, "invalid");
    assert!(bad_time.body["fields"]["since"].is_array());
    assert_eq!(api.post("events/", json!({})).await.status, 405);

    // Settings: read, change with If-Match, stale edits and bad values refused.
    let read = api.get("settings/").await;
    assert_eq!(expect(&read, 200)["branding_title"], "Latchkey");
    let changed =
        api.patch_if("settings/", &read.etag(), json!({"branding_title": "Home IdP", "avatars": "none"})).await;
    assert_eq!(expect(&changed, 200)["branding_title"], "Home IdP");
    expect_error(&api.patch_if("settings/", &read.etag(), json!({"branding_title": "Lost"})).await, 409, "conflict");
    let unknown = api.patch("settings/", json!({"secret_key": "x"})).await;
    assert!(expect(&unknown, 422)["fields"]["secret_key"].is_array());
    let bad_flow = api.patch("settings/", json!({"default_recovery_flow": "nope"})).await;
    assert!(expect(&bad_flow, 422)["fields"]["default_recovery_flow"].is_array());
    let bad_avatars = api.patch("settings/", json!({"avatars": "robots"})).await;
    assert!(expect(&bad_avatars, 422)["fields"]["avatars"].is_array());
    let wrong_type = api.patch("settings/", json!({"event_retention_days": "many"})).await;
    assert!(expect(&wrong_type, 422)["fields"]["event_retention_days"].is_array(), "{}", wrong_type.body);
    assert_eq!(expect(&api.get("settings/").await, 200)["branding_title"], "Home IdP");
    let audit = expect(&api.get("events/?action=settings_changed").await, 200).clone();
    assert_eq!(audit["pagination"]["count"], 1);
    assert_eq!(audit["results"][0]["context"]["actor"], "root");
}

/// Walks every operation of the served OpenAPI document and sends it malformed parameters,
/// ids and bodies: every answer must be a clear 4xx (or a success), never a 5xx.
async fn api_bad_input_to_every_operation_is_never_a_500(env: Env) {
    let token = admin_token(&env);
    let server = env.start().await;
    let api = Api::new(&server.base, Some(&token));
    let doc: Value =
        client().get(format!("{}/api/v1/schema.json", server.base)).send().await.unwrap().json().await.unwrap();
    // A real object of each collection, so edits with bad bodies reach validation.
    let mut real_ids = std::collections::HashMap::new();
    for collection in ["users", "groups", "flows", "stages", "outposts", "applications", "providers", "policies"] {
        let list = api.get(&format!("{collection}/")).await;
        if let Some(id) = list.body["results"][0]["id"].as_str() {
            real_ids.insert(collection.to_string(), id.to_string());
        }
    }
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"text\"".to_vec(),
        b"{\"name\": 1, \"username\": [], \"type\": {}, \"parent\": \"x\"}".to_vec(),
        b"{\"name\": \"\\u0000\", \"slug\": \"../..\", \"config\": 5, \"target\": \"x\"}".to_vec(),
        format!("{{\"name\": \"{}\", \"email\": \"{}\"}}", "n".repeat(5000), "@".repeat(300)).into_bytes(),
        vec![0xff, 0xfe, 0x00],
    ];
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let collection = path.trim_start_matches("/api/v1/").split('/').next().unwrap().to_string();
            let mut ids =
                vec!["not-an-id".to_string(), "0190a8c4-0000-7000-8000-000000000000".to_string(), "%00".to_string()];
            if method != "delete" {
                if let Some(id) = real_ids.get(&collection) {
                    ids.push(id.clone());
                }
            }
            for id in &ids {
                let concrete = path
                    .replace("{id}", id)
                    .replace("{session_id}", "zz")
                    .replace("{device_id}", "0190a8c4-0000-7000-8000-000000000000");
                let url = format!("{}{concrete}?page=-1&page_size=x&ordering=%3Bdrop&since=nope&user=me", server.base);
                let variants: Vec<Option<Vec<u8>>> = if method == "get" || method == "delete" {
                    vec![None]
                } else {
                    bodies.iter().cloned().map(Some).collect()
                };
                for body in variants {
                    let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                    let mut rb = api.c.request(m, &url).bearer_auth(&token);
                    if let Some(b) = body.clone() {
                        rb = rb.header("content-type", "application/json").body(b);
                    }
                    let r = rb.send().await.unwrap();
                    let status = r.status().as_u16();
                    let text = r.text().await.unwrap();
                    assert!(
                        status < 500,
                        "{method} {concrete} with {:?}: {status} {text}",
                        body.map(|b| String::from_utf8_lossy(&b).chars().take(80).collect::<String>())
                    );
                    if status >= 400 {
                        let err: Value = serde_json::from_str(&text)
                            .unwrap_or_else(|_| panic!("{method} {concrete}: not JSON: {text}"));
                        assert!(err["error"].is_string() && err["message"].is_string(), "{method} {concrete}: {text}");
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 300, "only {checked} requests were sent");
    // The administrator and the admins group survived it all.
    let root = expect(&api.get("users/?search=root").await, 200).clone();
    assert_eq!(root["results"][0]["is_superuser"], true);
}
