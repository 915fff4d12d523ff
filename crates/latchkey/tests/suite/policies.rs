//! Issue-3 scenarios: throttling, policies on flows and stages, consent, prompts and
//! user_write, `policy test` — on SQLite and PostgreSQL.

use crate::common::*;
use serde_json::{json, Value};

on_both_backends!(
    throttling_engages_says_when_and_an_admin_can_lift_it,
    flow_and_stage_policies_deny_and_skip,
    consent_is_asked_once_remembered_and_asked_again_after_revocation,
    user_settings_and_password_change_validate_and_write,
    policy_test_prints_result_or_error,
    breached_passwords_are_refused_through_the_hibp_range_api,
);

async fn post(c: &reqwest::Client, url: &str, body: Value) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = c.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.json().await.unwrap(), headers)
}

async fn throttling_engages_says_when_and_an_admin_can_lift_it(env: Env) {
    env.create_user("alice", "alice-password", &[]);
    env.create_user("bob", "bob-password", &[]);
    let server = env.start().await;
    let base = &server.base;
    let c = client();
    let url = executor(base, "default-authentication-flow");
    let _ = get_json(&c, &url).await;
    for _ in 0..5 {
        let (status, body, _) = post(&c, &url, json!({"uid_field": "alice", "password": "wrong"})).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["errors"]["non_field_errors"].is_array());
    }
    // Now even the right password is refused, with a time to retry after.
    let (status, body, headers) = post(&c, &url, json!({"uid_field": "alice", "password": "alice-password"})).await;
    assert_eq!(status, 429, "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=15).contains(&retry), "retry after {retry}");
    assert!(body["errors"]["non_field_errors"][0].as_str().unwrap().contains("Try again in"));
    // An unknown account is throttled exactly the same way (no enumeration).
    for _ in 0..5 {
        post(&c, &url, json!({"uid_field": "nobody", "password": "wrong"})).await;
    }
    let (status, _, _) = post(&c, &url, json!({"uid_field": "nobody", "password": "wrong"})).await;
    assert_eq!(status, 429);
    // Someone else behind the same address is not locked out.
    let (status, body, _) = post(&client(), &url, json!({"uid_field": "bob", "password": "bob-password"})).await;
    assert_eq!((status, body["component"].as_str()), (200, Some("redirect")));
    // Throttle, never lock: the admin lifts it.
    let listed = env.cli_ok(&["throttle", "list"], "");
    assert!(listed.contains("user:alice"), "{listed}");
    env.cli_ok(&["throttle", "clear", "--user", "alice"], "");
    assert_eq!(json_login(&client(), base, "alice", "alice-password").await["component"], "redirect");
    server.stop();
}

async fn flow_and_stage_policies_deny_and_skip(env: Env) {
    env.create_user("member", "member-password", &[]);
    env.create_user("outsider", "outsider-password", &[]);
    env.create_user("boss", "boss-password", &[]);
    env.apply_blueprint(
        "gated.yaml",
        r#"
groups:
  - name: family
  - name: kids
    parent: family
policies:
  - name: is-boss
    kind: expression
    config:
      expression: "user.username == 'boss'"
stages:
  - name: gated-note
    kind: prompt
    config:
      fields:
        - name: note
          label: Note
          type: text
          required: true
flows:
  - slug: family-only
    name: Family only
    title: Family only
    designation: stage_configuration
    authentication: require_authenticated
    stages: [gated-note]
bindings:
  - target: { flow: family-only }
    group: family
    order: 0
  - target: { flow: family-only }
    policy: is-boss
    order: 1
  - target: { stage_binding: { flow: family-only, stage: gated-note } }
    policy: is-boss
    negate: true
    order: 0
"#,
    );
    env.cli_ok(&["group", "add-member", "kids", "member"], "");
    let server = env.start().await;
    let base = &server.base;
    let url = executor(base, "family-only");

    // Not in family (nested: kids ⊂ family), not the boss: denied.
    let c = client();
    json_login(&c, base, "outsider", "outsider-password").await;
    let denied = get_json(&c, &url).await;
    assert_eq!(denied["component"], "access_denied", "{denied}");

    // A member of a child group passes the flow binding and sees the prompt.
    let c = client();
    json_login(&c, base, "member", "member-password").await;
    let prompt = get_json(&c, &url).await;
    assert_eq!(prompt["component"], "prompt", "{prompt}");
    let (status, body, _) = post(&c, &url, json!({})).await;
    assert_eq!(status, 400, "missing required field: {body}");
    assert!(body["errors"]["note"].is_array());
    let (_, done, _) = post(&c, &url, json!({"note": "hi"})).await;
    assert_eq!(done["component"], "redirect");

    // The boss passes through the `any` flow bindings, and the negated stage binding skips the prompt.
    let c = client();
    json_login(&c, base, "boss", "boss-password").await;
    let skipped = get_json(&c, &url).await;
    assert_eq!(skipped["component"], "redirect", "{skipped}");
    server.stop();
}

