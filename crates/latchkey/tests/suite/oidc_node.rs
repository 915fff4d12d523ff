//! Issue-7 scenarios driven by Node `openid-client` (e2e/oidc/openid_client_rp.mjs), plus
//! signing-key rotation checked against JWKS, on SQLite and PostgreSQL.

use crate::common::*;
use serde_json::{json, Value};

on_both_backends!(
    oidc_openid_client_full_round_trip,
    oidc_openid_client_public_client_and_error_cases,
    oidc_signing_keys_rotate_with_overlap,
    oidc_openid_client_private_key_jwt,
);

const REDIRECT: &str = "http://rp.example.test/oauth/callback";

fn apply_blueprint(env: &Env, backchannel_port: u16) {
    let yaml = format!(
        r#"
groups:
  - name: family
  - name: grafana-admins
providers:
  - name: Grafana
    type: oauth2
    client_type: confidential
    client_id: grafana
    client_secret: "grafana-secret-0123456789"
    redirect_uris: ["{REDIRECT}"]
    authorization_flow: default-provider-authorization-explicit-consent
    backchannel_logout_uri: "http://127.0.0.1:{backchannel_port}/backchannel-logout"
    claims:
      - name: roles
        scope: profile
        expression: "'grafana-admins' in user.groups ? ['Admin'] : ['Viewer']"
      - name: locale
        expression: "user.attributes.locale"
  - name: Notes SPA
    type: oauth2
    client_type: public
    client_id: notes-spa
    redirect_uris: ["{REDIRECT}"]
    signing_alg: EdDSA
    sub_mode: hashed_user_id
    backchannel_logout_uri: "http://127.0.0.1:{backchannel_port}/notes-logout"
applications:
  - name: Grafana
    slug: grafana
    provider: Grafana
    allowed_groups: [family]
  - name: Notes
    slug: notes
    provider: Notes SPA
"#
    );
    env.apply_blueprint("oidc-node.yaml", &yaml);
}

