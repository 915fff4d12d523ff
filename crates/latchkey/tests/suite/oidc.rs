//! Issue-7 scenarios: the OpenID Connect provider driven by a real relying-party library
//! (Python authlib, tests/rp/authlib_rp.py), on SQLite and PostgreSQL.

use crate::common::*;
use serde_json::Value;

on_both_backends!(oidc_authlib_confidential_client_full_round_trip, oidc_authlib_public_client_and_error_cases);

const REDIRECT: &str = "http://rp.example.test/oauth/callback";

fn apply_blueprint(env: &Env) {
    let yaml = format!(
        r#"
groups:
  - name: family
providers:
  - name: Immich
    type: oauth2
    client_type: confidential
    client_id: immich
    client_secret: "immich-secret-0123456789"
    redirect_uris: ["{REDIRECT}"]
    authorization_flow: default-provider-authorization-explicit-consent
  - name: Photos SPA
    type: oauth2
    client_type: public
    client_id: photos-spa
    redirect_uris: ["{REDIRECT}"]
    signing_alg: ES256
    sub_mode: user_username
applications:
  - name: Immich
    slug: immich
    provider: Immich
    allowed_groups: [family]
  - name: Photos
    slug: photos
    provider: Photos SPA
"#
    );
    let path = env.dir.path().join("oidc.yaml");
    std::fs::write(&path, yaml).unwrap();
    env.cli_ok(&["blueprint", "apply", path.to_str().unwrap()], "");
}