async fn consent_is_asked_once_remembered_and_asked_again_after_revocation(env: Env) {
    env.create_user("carol", "carol-password", &[]);
    env.create_user("dave", "dave-password", &[]);
    env.apply_blueprint(
        "apps.yaml",
        r#"
groups:
  - name: viewers
providers:
  - name: Grafana
    type: oauth2
    client_type: confidential
    client_id: grafana
    client_secret: "a-secret"
    redirect_uris: [https://grafana.example.test/login/generic_oauth]
    authorization_flow: default-provider-authorization-explicit-consent
applications:
  - name: Grafana
    slug: grafana
    provider: Grafana
    allowed_groups: [viewers]
"#,
    );
    env.cli_ok(&["group", "add-member", "viewers", "carol"], "");
    let server = env.start().await;
    let base = &server.base;
    let url =
        format!("{}?query=application%3Dgrafana", executor(base, "default-provider-authorization-explicit-consent"));
    let answer = executor(base, "default-provider-authorization-explicit-consent");

    let c = client();
    json_login(&c, base, "carol", "carol-password").await;
    let asked = get_json(&c, &url).await;
    assert_eq!(asked["component"], "consent", "{asked}");
    assert_eq!(asked["application"]["slug"], "grafana");
    let (_, done, _) = post(&c, &answer, json!({})).await;
    assert_eq!(done["component"], "redirect");
    // Remembered.
    assert_eq!(get_json(&c, &url).await["component"], "redirect");
    let listed = env.cli_ok(&["consent", "list", "carol"], "");
    assert!(listed.contains("grafana"), "{listed}");
    env.cli_ok(&["consent", "revoke", "--user", "carol", "--application", "grafana"], "");
    assert_eq!(get_json(&c, &url).await["component"], "consent");

    // Not in the allowed group: denied, never asked.
    let c = client();
    json_login(&c, base, "dave", "dave-password").await;
    let denied = get_json(&c, &url).await;
    assert_eq!(denied["component"], "access_denied", "{denied}");
    assert!(denied["error"].as_str().unwrap().contains("Grafana"));

    // Not logged in: the authorization flow requires it.
    assert_eq!(get_json(&client(), &url).await["component"], "access_denied");
    server.stop();
}

async fn user_settings_and_password_change_validate_and_write(env: Env) {
    env.create_user("erin", "erin-first-password", &["--email", "erin@example.test"]);
    let server = env.start().await;
    let base = &server.base;
    let c = client();
    json_login(&c, base, "erin", "erin-first-password").await;

    let settings = executor(base, "default-user-settings-flow");
    let prompt = get_json(&c, &settings).await;
    assert_eq!(prompt["component"], "prompt", "{prompt}");
    let email = prompt["fields"].as_array().unwrap().iter().find(|f| f["name"] == "email").unwrap();
    assert_eq!(email["initial_value"], "erin@example.test", "prefilled from the user");
    let (_, refused, _) =
        post(&c, &settings, json!({"username": "erin", "name": "Erin", "email": "not-an-email"})).await;
    assert!(refused["errors"]["email"].is_array(), "{refused}");
    let (_, done, _) =
        post(&c, &settings, json!({"username": "erin", "name": "Erin Example", "email": "erin@new.example.test"}))
            .await;
    assert_eq!(done["component"], "redirect", "{done}");
    let shown = env.cli_ok(&["user", "show", "erin"], "");
    assert!(shown.contains("Erin Example"), "{shown}");
    // A new address must be confirmed from the link mailed to it (logged: no SMTP host here).
    assert!(shown.contains("erin@example.test"), "unchanged until confirmed: {shown}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let link = loop {
        let log = server.log_text();
        if let Some(i) = log.find("/if/user/confirm-email/") {
            let start = log[..i].rfind("http").unwrap();
            break log[start..]
                .split(|c: char| c.is_whitespace() || c == '"')
                .next()
                .unwrap()
                .trim_end_matches('\\')
                .to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no confirmation mail logged");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let link = link.split("\\n").next().unwrap().to_string();
    let page = c.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200, "{link}");
    let html = page.text().await.unwrap();
    let csrf = html.split("name=\"csrf_token\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    assert!(
        env.cli_ok(&["user", "show", "erin"], "").contains("erin@example.test"),
        "showing the page changes nothing"
    );
    let done = c.post(&link).form(&[("csrf_token", csrf.as_str())]).send().await.unwrap();
    assert_eq!(done.status(), 200);
    assert!(env.cli_ok(&["user", "show", "erin"], "").contains("erin@new.example.test"));
    assert_eq!(c.post(&link).form(&[("csrf_token", csrf.as_str())]).send().await.unwrap().status(), 404, "single use");

    let change = executor(base, "default-password-change");
    assert_eq!(get_json(&c, &change).await["component"], "password");
    let (_, wrong, _) = post(&c, &change, json!({"password": "not-it"})).await;
    assert!(!wrong["errors"].as_object().unwrap().is_empty());
    let (_, next, _) = post(&c, &change, json!({"password": "erin-first-password"})).await;
    assert_eq!(next["component"], "prompt", "{next}");
    let (_, weak, _) = post(&c, &change, json!({"password": "password", "password_repeat": "password"})).await;
    assert!(weak["errors"]["password"].is_array(), "the default password policy refuses it: {weak}");
    let (_, mismatch, _) =
        post(&c, &change, json!({"password": "Correct-Horse-Battery-9", "password_repeat": "something else"})).await;
    assert!(mismatch["errors"]["password_repeat"].is_array(), "{mismatch}");
    let (_, changed, _) =
        post(&c, &change, json!({"password": "Correct-Horse-Battery-9", "password_repeat": "Correct-Horse-Battery-9"}))
            .await;
    assert_eq!(changed["component"], "redirect", "{changed}");
    // The one who changed it stays logged in; the old password is gone.
    assert_eq!(c.get(format!("{base}/if/user/")).send().await.unwrap().status(), 200);
    assert_eq!(json_login(&client(), base, "erin", "erin-first-password").await["component"], "identification");
    assert_eq!(json_login(&client(), base, "erin", "Correct-Horse-Battery-9").await["component"], "redirect");
    server.stop();
}

async fn policy_test_prints_result_or_error(env: Env) {
    env.create_user("frank", "frank-password", &["--group", "admins", "--email", "frank@example.test"]);
    let out = env.cli_ok(
        &["policy", "test", "--expression", "'admins' in user.groups && user.is_superuser", "--user", "frank"],
        "",
    );
    assert_eq!(out.lines().next(), Some("true"));
    let out =
        env.cli_ok(&["policy", "test", "--expression", "user.email.endsWith('@other.test')", "--user", "frank"], "");
    assert_eq!(out.lines().next(), Some("false"));
    let bad = env.cli(&["policy", "test", "--expression", "user.username ==", "--user", "frank"], "");
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("line") || err.contains("column") || err.contains("position"), "{err}");
}

/// A stand-in for the Have I Been Pwned range API: knows one breached password.
async fn fake_hibp(breached: &'static str) -> u16 {
    use sha1::{Digest, Sha1};
    let digest: String = Sha1::digest(breached.as_bytes()).iter().map(|b| format!("{b:02X}")).collect();
    let (prefix, suffix) = (digest[..5].to_string(), digest[5..].to_string());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/range/{p}",
        axum::routing::get(move |axum::extract::Path(p): axum::extract::Path<String>| {
            let body = if p == prefix {
                format!("0000000000000000000000000000000000A:1\r\n{suffix}:42\r\n")
            } else {
                String::new()
            };
            async move { body }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    port
}

async fn breached_passwords_are_refused_through_the_hibp_range_api(env: Env) {
    let breached = "Correct-Horse-Breached-77";
    let port = fake_hibp(breached).await;
    env.create_user("pat", "pat-first-password", &[]);
    env.apply_blueprint(
        "hibp.yaml",
        r#"
policies:
  - name: default-password-policy
    kind: password
    config: { length_min: 8, zxcvbn_score_threshold: 2, check_hibp: true }
"#,
    );
    let mut cmd = env.command(&["serve"]);
    cmd.env("LATCHKEY_PASSWORD__HIBP_URL", format!("http://127.0.0.1:{port}/range/"));
    let server = Server::start_with(&env, cmd).await;
    let base = &server.base;
    let c = client();
    json_login(&c, base, "pat", "pat-first-password").await;
    let change = executor(base, "default-password-change");
    let _ = get_json(&c, &change).await;
    let (_, next, _) = post(&c, &change, json!({"password": "pat-first-password"})).await;
    assert_eq!(next["component"], "prompt", "{next}");
    let (_, refused, _) = post(&c, &change, json!({"password": breached, "password_repeat": breached})).await;
    let message = refused["errors"]["password"][0].as_str().unwrap_or_default().to_string();
    assert!(message.contains("breach"), "{refused}");
    let (_, done, _) = post(
        &c,
        &change,
        json!({"password": "Unbreached-Horse-Battery-5", "password_repeat": "Unbreached-Horse-Battery-5"}),
    )
    .await;
    assert_eq!(done["component"], "redirect", "{done}");
    server.stop();
}