/// Runs the openid-client relying party; returns what it printed.
async fn rp(mode: &str, base: &str, slug: &str, client: &str, secret: &str, extra: &[String]) -> Value {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../e2e");
    let mut cmd = std::process::Command::new("node");
    cmd.arg(root.join("oidc/openid_client_rp.mjs"))
        .args([mode, base, slug, client, secret, REDIRECT, "alice", "alice-password"])
        .args(extra);
    let out =
        tokio::task::spawn_blocking(move || cmd.output().expect("node (scripts/test installs it)")).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openid-client RP {mode} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn setup(env: &Env) -> u16 {
    env.create_user("alice", "alice-password", &["--email", "alice@example.test", "--name", "Alice Example"]);
    let port = free_port();
    apply_blueprint(env, port);
    env.cli_ok(&["group", "add-member", "family", "alice"], "");
    env.cli_ok(&["group", "add-member", "grafana-admins", "alice"], "");
    port
}

async fn oidc_openid_client_full_round_trip(env: Env) {
    let port = setup(&env);
    let server = env.start().await;
    let out = rp("full", &server.base, "grafana", "grafana", "grafana-secret-0123456789", &[port.to_string()]).await;
    assert_eq!(out["jwks_algs"], json!(["RS256"]), "{out}");
    assert_eq!(out["id_token_alg"], "RS256");
    assert_eq!(out["response_modes"], json!(["query", "form_post"]));
    let id = &out["id_token"];
    assert_eq!(id["preferred_username"], "alice", "{out}");
    assert_eq!(id["email"], "alice@example.test");
    assert_eq!(id["groups"], json!(["family", "grafana-admins"]));
    // The CEL claim mapping for the profile scope; `locale` fails (no such attribute) and is
    // left out without failing the login.
    assert_eq!(id["roles"], json!(["Admin"]), "{out}");
    assert!(id.get("locale").is_none(), "{out}");
    assert_eq!(out["userinfo"]["roles"], json!(["Admin"]));
    assert_eq!(out["userinfo"]["email"], "alice@example.test");
    // login_hint pre-filled the identification stage.
    assert_eq!(out["identification_hints"], json!(["alice"]), "{out}");
    // Refresh rotation; the rotated token reused ends the family.
    assert_eq!(out["rotated"], true);
    assert_eq!(out["refreshed_id_token_sub"], id["sub"]);
    assert_eq!(out["reused_refresh"]["error"], "invalid_grant", "{out}");
    assert_eq!(out["family_after_reuse"]["error"], "invalid_grant");
    // A reused code is refused and what it issued is revoked.
    assert_eq!(out["reused_code"]["error"], "invalid_grant", "{out}");
    assert_eq!(out["refresh_after_code_reuse"]["error"], "invalid_grant");
    // Consent asked once, remembered, asked again with prompt=consent.
    assert_eq!(out["consented"].as_array().map(Vec::len), Some(2), "{out}");
    assert_eq!(out["consent_prompted_again"], true);
    // form_post: a form to the redirect URI, a button for no-JS, a CSP limiting where it posts.
    assert_eq!(out["form_post_action"], REDIRECT);
    assert_eq!(out["form_post_has_button"], true);
    let csp = out["form_post_csp"].as_str().unwrap();
    assert!(csp.contains("form-action http://rp.example.test") && csp.contains("script-src 'sha256-"), "{csp}");
    assert_eq!(out["form_post_sub"], id["sub"]);
    assert_eq!(out["introspect"]["active"], true, "{out}");
    assert_eq!(out["refresh_after_revoke"]["error"], "invalid_grant");
    // RP-initiated logout with the back-channel logout token verified by jose against JWKS.
    assert_eq!(out["end_session"], json!([302, format!("{REDIRECT}?state=bye")]));
    assert_eq!(out["logout_sid_matches"], true, "{out}");
    assert_eq!(out["logout_token"]["sub"], id["sub"]);
    assert!(out["logout_token"]["events"]["http://schemas.openid.net/event/backchannel-logout"].is_object());
    assert_eq!(out["prompt_none_after_logout"], "login_required");
    server.stop();
}

async fn oidc_openid_client_public_client_and_error_cases(env: Env) {
    let port = setup(&env);
    let server = env.start().await;
    let public = rp("public", &server.base, "notes", "notes-spa", "-", &[port.to_string()]).await;
    // EdDSA as configured, verified by openid-client against JWKS; a hashed subject.
    assert_eq!(public["id_token_alg"], "EdDSA", "{public}");
    assert_eq!(public["jwks_algs"], json!(["EdDSA"]));
    let sub = public["id_token"]["sub"].as_str().unwrap();
    assert!(sub.len() == 64 && sub.chars().all(|c| c.is_ascii_hexdigit()), "{public}");
    assert_eq!(public["userinfo"]["sub"], sub);
    assert_eq!(public["refreshed"], true);
    assert!(public["id_token"].get("roles").is_none(), "mappings are per provider");
    // The logout flow ended the session and the client was told, with the session's sid.
    assert_eq!(public["logout_flow"], "redirect", "{public}");
    assert_eq!(public["flow_logout_token_sid_matches"], true, "{public}");

    let errors =
        rp("errors", &server.base, "grafana", "grafana", "grafana-secret-0123456789", &[port.to_string()]).await;
    assert_eq!(errors["wrong_redirect"], json!([400, null]), "{errors}");
    assert_eq!(errors["prompt_none"]["error"], "login_required", "{errors}");
    assert_eq!(errors["bad_secret"]["status"], 401, "{errors}");
    assert_eq!(errors["bad_secret_raw"][0], 401);
    assert!(errors["bad_secret_raw"][1].as_str().is_some_and(|w| w.starts_with("Basic")), "{errors}");
    assert_eq!(errors["bad_secret_raw"][2], "invalid_client");
    assert_eq!(errors["client_credentials"]["claims"]["sub"], "grafana", "{errors}");
    assert!(errors["client_credentials"]["keys"].as_array().unwrap().iter().all(|k| k != "refresh_token"));
    assert_eq!(errors["client_credentials_introspect"], true);
    assert_eq!(errors["device_approve_status"], 200, "{errors}");
    assert_eq!(errors["device_username"], "alice");
    assert_eq!(errors["device_has_refresh"], true);

    // Authorization requests that are malformed never reach the client as a 500.
    let c = client();
    let base = &server.base;
    let bad_mode = format!(
        "{base}/application/o/authorize/?client_id=grafana&redirect_uri={REDIRECT}&response_type=code&scope=openid&response_mode=fragment&state=s"
    );
    let r = c.get(&bad_mode).send().await.unwrap();
    let loc = r.headers().get("location").map(|l| l.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(loc.starts_with(REDIRECT) && loc.contains("error=invalid_request") && loc.contains("state=s"), "{loc}");
    let r = c
        .get(format!("{base}/application/o/authorize/?client_id=grafana&redirect_uri={REDIRECT}&response_type=code&scope=openid&prompt=none%20login"))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["location"].to_str().unwrap().contains("error=invalid_request"));
    let huge = "x".repeat(70 * 1024);
    let r = c
        .post(format!("{base}/application/o/token/"))
        .body(format!("grant_type=client_credentials&x={huge}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "oversized requests are refused");
    let r = c
        .get(format!("{base}/application/o/authorize/?client_id=grafana&state={}", "y".repeat(5000)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    server.stop();
}

async fn oidc_openid_client_private_key_jwt(env: Env) {
    env.create_user("alice", "alice-password", &["--email", "alice@example.test", "--name", "Alice Example"]);
    let key = es256_client_key("backup-2025");
    // The JWKS as JSON text in a YAML string, as it is pasted from a key tool.
    let yaml = format!(
        r#"
providers:
  - name: Backups
    type: oauth2
    client_type: confidential
    client_id: backups
    token_endpoint_auth_method: private_key_jwt
    jwks: '{jwks}'
    redirect_uris: ["{REDIRECT}"]
applications:
  - name: Backups
    slug: backups
    provider: Backups
"#,
        jwks = key.jwks()
    );
    env.apply_blueprint("pkjwt.yaml", &yaml);
    let server = env.start().await;
    let port = free_port().to_string();
    let out =
        rp("private_key_jwt", &server.base, "backups", "backups", "-", &[port, key.pem.clone(), key.kid.clone()]).await;
    assert!(out["auth_methods"].as_array().unwrap().contains(&json!("private_key_jwt")), "{out}");
    for alg in ["ES256", "EdDSA", "Ed25519"] {
        assert!(out["auth_signing_algs"].as_array().unwrap().contains(&json!(alg)), "{alg}: {out}");
    }
    assert!(!out["auth_signing_algs"].as_array().unwrap().iter().any(|a| a == "none" || a == "HS256"), "{out}");
    assert_eq!(out["id_token"]["preferred_username"], "alice", "{out}");
    assert_eq!(out["refreshed"], true, "{out}");
    assert_eq!(out["refreshed_sub"], out["id_token"]["sub"]);
    assert_eq!(out["client_credentials_sub"], "backups", "{out}");
    assert_eq!(out["introspect"], true, "{out}");
    assert_eq!(out["refresh_after_revoke"]["error"], "invalid_grant", "{out}");
    assert_eq!(out["secret_refused"]["status"], 401, "{out}");
    assert_eq!(out["unknown_key"]["status"], 401, "{out}");
    // Each refusal is logged with its reason (the client only learns invalid_client).
    let log = server.log_text();
    assert!(log.contains("private_key_jwt client authentication refused"), "{log}");
    assert!(log.contains("the signature does not verify"), "{log}");
    assert!(log.contains("not the client's token_endpoint_auth_method"), "{log}");
    server.stop();
}

/// The header and claims of a JWT, verified with the JWKS key its `kid` names.
fn verify_with_jwks(token: &str, jwks: &Value) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = set.find(&kid).ok_or_else(|| format!("kid {kid} not in JWKS"))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &key, &validation).map(|d| d.claims).map_err(|e| e.to_string())
}

async fn oidc_signing_keys_rotate_with_overlap(env: Env) {
    setup(&env);
    let server = env.start().await;
    let base = server.base.clone();
    let c = client();
    let token = || async {
        let r: Value = c
            .post(format!("{base}/application/o/token/"))
            .basic_auth("grafana", Some("grafana-secret-0123456789"))
            .form(&[("grant_type", "client_credentials"), ("scope", "openid")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["access_token"].as_str().unwrap_or_else(|| panic!("{r}")).to_string()
    };
    let jwks = || async { get_json(&client(), &format!("{base}/application/o/grafana/jwks/")).await };
    let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
    let old = token().await;
    let old_kid = kid(&old);
    assert_eq!(jwks().await["keys"].as_array().unwrap().len(), 1);

    let rotated = env.cli_ok(&["keys", "rotate", "--alg", "RS256"], "");
    assert!(rotated.contains(&format!("old key {old_kid} stays published until")), "{rotated}");
    let listed = env.cli_ok(&["keys", "list"], "");
    assert!(listed.lines().any(|l| l.contains(&old_kid) && l.contains("retired")), "{listed}");

    // The running server learns of the new key through the change feed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let new = loop {
        let t = token().await;
        if kid(&t) != old_kid {
            break t;
        }
        assert!(std::time::Instant::now() < deadline, "the server kept signing with the old key");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let set = jwks().await;
    let kids: Vec<&str> = set["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids.len(), 2, "{set}");
    assert!(kids.contains(&old_kid.as_str()) && kids.contains(&kid(&new).as_str()));
    // Both the token signed before the rotation and the new one verify with the JWKS, and the
    // server still accepts the old one.
    assert_eq!(verify_with_jwks(&old, &set).unwrap()["sub"], "grafana");
    assert_eq!(verify_with_jwks(&new, &set).unwrap()["sub"], "grafana");
    let r = c.get(format!("{base}/application/o/userinfo/")).bearer_auth(&old).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{base}/application/o/introspect/"))
        .basic_auth("grafana", Some("grafana-secret-0123456789"))
        .form(&[("token", old.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["active"], true);

    // A retired key whose tokens have all expired is dropped: rotate again keeping the
    // previous key for one second only; the first retired key stays.
    let middle_kid = kid(&new);
    // Verified once (and so remembered by the server) before its key is retired and dropped.
    let r = c.get(format!("{base}/application/o/userinfo/")).bearer_auth(&new).send().await.unwrap();
    assert_eq!(r.status(), 200);
    env.cli_ok(&["keys", "rotate", "--alg", "RS256", "--keep-for", "1"], "");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let set = jwks().await;
        let kids: Vec<String> =
            set["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_string()).collect();
        if kids.len() == 2 && !kids.contains(&middle_kid) && kids.contains(&old_kid) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the expired key was never dropped: {set}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let r = c.get(format!("{base}/application/o/userinfo/")).bearer_auth(&new).send().await.unwrap();
    assert_eq!(r.status(), 401, "a dropped key verifies nothing");
    let out = env.cli(&["keys", "rotate", "--alg", "HS256"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("'HS256' is not RS256, ES256 or EdDSA"));
    server.stop();

    // A claim expression that does not compile is refused on write, naming entry and position.
    let bad = env.dir.path().join("bad-claims.yaml");
    std::fs::write(
        &bad,
        "providers:\n  - name: Bad\n    type: oauth2\n    client_id: bad\n    client_secret: s\n    claims:\n      - name: ok\n        expression: \"'x'\"\n      - name: roles\n        expression: \"user.groups +\"\n",
    )
    .unwrap();
    let out = env.cli(&["blueprint", "apply", bad.to_str().unwrap()], "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("providers[0] (Bad).claims[1] (roles)") && err.contains("line 1, column"), "{err}");
    let bad_name = "providers:\n  - name: Bad\n    type: oauth2\n    client_id: bad\n    client_secret: s\n    claims:\n      - name: sub\n        expression: \"'x'\"\n";
    std::fs::write(&bad, bad_name).unwrap();
    let out = env.cli(&["blueprint", "apply", bad.to_str().unwrap()], "");
    assert!(String::from_utf8_lossy(&out.stderr).contains("set by the provider itself"));
}
