//! End-to-end tests: the real binary on free ports, on SQLite and on PostgreSQL, driven
//! over HTTP and through its command line.

mod common;
pub use common::*;

use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Instantiates each scenario for both store engines.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(env) = super::Env::new(super::Backend::Sqlite).await {
                    super::$name(env).await;
                }
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(env) = super::Env::new(super::Backend::Postgres).await {
                    super::$name(env).await;
                }
            })*
        }
    };
}

on_both_backends!(
    setup_link_works_once_and_only_with_its_token,
    json_login_wrong_password_unknown_user_and_logout,
    html_login_enforces_csrf,
    revoked_and_disabled_sessions_stop_within_a_second,
    restart_keeps_data,
    bad_input_gets_clear_4xx,
    acknowledged_writes_survive_kill_9,
    cli_directory_tokens_and_backup,
    health_metrics_and_security_headers,
    blueprint_design_example_applies_once,
    invalid_blueprint_changes_nothing,
    serve_applies_the_blueprint_directory,
);

async fn setup_link_works_once_and_only_with_its_token(env: Env) {
    let server = env.start().await;
    let link = server.setup_link().await;
    let token = link.split("token=").nth(1).unwrap().to_string();
    let base = &server.base;

    // Without the token, or with a wrong one, the page refuses.
    let c = client();
    let page = c.get(format!("{base}/if/flow/initial-setup/")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(page.status(), 403);
    assert!(page.text().await.unwrap().contains("invalid"));
    let wrong: Value = c
        .get(format!("{}?query=token%3Dnot-the-token", executor(base, "initial-setup")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(wrong["component"], "access_denied", "{wrong}");

    // Showing the page does not burn the token.
    let page = c.get(format!("{base}/if/flow/initial-setup/?token={token}")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("name=\"password_repeat\""));

    let c = client();
    let url = format!("{}?query=token%3D{token}", executor(base, "initial-setup"));
    let prompt: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(prompt["component"], "prompt", "{prompt}");
    let username = prompt["fields"].as_array().unwrap().iter().find(|f| f["name"] == "username").unwrap();
    assert_eq!(username["initial_value"], "admin");
    // Mismatched passwords are refused with a field error.
    let refused: Value = c
        .post(executor(base, "initial-setup"))
        .json(&json!({"username": "admin", "email": "admin@example.test", "password": "correct horse", "password_repeat": "nope"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(refused["errors"]["password_repeat"].is_array(), "{refused}");
    let done = c
        .post(executor(base, "initial-setup"))
        .json(&json!({"username": "admin", "email": "admin@example.test", "password": "correct horse", "password_repeat": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    let done: Value = done.json().await.unwrap();
    assert_eq!(done["component"], "redirect", "{done}");
    assert_eq!(done["to"], "/if/user/");
    // Logged in as the new admin.
    let portal = c.get(format!("{base}/if/user/")).send().await.unwrap();
    assert_eq!(portal.status(), 200);
    let html = portal.text().await.unwrap();
    assert!(html.contains("admin") && html.contains("admins"), "{html}");

    // The link is dead now, for anyone.
    let again: Value = client().get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(again["component"], "access_denied");
    let out = env.cli(&["setup-link"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("administrator already exists"));
    let shown = env.cli_ok(&["user", "show", "admin"], "");
    assert!(shown.contains("superuser:    yes"), "{shown}");
    // The events tell the story.
    server.stop();
}

async fn json_login_wrong_password_unknown_user_and_logout(env: Env) {
    env.create_user("alice", "wonderland-42", &["--email", "alice@example.test", "--name", "Alice Example"]);
    let server = env.start().await;
    let base = &server.base;
    let c = client();

    let first: Value = c.get(executor(base, "default-authentication-flow")).send().await.unwrap().json().await.unwrap();
    assert_eq!(first["component"], "identification");
    assert_eq!(first["password_fields"], true);

    let wrong = json_login(&c, base, "alice", "not-her-password").await;
    let unknown = json_login(&c, base, "mallory", "whatever-password").await;
    assert_eq!(wrong["component"], "identification");
    assert!(!wrong["errors"].as_object().unwrap().is_empty());
    // Same answer whether or not the account exists.
    assert_eq!(wrong["errors"], unknown["errors"]);
    assert_eq!(c.get(format!("{base}/if/user/")).send().await.unwrap().status(), 302);

    // By email, case-insensitively, with a `next` on our own origin.
    let url = format!("{}?query=next%3D%2Fif%2Fuser%2F%3Ftab%3D1", executor(base, "default-authentication-flow"));
    let _: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    let ok: Value = c
        .post(executor(base, "default-authentication-flow"))
        .json(&json!({"uid_field": "ALICE@example.test", "password": "wonderland-42"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ok, json!({"component": "redirect", "to": "/if/user/?tab=1"}));
    let portal = c.get(format!("{base}/if/user/")).send().await.unwrap();
    assert_eq!(portal.status(), 200);
    assert!(portal.text().await.unwrap().contains("Alice Example"));

    // A `next` to another site is ignored.
    let c2 = client();
    let evil = format!("{}?query=next%3Dhttps%3A%2F%2Fevil.test%2F", executor(base, "default-authentication-flow"));
    let _: Value = c2.get(&evil).send().await.unwrap().json().await.unwrap();
    let ok2: Value = c2
        .post(executor(base, "default-authentication-flow"))
        .json(&json!({"uid_field": "alice", "password": "wonderland-42"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ok2["to"], "/if/user/");

    // Logout through the invalidation flow.
    let out: Value = c.get(executor(base, "default-invalidation-flow")).send().await.unwrap().json().await.unwrap();
    assert_eq!(out["component"], "redirect");
    let after = c.get(format!("{base}/if/user/")).send().await.unwrap();
    assert_eq!(after.status(), 302);
    assert!(after.headers()["location"].to_str().unwrap().starts_with("/if/flow/default-authentication-flow/?next="));
    // c2's session is untouched.
    assert_eq!(c2.get(format!("{base}/if/user/")).send().await.unwrap().status(), 200);

    let sessions = env.cli_ok(&["session", "list", "alice"], "");
    assert_eq!(sessions.lines().count(), 2, "one session left:\n{sessions}");
    server.stop();
}

fn hidden_value(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    Some(html[start..].split('"').next()?.to_string())
}

async fn html_login_enforces_csrf(env: Env) {
    env.create_user("bob", "builder-1234", &[]);
    let server = env.start().await;
    let base = &server.base;
    let c = client();
    let page_url = format!("{base}/if/flow/default-authentication-flow/?next=%2Fif%2Fuser%2F");
    let page = c.get(&page_url).header("accept", "text/html").send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let csrf = hidden_value(&html, "csrf_token").expect("csrf field");
    assert!(html.contains("name=\"uid_field\""));

    // Without the token: refused.
    let no_csrf = c.post(&page_url).form(&[("uid_field", "bob"), ("password", "builder-1234")]).send().await.unwrap();
    assert_eq!(no_csrf.status(), 403);
    // With a token from another browser: refused.
    let other = client();
    let other_html = other.get(&page_url).send().await.unwrap().text().await.unwrap();
    let foreign = hidden_value(&other_html, "csrf_token").unwrap();
    let forged = c
        .post(&page_url)
        .form(&[("uid_field", "bob"), ("password", "builder-1234"), ("csrf_token", &foreign)])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);

    // Wrong password: the form again, with an error.
    let wrong = c
        .post(&page_url)
        .form(&[("uid_field", "bob"), ("password", "nope"), ("csrf_token", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 200);
    assert!(wrong.text().await.unwrap().contains("Invalid username or password."));

    let ok = c
        .post(&page_url)
        .form(&[("uid_field", "bob"), ("password", "builder-1234"), ("csrf_token", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/if/user/");
    let cookie = ok
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with("latchkey_session="));
    let cookie = cookie.expect("session cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
    assert_eq!(c.get(format!("{base}/if/user/")).send().await.unwrap().status(), 200);

    // Logout page redirects to the login page.
    let out =
        c.get(format!("{base}/if/flow/default-invalidation-flow/")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(out.status(), 302);
    assert_eq!(out.headers()["location"], "/if/flow/default-authentication-flow/");
    assert_eq!(c.get(format!("{base}/if/user/")).send().await.unwrap().status(), 302);
    server.stop();
}

async fn wait_until_logged_out(c: &reqwest::Client, base: &str) -> Duration {
    let start = Instant::now();
    loop {
        let status = c.get(format!("{base}/if/user/")).send().await.unwrap().status();
        if status == 302 {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "session still valid after 5 s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn revoked_and_disabled_sessions_stop_within_a_second(env: Env) {
    env.create_user("carol", "carol-password", &[]);
    let server = env.start().await;
    let base = &server.base;

    let c = client();
    assert_eq!(json_login(&c, base, "carol", "carol-password").await["component"], "redirect");
    assert_eq!(c.get(format!("{base}/if/user/")).send().await.unwrap().status(), 200);
    // Revoked by the CLI, a separate process: the server's cache must learn of it.
    let listed = env.cli_ok(&["session", "list", "carol"], "");
    let id = listed.lines().nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    env.cli_ok(&["session", "revoke", &id], "");
    let took = wait_until_logged_out(&c, base).await;
    assert!(took < Duration::from_millis(1500), "revocation took {took:?}");

    let c = client();
    assert_eq!(json_login(&c, base, "carol", "carol-password").await["component"], "redirect");
    assert_eq!(c.get(format!("{base}/if/user/")).send().await.unwrap().status(), 200);
    env.cli_ok(&["user", "disable", "carol"], "");
    let took = wait_until_logged_out(&c, base).await;
    assert!(took < Duration::from_millis(1500), "disable took {took:?}");
    assert_eq!(json_login(&c, base, "carol", "carol-password").await["component"], "identification");
    env.cli_ok(&["user", "enable", "carol"], "");

    let c = client();
    assert_eq!(json_login(&c, base, "carol", "carol-password").await["component"], "redirect");
    env.cli_ok(&["user", "set-password", "carol", "--password-stdin"], "new-carol-password\n");
    wait_until_logged_out(&c, base).await;
    assert_eq!(json_login(&c, base, "carol", "new-carol-password").await["component"], "redirect");
    env.cli_ok(&["session", "revoke", "--user", "carol"], "");
    wait_until_logged_out(&c, base).await;
    server.stop();
}

async fn restart_keeps_data(env: Env) {
    let server = env.start().await;
    env.create_user("dave", "dave-password", &[]);
    let c = client();
    assert_eq!(json_login(&c, base_of(&server), "dave", "dave-password").await["component"], "redirect");
    server.stop();
    let server = env.start().await;
    // The session and the user survive the restart.
    assert_eq!(c.get(format!("{}/if/user/", server.base)).send().await.unwrap().status(), 200);
    assert_eq!(json_login(&client(), &server.base, "dave", "dave-password").await["component"], "redirect");
    // No second setup link needed, but the defaults were not duplicated either.
    server.stop();
}

fn base_of(server: &Server) -> &str {
    &server.base
}

async fn bad_input_gets_clear_4xx(env: Env) {
    let server = env.start().await;
    let base = &server.base;
    let c = client();
    let url = executor(base, "default-authentication-flow");
    let _ = c.get(&url).send().await.unwrap();

    let malformed = c.post(&url).header("content-type", "application/json").body("{not json").send().await.unwrap();
    assert_eq!(malformed.status(), 400);
    let body: Value = malformed.json().await.unwrap();
    assert_eq!(body["error"], "invalid_json");

    let not_object = c.post(&url).json(&json!([1, 2])).send().await.unwrap();
    assert_eq!(not_object.status(), 400);

    let missing = c.post(&url).json(&json!({})).send().await.unwrap();
    assert_eq!(missing.status(), 400);
    let body: Value = missing.json().await.unwrap();
    assert!(body["errors"]["uid_field"].is_array(), "{body}");

    let wrong_type = c.post(&url).json(&json!({"uid_field": 5, "password": "x"})).send().await.unwrap();
    assert_eq!(wrong_type.status(), 400);

    let big = "x".repeat(70 * 1024);
    let too_big = c.post(&url).json(&json!({"uid_field": big})).send().await.unwrap();
    assert_eq!(too_big.status(), 413);

    let bad_utf8 = c
        .post(&url)
        .header("content-type", "application/json")
        .body(vec![b'{', 0xff, 0xfe, b'}'])
        .send()
        .await
        .unwrap();
    assert_eq!(bad_utf8.status(), 400);

    let text = c.post(&url).header("content-type", "text/plain").body("{}").send().await.unwrap();
    assert_eq!(text.status(), 415);

    let unknown = c.get(executor(base, "no-such-flow")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("no-such-flow"));
    let unknown_html =
        c.get(format!("{base}/if/flow/no-such-flow/")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(unknown_html.status(), 404);
    let html = unknown_html.text().await.unwrap();
    assert!(html.contains("<html") && html.contains("Request id"), "{html}");
    let weird = c.get(format!("{base}/if/flow/%00%ff/")).send().await.unwrap();
    assert!(weird.status().is_client_error(), "{}", weird.status());

    // Without the trailing slash it answers too.
    let bare = c.get(format!("{base}/api/v1/flows/executor/default-authentication-flow")).send().await.unwrap();
    assert_eq!(bare.status(), 200);
    assert!(server.log_text().lines().all(|l| !l.contains("panicked")));
    server.stop();
}

async fn acknowledged_writes_survive_kill_9(env: Env) {
    env.create_user("erin", "erin-password", &[]);
    let server = env.start().await;
    let base = server.base.clone();
    // Each successful login is a write (a session) acknowledged by its response.
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<reqwest::Client>::new()));
    let writer = {
        let acknowledged = acknowledged.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                let c = client();
                match tokio::time::timeout(Duration::from_secs(5), json_login_quiet(&c, &base)).await {
                    Ok(Some(true)) => acknowledged.lock().unwrap().push(c),
                    _ => return,
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.kill();
    let _ = writer.await;
    let clients: Vec<_> = acknowledged.lock().unwrap().drain(..).collect();
    assert!(!clients.is_empty(), "no login completed before the kill");
    let server = env.start().await;
    for c in &clients {
        assert_eq!(c.get(format!("{}/if/user/", server.base)).send().await.unwrap().status(), 200);
    }
    server.stop();
}

async fn json_login_quiet(c: &reqwest::Client, base: &str) -> Option<bool> {
    let url = executor(base, "default-authentication-flow");
    c.get(&url).send().await.ok()?;
    let r = c.post(&url).json(&json!({"uid_field": "erin", "password": "erin-password"})).send().await.ok()?;
    let v: Value = r.json().await.ok()?;
    Some(v["component"] == "redirect")
}

async fn cli_directory_tokens_and_backup(env: Env) {
    env.create_user("frank", "frank-password", &["--email", "frank@example.test"]);
    env.cli_ok(&["group", "create", "family"], "");
    env.cli_ok(&["group", "create", "kids", "--parent", "family"], "");
    env.cli_ok(&["group", "add-member", "kids", "frank"], "");
    let shown = env.cli_ok(&["user", "show", "frank"], "");
    assert!(shown.contains("family") && shown.contains("kids"), "nested groups are effective:\n{shown}");
    assert!(shown.contains("uid number:   2000"), "{shown}");
    // Duplicate usernames (case-insensitively) and unknown groups are one-sentence errors.
    let dup = env.cli(&["user", "create", "FRANK"], "");
    assert!(!dup.status.success());
    let err = String::from_utf8_lossy(&dup.stderr);
    assert!(err.contains("taken") && err.lines().count() == 1, "{err}");
    let bad_group = env.cli(&["user", "create", "gina", "--group", "nope"], "");
    assert!(!bad_group.status.success());
    assert!(String::from_utf8_lossy(&bad_group.stderr).contains("group 'nope' not found"));
    let bad_name = env.cli(&["user", "create", "has space"], "");
    assert!(!bad_name.status.success());
    let list = env.cli_ok(&["user", "list"], "");
    assert!(list.contains("frank") && !list.contains("gina"));
    let groups = env.cli_ok(&["group", "list"], "");
    assert!(groups.contains("admins") && groups.contains("kids"));
    env.cli_ok(&["group", "remove-member", "kids", "frank"], "");

    let token = env.cli_ok(&["token", "create", "--user", "frank", "--expires", "30d"], "");
    assert_eq!(token.lines().count(), 1);
    assert!(token.trim().starts_with("lk_api_") && token.trim().len() > 40, "{token}");

    let link = env.cli_ok(&["recovery-link", "frank", "--expires", "1h"], "");
    assert!(link.contains("/recovery/use-token/"), "{link}");

    let checked = env.cli_ok(&["config", "check"], "");
    assert!(checked.contains("listen"), "{checked}");

    // Backup, then restore into a fresh store of the same engine.
    let file = env.dir.path().join("backup.json");
    env.cli_ok(&["backup", file.to_str().unwrap()], "");
    let other = Env::new(env.backend).await.unwrap();
    other.cli_ok(&["restore", file.to_str().unwrap()], "");
    let restored = other.cli_ok(&["user", "show", "frank"], "");
    assert!(restored.contains("frank@example.test"), "{restored}");
    // Restoring twice is refused: the store is not empty any more.
    let again = other.cli(&["restore", file.to_str().unwrap()], "");
    assert!(!again.status.success());
    // The restored password works.
    let server = other.start().await;
    assert_eq!(json_login(&client(), &server.base, "frank", "frank-password").await["component"], "redirect");
    server.stop();

    env.cli_ok(&["user", "delete", "frank"], "");
    assert!(!env.cli(&["user", "show", "frank"], "").status.success());

    // The last active superuser cannot be removed, disabled or demoted in any way.
    env.create_user("root", "root-password", &["--group", "admins"]);
    let last = |args: &[&str]| {
        let out = env.cli(args, "");
        assert!(!out.status.success(), "{args:?} must be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no active superuser") && err.lines().count() == 1, "{err}");
    };
    last(&["user", "delete", "root"]);
    last(&["user", "disable", "root"]);
    last(&["group", "remove-member", "admins", "root"]);
    last(&["group", "delete", "admins"]);
    // With a second administrator the first may go.
    env.create_user("root2", "root2-password", &["--group", "admins"]);
    env.cli_ok(&["user", "delete", "root"], "");
    last(&["user", "delete", "root2"]);
}

async fn health_metrics_and_security_headers(env: Env) {
    let server = env.start().await;
    let base = &server.base;
    let c = client();
    let live = c.get(format!("{base}/-/health/live/")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    assert_eq!(c.get(format!("{base}/-/health/live")).send().await.unwrap().status(), 200);
    let page = c.get(format!("{base}/if/flow/default-authentication-flow/")).send().await.unwrap();
    let h = page.headers();
    assert!(h["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h.contains_key("referrer-policy"));
    assert!(h.contains_key("x-request-id"));
    let _ = json_login(&c, base, "nobody", "nothing-here").await;
    let metrics =
        c.get(format!("http://127.0.0.1:{}/metrics", env.metrics)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    assert!(metrics.contains("latchkey_logins_total"), "{metrics}");
    assert!(metrics.contains("http_request_duration_seconds"), "{metrics}");
    // HTTPS answers with the generated certificate.
    let tls = reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
    let r = tls.get(format!("https://127.0.0.1:{}/-/health/live/", env.https)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(env.data_dir().join("certs/cert.pem").exists());
    let hc = env.cli(&["healthcheck"], "");
    assert!(hc.status.success(), "{}", String::from_utf8_lossy(&hc.stderr));
    server.stop();
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn startup_errors_are_one_clear_sentence() {
    let env = Env::new(Backend::Sqlite).await.unwrap();

    let out = env.command(&["serve"]).env("LATCHKEY_LISTEN__HTTP", "not-an-address").output().unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("listen.http") && err.contains("not-an-address"), "{err}");

    let busy = std::net::TcpListener::bind(("127.0.0.1", env.http)).unwrap();
    let out = env.command(&["serve"]).output().unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains(&env.http.to_string()) && err.contains("in use"), "{err}");
    drop(busy);

    let file = env.dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = env
        .command(&["user", "list"])
        .env("LATCHKEY_DATA_DIR", file.join("data"))
        .env_remove("LATCHKEY_DATABASE__URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("data directory") && err.contains("a-file"), "{err}");

    // Unreadable TLS files name the path.
    let certs = env.data_dir().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("cert.pem"), b"not a certificate").unwrap();
    std::fs::write(certs.join("key.pem"), b"not a key").unwrap();
    let out = env.command(&["serve"]).output().unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("cert.pem"), "{err}");
    std::fs::remove_dir_all(&certs).unwrap();

    let out = env.command(&["recovery-link", "nobody"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("user 'nobody' not found"));

    let out = env.command(&["token", "create", "--user", "x", "--expires", "soon"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("soon"));
}

#[tokio::test]
async fn unknown_variables_are_warned_about_by_name() {
    let env = Env::new(Backend::Sqlite).await.unwrap();
    let out = env.command(&["user", "list"]).env("LATCHKEY_LISTEN__HTTTP", "x").output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("LATCHKEY_LISTEN__HTTTP"));
}

/// PostgreSQL lost while running: readiness and store-backed requests answer 503, session
/// checks already cached keep working, and everything recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lost_while_running_recovers() {
    let Some(mut env) = Env::new(Backend::Postgres).await else { return };
    env.create_user("gus", "gus-password", &[]);
    let mut url = url::Url::parse(&env.database_url).unwrap();
    let target = std::net::SocketAddr::new(url.host_str().unwrap().parse().unwrap(), url.port().unwrap_or(5432));
    let mut forwarder = Forwarder::start(target).await;
    url.set_port(Some(forwarder.port)).unwrap();
    env.database_url = url.to_string();
    let server = env.start().await;
    let base = server.base.clone();
    let c = client();
    assert_eq!(json_login(&c, &base, "gus", "gus-password").await["component"], "redirect");
    // The portal, once seen, is answered from memory (session, user, settings, applications).
    assert_eq!(c.get(format!("{base}/if/user/")).send().await.unwrap().status(), 200);

    forwarder.cut();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = c.get(format!("{base}/-/health/ready/")).send().await.unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "ready never turned 503");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let flow = c.get(executor(&base, "default-authentication-flow")).send().await.unwrap();
    assert_eq!(flow.status(), 503);
    let body: Value = flow.json().await.unwrap();
    assert_eq!(body["error"], "unavailable");
    // The cached session still answers from memory.
    assert_eq!(c.get(format!("{base}/if/user/")).send().await.unwrap().status(), 200);

    forwarder.resume().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c.get(format!("{base}/-/health/ready/")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "ready never recovered:\n{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(json_login(&client(), &base, "gus", "gus-password").await["component"], "redirect");
    assert!(!server.log_text().contains("panicked"));
    server.stop();
}

// ---- blueprints

/// DESIGN.md's example, plus the `ldap-search` group it refers to and a user imported with a hash.
fn design_blueprint(bob_hash: &str) -> String {
    format!(
        r#"groups:
  - name: family
    parent: null
  - name: ldap-search
users:
  - username: alice
    name: Alice Example
    email: alice@example.test
    password: "plain text, hashed on apply"
    groups: [family]
  - username: bob
    password_hash: "{bob_hash}"
providers:
  - name: Home forward auth
    type: proxy
    mode: forward_domain
    external_host: https://auth.example.test
    cookie_domain: example.test
    authorization_flow: default-provider-authorization-implicit-consent
  - name: Grafana
    type: oauth2
    client_type: confidential
    client_id: grafana
    client_secret: "grafana-secret"
    redirect_uris: [https://grafana.example.test/login/generic_oauth]
    authorization_flow: default-provider-authorization-explicit-consent
  - name: Directory
    type: ldap
    base_dn: dc=example,dc=test
    bind_flow: default-authentication-flow
    search_group: ldap-search
applications:
  - name: Home
    slug: home
    provider: Home forward auth
    launch_url: blank://blank
    allowed_groups: [family]
  - name: Grafana
    slug: grafana
    provider: Grafana
    launch_url: https://grafana.example.test/
outposts:
  - name: embedded
    providers: [Home forward auth, Directory]
"#
    )
}

fn write_file(path: &std::path::Path, text: &str) -> String {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, text).unwrap();
    path.to_str().unwrap().to_string()
}

async fn blueprint_design_example_applies_once(env: Env) {
    let bob_hash = bcrypt::hash("bobs-old-password", 4).unwrap();
    let file = write_file(&env.dir.path().join("home.yaml"), &design_blueprint(&bob_hash));
    let first = env.cli_ok(&["blueprint", "apply", &file], "");
    // 2 groups, 2 users, 3 providers, 2 applications; the default embedded outpost gets its providers.
    assert!(first.contains("9 created, 1 updated, 0 unchanged"), "{first}");
    let again = env.cli_ok(&["blueprint", "apply", &file], "");
    assert!(again.contains("0 created, 0 updated, 10 unchanged"), "{again}");

    let alice = env.cli_ok(&["user", "show", "alice"], "");
    assert!(alice.contains("Alice Example") && alice.contains("alice@example.test"), "{alice}");
    assert!(alice.contains("groups:       family"), "{alice}");
    let groups = env.cli_ok(&["group", "list"], "");
    assert!(groups.contains("family") && groups.contains("ldap-search"), "{groups}");

    // The plain-text password and the imported bcrypt hash both log in.
    let server = env.start().await;
    let ok = json_login(&client(), &server.base, "alice", "plain text, hashed on apply").await;
    assert_eq!(ok["component"], "redirect", "{ok}");
    let ok = json_login(&client(), &server.base, "bob", "bobs-old-password").await;
    assert_eq!(ok["component"], "redirect", "{ok}");
    server.stop();
    // Bob's hash was upgraded at login; applying again must not put the old one back.
    let again = env.cli_ok(&["blueprint", "apply", &file], "");
    assert!(again.contains("0 created, 0 updated, 10 unchanged"), "{again}");

    // A changed entry is an update, matched by name: nothing is duplicated.
    let changed = design_blueprint(&bob_hash).replace("Alice Example", "Alice Changed");
    let file = write_file(&env.dir.path().join("home.yaml"), &changed);
    let out = env.cli_ok(&["blueprint", "apply", &file], "");
    assert!(out.contains("0 created, 1 updated, 9 unchanged"), "{out}");
    assert!(env.cli_ok(&["user", "show", "alice"], "").contains("Alice Changed"));
    assert_eq!(env.cli_ok(&["user", "list", "--search", "alice"], "").lines().count(), 2);
}

/// Applies `yaml` as `bad.yaml`; it must fail with one line naming the file and `expected`.
fn refused(env: &Env, yaml: &str, expected: &[&str]) {
    let file = write_file(&env.dir.path().join("bad.yaml"), yaml);
    let out = env.cli(&["blueprint", "apply", &file], "");
    let err = stderr_of(&out);
    assert!(!out.status.success(), "accepted:\n{yaml}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("blueprint bad.yaml: "), "{err}");
    for e in expected {
        assert!(err.contains(e), "{err} should mention {e}");
    }
}

async fn invalid_blueprint_changes_nothing(env: Env) {
    // A valid new group and an invalid user: the group must not be created either.
    refused(
        &env,
        "groups:\n  - name: newgroup\nusers:\n  - username: carol\n    groups: [newgroup, nosuchgroup]\n",
        &["users[0] (carol).groups[1]", "group 'nosuchgroup' does not exist"],
    );
    refused(&env, "groups:\n  - name: newgroup\n    colour: blue\n", &["groups[0] (newgroup)", "colour"]);
    refused(&env, "users:\n  - username: carol\n    is_active: maybe\n", &["users[0] (carol).is_active"]);
    refused(&env, "gruops: []\n", &["gruops"]);
    refused(
        &env,
        "providers:\n  - name: Grafana\n    type: oauth2\n    client_id: g\n    client_secret: s\n    redirect_uris: ['not a url']\n",
        &["providers[0] (Grafana).redirect_uris[0]: 'not a url' is not an absolute URL"],
    );
    refused(
        &env,
        "providers:\n  - name: P\n    type: proxy\n    external_host: https://a.example.test\n    client_id: x\n",
        &["providers[0] (P).client_id", "not a field of a proxy provider"],
    );
    refused(
        &env,
        "applications:\n  - name: App\n    slug: app\n    provider: Nowhere\n",
        &["applications[0] (App).provider", "provider 'Nowhere' does not exist"],
    );
    refused(&env, "stages:\n  - name: s\n    kind: no_such_kind\n", &["stages[0] (s).kind", "unknown stage kind"]);
    refused(
        &env,
        "groups:\n  - name: a\n    parent: b\n  - name: b\n    parent: a\n",
        &["groups[0] (a).parent", "nested inside itself"],
    );
    let groups = env.cli_ok(&["group", "list"], "");
    assert!(!groups.contains("newgroup"), "{groups}");
    assert!(!env.cli_ok(&["user", "list"], "").contains("carol"));
}

async fn serve_applies_the_blueprint_directory(env: Env) {
    let dir = env.data_dir().join("blueprints");
    write_file(
        &dir.join("10-people.yaml"),
        "groups:\n  - name: family\nusers:\n  - username: dave\n    password: dave-password-1\n    groups: [family]\n",
    );
    let server = env.start().await;
    let ok = json_login(&client(), &server.base, "dave", "dave-password-1").await;
    assert_eq!(ok["component"], "redirect", "{ok}");
    server.stop();
    assert!(env.cli_ok(&["user", "show", "dave"], "").contains("family"));

    // An invalid file stops start-up with its error, before anything listens.
    write_file(&dir.join("20-broken.yaml"), "users:\n  - username: erin\n    groups: [nope]\n");
    let mut child = env
        .command(&["serve"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started despite an invalid blueprint");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = child.wait_with_output().unwrap();
    assert!(!status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("blueprint 20-broken.yaml: users[0] (erin).groups[0]"), "{err}");
    assert!(!env.cli_ok(&["user", "list"], "").contains("erin"));
}

#[path = "suite/policies.rs"]
mod policies;

#[path = "suite/forward_auth.rs"]
mod forward_auth;
#[path = "suite/forward_auth_rules.rs"]
mod forward_auth_rules;
#[path = "suite/ldap.rs"]
mod ldap;
#[path = "suite/ldap_access.rs"]
mod ldap_access;

#[path = "suite/recovery.rs"]
mod recovery;

#[path = "suite/oidc.rs"]
mod oidc;
#[path = "suite/oidc_node.rs"]
mod oidc_node;

#[path = "suite/api.rs"]
mod api;
#[path = "suite/mfa.rs"]
mod mfa;

#[path = "suite/admin_ui.rs"]
mod admin_ui;
#[path = "suite/webauthn.rs"]
mod webauthn;