/// Runs the authlib relying party; returns what it printed.
fn rp(mode: &str, base: &str, slug: &str, client: &str, secret: &str, user: &str, password: &str) -> Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rp/authlib_rp.py");
    let out = std::process::Command::new(python())
        .arg(script)
        .args([mode, base, slug, client, secret, REDIRECT, user, password])
        .output()
        .expect("python with authlib (scripts/test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "authlib RP {mode} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

async fn oidc_authlib_confidential_client_full_round_trip(env: Env) {
    env.create_user("alice", "alice-password", &["--email", "alice@example.test", "--name", "Alice Example"]);
    apply_blueprint(&env);
    env.cli_ok(&["group", "add-member", "family", "alice"], "");
    let server = env.start().await;
    let base = server.base.clone();
    let b = base.clone();
    let out = tokio::task::spawn_blocking(move || {
        rp("full", &b, "immich", "immich", "immich-secret-0123456789", "alice", "alice-password")
    })
    .await
    .unwrap();
    // RS256 by default, keys published, the ID token validated by authlib against them.
    assert_eq!(out["jwks_algs"], serde_json::json!(["RS256"]), "{out}");
    assert_eq!(out["id_token_alg"], "RS256");
    let id = &out["id_token"];
    assert_eq!(id["preferred_username"], "alice", "{out}");
    assert_eq!(id["email"], "alice@example.test");
    assert_eq!(id["name"], "Alice Example");
    assert_eq!(id["groups"], serde_json::json!(["family"]));
    assert_eq!(id["amr"], serde_json::json!(["pwd"]));
    assert!(id["sid"].is_string() && id["auth_time"].is_i64() && id["at_hash"].is_string(), "{out}");
    // Explicit consent was asked once, for the scopes requested; later authorizations remember it.
    assert_eq!(out["consented"].as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(out["userinfo"]["email"], "alice@example.test");
    assert_eq!(out["reused_code"], serde_json::json!([400, "invalid_grant"]));
    assert_eq!(out["refresh_after_code_reuse"], serde_json::json!([400, "invalid_grant"]));
    assert!(out["refreshed_keys"].as_array().unwrap().iter().any(|k| k == "id_token"), "{out}");
    assert_eq!(out["introspect"]["active"], true, "{out}");
    assert_eq!(out["introspect_refresh"], true);
    assert_eq!(out["introspect_unauthenticated"], 401);
    assert_eq!(out["reused_refresh"], serde_json::json!([400, "invalid_grant"]));
    assert_eq!(out["family_after_reuse"], serde_json::json!([400, "invalid_grant"]), "reuse revokes the family");
    assert_eq!(out["revoke_status"], 200);
    assert_eq!(out["refresh_after_revoke"], 400);
    assert_eq!(out["end_session"][0], 302);
    assert_eq!(out["end_session"][1], format!("{REDIRECT}?state=bye"));
    assert_eq!(out["prompt_none_after_logout"], serde_json::json!(["login_required"]), "{out}");
    server.stop();
}

async fn oidc_authlib_public_client_and_error_cases(env: Env) {
    env.create_user("alice", "alice-password", &["--email", "alice@example.test"]);
    env.create_user("mallory", "mallory-password", &[]);
    apply_blueprint(&env);
    env.cli_ok(&["group", "add-member", "family", "alice"], "");
    let server = env.start().await;
    let base = server.base.clone();
    let b = base.clone();
    let (public, wrong, plain, denied, secret, cc, device) = tokio::task::spawn_blocking(move || {
        (
            rp("full", &b, "photos", "photos-spa", "-", "alice", "alice-password"),
            rp("wrong_redirect", &b, "immich", "immich", "immich-secret-0123456789", "alice", "alice-password"),
            rp("pkce_plain", &b, "photos", "photos-spa", "-", "alice", "alice-password"),
            rp("denied", &b, "immich", "immich", "immich-secret-0123456789", "mallory", "mallory-password"),
            rp("bad_secret", &b, "immich", "immich", "immich-secret-0123456789", "alice", "alice-password"),
            rp("client_credentials", &b, "immich", "immich", "immich-secret-0123456789", "-", "-"),
            rp("device", &b, "photos", "photos-spa", "-", "alice", "alice-password"),
        )
    })
    .await
    .unwrap();
    // Public client: PKCE only, ES256 as configured, username as subject, implicit consent.
    assert_eq!(public["id_token_alg"], "ES256", "{public}");
    assert_eq!(public["id_token"]["sub"], "alice");
    assert!(public.get("consented").is_none(), "implicit consent asks nothing: {public}");
    assert_eq!(public["family_after_reuse"], serde_json::json!([400, "invalid_grant"]));
    // An unregistered redirect_uri: an error page, never a redirect.
    assert_eq!(wrong["status"], 400, "{wrong}");
    assert_eq!(wrong["location"], Value::Null);
    // PKCE plain: refused, reported to the client.
    assert_eq!(plain["location_is_client"], true, "{plain}");
    assert_eq!(plain["error"], serde_json::json!(["invalid_request"]));
    assert_eq!(plain["state"], serde_json::json!(["s1"]));
    // Not in the application's group: an error page, no code.
    assert_eq!(denied["result"][0], "status", "{denied}");
    assert_eq!(denied["result"][1], 403, "{denied}");
    // Wrong client secret.
    assert_eq!(secret["status"], 401, "{secret}");
    assert_eq!(secret["error"], "invalid_client");
    assert!(secret["www_authenticate"].as_str().is_some_and(|w| w.starts_with("Basic")));
    // Client credentials: a token for the client itself, no ID token, no refresh token.
    assert_eq!(cc["sub"], "immich", "{cc}");
    assert_eq!(
        cc["token_keys"],
        serde_json::json!(["access_token", "expires_at", "expires_in", "scope", "token_type"])
    );
    assert_eq!(cc["userinfo"]["sub"], "immich");
    assert_eq!(cc["active"], true);

    // Device authorization: pending until the user approves the code (CSRF-checked), then tokens once.
    assert_eq!(device["pending"], "authorization_pending", "{device}");
    assert_eq!(device["forged_status"], 403);
    assert_eq!(device["approve_status"], 200);
    assert_eq!(device["preferred_username"], "alice");
    assert!(device["token_keys"].as_array().unwrap().iter().any(|k| k == "refresh_token"), "{device}");
    assert_eq!(device["again"], "expired_token");

    // Malformed requests get the protocol's errors, never a 500.
    let c = client();
    let token = format!("{base}/application/o/token/");
    let form = |body: &'static str| {
        c.post(&token).header("content-type", "application/x-www-form-urlencoded").body(body).send()
    };
    let r = form("grant_type=password&client_id=immich&client_secret=immich-secret-0123456789").await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unsupported_grant_type");
    let r = form("client_id=immich&client_id=immich&grant_type=authorization_code").await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    let r = form("client_id=photos-spa&grant_type=authorization_code&code=nope&code_verifier=x").await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
    let r = form("client_id=nobody&grant_type=authorization_code&code=x").await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c.post(&token).body(vec![0xff, 0xfe, 0x00]).send().await.unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    let authorize = format!("{base}/application/o/authorize/?client_id=immich&client_id=immich&response_type=code");
    let r = c.get(&authorize).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers().get("location").is_none()), (400, true));
    let r = c
        .get(format!("{base}/application/o/authorize/?client_id=nobody&redirect_uri={REDIRECT}"))
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), r.headers().get("location").is_none()), (400, true));
    let r = c.get(format!("{base}/application/o/userinfo/")).bearer_auth("not.a.jwt").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let r = c.get(format!("{base}/application/o/nothing/.well-known/openid-configuration")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .post(format!("{base}/application/o/revoke/"))
        .form(&[("token", "x"), ("client_id", "photos-spa")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "revoking an unknown token is not an error (RFC 7009)");
    server.stop();
}
