//! Issue-7 scenarios: the OpenID Connect provider driven by a real relying-party library
//! (Python authlib, tests/rp/authlib_rp.py), on SQLite and PostgreSQL.

use crate::common::*;
use serde_json::{json, Value};

on_both_backends!(
    oidc_authlib_confidential_client_full_round_trip,
    oidc_authlib_public_client_and_error_cases,
    oidc_authlib_private_key_jwt,
    oidc_private_key_jwt_refusals,
);

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

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
    env.apply_blueprint("oidc.yaml", &yaml);
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

async fn oidc_authlib_private_key_jwt(env: Env) {
    env.create_user("alice", "alice-password", &["--email", "alice@example.test"]);
    // authlib makes the client's RSA key; its public half goes into the provider.
    let key_file = env.dir.path().join("client-key.pem");
    let k = key_file.display().to_string();
    let keygen = tokio::task::spawn_blocking(move || rp("keygen", "-", "-", "-", &k, "-", "-")).await.unwrap();
    let jwks = json!({ "keys": [keygen["jwk"]] });
    assert_eq!(jwks["keys"][0]["kty"], "RSA", "{keygen}");
    let yaml = format!(
        r#"
providers:
  - name: Paperless
    type: oauth2
    client_id: paperless
    redirect_uris: ["{REDIRECT}"]
    jwks: {jwks}
applications:
  - name: Paperless
    slug: paperless
    provider: Paperless
"#
    );
    env.apply_blueprint("pkjwt.yaml", &yaml);
    let server = env.start().await;
    let b = server.base.clone();
    let k = key_file.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        rp("private_key_jwt", &b, "paperless", "paperless", &k, "alice", "alice-password")
    })
    .await
    .unwrap();
    assert_eq!(out["client_credentials_sub"], "paperless", "{out}");
    assert_eq!(out["id_token_username"], "alice", "{out}");
    assert_eq!(out["refreshed"], true);
    assert_eq!(out["introspect"], json!([200, true]), "aud = the introspection endpoint: {out}");
    assert_eq!(out["replay"][0], 200, "{out}");
    assert_eq!(out["replay"][1], 401, "a replayed jti is refused: {out}");
    assert_eq!(out["replay"][2], "invalid_client");
    assert!(out["replay"][3].as_str().is_some_and(|w| w.starts_with("Basic")), "{out}");
    assert!(server.log_text().contains("its jti was used already"), "the reason is logged");
    server.stop();
}

/// What the token endpoint answered: status, `error`, and whether a challenge came with a 401.
async fn token_answer(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    if status == 401 {
        assert!(r.headers().get("www-authenticate").is_some(), "a 401 carries WWW-Authenticate");
    }
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn oidc_private_key_jwt_refusals(env: Env) {
    let key = es256_client_key("k1");
    let yaml = format!(
        r#"
providers:
  - name: Sync
    type: oauth2
    client_id: sync
    client_secret: "sync-secret-0123456789"
    jwks: {jwks}
  - name: Basic only
    type: oauth2
    client_id: basic-only
    client_secret: "basic-secret-0123456789"
    token_endpoint_auth_method: client_secret_basic
    jwks: {jwks}
applications:
  - name: Sync
    slug: sync
    provider: Sync
  - name: Basic only
    slug: basic-only
    provider: Basic only
"#,
        jwks = key.jwks()
    );
    env.apply_blueprint("pkjwt.yaml", &yaml);
    let server = env.start().await;
    let base = server.base.clone();
    let c = client();
    let token_url = format!("{base}/application/o/token/");
    let issuer = format!("{base}/application/o/sync/");
    let now = unix_now();
    let claims = |client: &str, aud: &str, jti: &str| json!({"iss": client, "sub": client, "aud": aud, "iat": now, "exp": now + 60, "jti": jti});
    let post = |extra: Vec<(&str, String)>| {
        let mut form = vec![("grant_type", "client_credentials".to_string())];
        form.extend(extra);
        c.post(&token_url).form(&form)
    };
    let with_assertion =
        |a: String| post(vec![("client_assertion_type", ASSERTION_TYPE.into()), ("client_assertion", a)]);

    // Discovery advertises the method and asymmetric algorithms only.
    let meta = get_json(&c, &format!("{issuer}.well-known/openid-configuration")).await;
    for field in ["token_endpoint_auth_methods_supported", "introspection_endpoint_auth_methods_supported"] {
        assert!(meta[field].as_array().unwrap().contains(&json!("private_key_jwt")), "{meta}");
    }
    let algs = meta["token_endpoint_auth_signing_alg_values_supported"].as_array().unwrap();
    assert!(algs.contains(&json!("ES256")) && algs.contains(&json!("RS256")) && algs.contains(&json!("EdDSA")));
    assert!(!algs.iter().any(|a| a.as_str().is_some_and(|a| a == "none" || a.starts_with("HS"))), "{meta}");

    // A good assertion (token endpoint as aud, no client_id in the body) works, once.
    let good = key.sign(&claims("sync", &token_url, "jti-1"));
    let (status, body) = token_answer(with_assertion(good.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(
        token_answer(with_assertion(good)).await,
        (401, json!({"error": "invalid_client", "error_description": "Client authentication failed."})),
        "replay"
    );
    // The issuer as aud (openid-client's choice), with a matching client_id in the body.
    let by_issuer = key.sign(&claims("sync", &issuer, "jti-2"));
    let r = post(vec![
        ("client_id", "sync".into()),
        ("client_assertion_type", ASSERTION_TYPE.into()),
        ("client_assertion", by_issuer),
    ]);
    assert_eq!(token_answer(r).await.0, 200);
    // With the key unset, the client's secret still works too.
    assert_eq!(
        token_answer(
            c.post(&token_url)
                .basic_auth("sync", Some("sync-secret-0123456789"))
                .form(&[("grant_type", "client_credentials")])
        )
        .await
        .0,
        200
    );

    // Every refusal is 401 invalid_client.
    let other_key = es256_client_key("k1");
    let mut cases: Vec<(&str, String)> = vec![
        ("wrong key", other_key.sign(&claims("sync", &token_url, "jti-w"))),
        ("expired", key.sign(&json!({"iss": "sync", "sub": "sync", "aud": token_url, "exp": now - 5, "jti": "jti-e"}))),
        ("no exp", key.sign(&json!({"iss": "sync", "sub": "sync", "aud": token_url, "jti": "jti-x"}))),
        (
            "too long",
            key.sign(&json!({"iss": "sync", "sub": "sync", "aud": token_url, "exp": now + 86400, "jti": "jti-l"})),
        ),
        ("no jti", key.sign(&json!({"iss": "sync", "sub": "sync", "aud": token_url, "exp": now + 60}))),
        ("wrong aud", key.sign(&claims("sync", &format!("{base}/application/o/basic-only/"), "jti-a"))),
        ("other server", key.sign(&claims("sync", "https://elsewhere.test/token", "jti-o"))),
        (
            "iss != sub",
            key.sign(&json!({"iss": "basic-only", "sub": "sync", "aud": token_url, "exp": now + 60, "jti": "jti-i"})),
        ),
        ("a client that takes only Basic", key.sign(&claims("basic-only", &token_url, "jti-b"))),
        ("unknown client", key.sign(&claims("nobody", &token_url, "jti-n"))),
        ("not a JWT", "not-a-jwt".into()),
    ];
    // alg none, and HS256 keyed with the client secret (client_secret_jwt is not offered).
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    cases
        .push(("alg none", format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims("sync", &token_url, "jti-0")))));
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims("sync", &token_url, "jti-h"),
        &jsonwebtoken::EncodingKey::from_secret(b"sync-secret-0123456789"),
    )
    .unwrap();
    cases.push(("HS256", hs));
    for (what, assertion) in cases {
        let (status, body) = token_answer(with_assertion(assertion)).await;
        assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{what}: {body}");
    }
    // A client_id in the body naming another client than the assertion.
    let r = post(vec![
        ("client_id", "basic-only".into()),
        ("client_assertion_type", ASSERTION_TYPE.into()),
        ("client_assertion", key.sign(&claims("sync", &token_url, "jti-m"))),
    ]);
    assert_eq!(token_answer(r).await.0, 401, "client_id must match");

    // Two methods at once, or a wrong assertion type: invalid_request.
    let fresh = |jti: &str| key.sign(&claims("sync", &token_url, jti));
    let r = post(vec![
        ("client_secret", "sync-secret-0123456789".into()),
        ("client_assertion_type", ASSERTION_TYPE.into()),
        ("client_assertion", fresh("jti-s")),
    ]);
    assert_eq!(token_answer(r).await.1["error"], "invalid_request");
    let r = c.post(&token_url).basic_auth("sync", Some("sync-secret-0123456789")).form(&[
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", &fresh("jti-b2")),
    ]);
    let (status, body) = token_answer(r).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{body}");
    let r = post(vec![("client_assertion_type", "urn:example:other".into()), ("client_assertion", fresh("jti-t"))]);
    assert_eq!(token_answer(r).await.1["error"], "invalid_request");
    let r = post(vec![("client_assertion", fresh("jti-t2"))]);
    assert_eq!(token_answer(r).await.1["error"], "invalid_request", "the type is required");

    // token_endpoint_auth_method: client_secret_basic takes Basic only.
    let basic = c.post(&token_url).basic_auth("basic-only", Some("basic-secret-0123456789"));
    assert_eq!(token_answer(basic.form(&[("grant_type", "client_credentials")])).await.0, 200);
    let in_body = post(vec![("client_id", "basic-only".into()), ("client_secret", "basic-secret-0123456789".into())]);
    assert_eq!(token_answer(in_body).await.0, 401);

    // Introspection takes an assertion naming the introspection endpoint.
    let access = {
        let (_, body) = token_answer(with_assertion(fresh("jti-for-introspection"))).await;
        body["access_token"].as_str().unwrap().to_string()
    };
    let introspect = format!("{base}/application/o/introspect/");
    let r = c.post(&introspect).form(&[
        ("token", access.as_str()),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", &key.sign(&claims("sync", &introspect, "jti-i2"))),
    ]);
    let (status, body) = token_answer(r).await;
    assert_eq!((status, body["active"].as_bool()), (200, Some(true)), "{body}");

    // The reasons are logged, never sent.
    let log = server.log_text();
    for reason in [
        "the signature does not verify",
        "has expired",
        "jti was used already",
        "aud names neither",
        "iss is not the client_id",
        "alg HS256 is not accepted",
    ] {
        assert!(log.contains(reason), "{reason} not in the log:\n{log}");
    }

    // A bad JWKS is refused on write, naming the field (REST API and blueprints alike).
    env.create_user("root", "root-password", &["--group", "admins"]);
    let api_token = env.cli_ok(&["token", "create", "--user", "root"], "").trim().to_string();
    let providers = get_json_auth(&c, &format!("{base}/api/v1/providers/?search=sync"), &api_token).await;
    let id = providers["results"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(providers["results"][0]["jwks"], key.jwks(), "{providers}");
    let mut private = key.jwk.clone();
    private["d"] = json!("AAAA");
    for (bad, says) in [
        (json!({"keys": [private]}), "private key material"),
        (json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}), "symmetric"),
        (json!([1, 2]), "JWKS"),
        (json!("{not json"), "not valid JSON"),
    ] {
        let r = c
            .patch(format!("{base}/api/v1/providers/{id}/"))
            .bearer_auth(&api_token)
            .json(&json!({ "jwks": bad }))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert!(status == 400 || status == 422, "{status} {body}");
        let msg = body["fields"]["jwks"][0].as_str().unwrap_or_else(|| panic!("no jwks field error: {body}"));
        assert!(msg.contains(says), "{msg}");
    }
    let r = c
        .patch(format!("{base}/api/v1/providers/{id}/"))
        .bearer_auth(&api_token)
        .json(&json!({ "token_endpoint_auth_method": "client_secret_jwt" }))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert!(body["fields"]["token_endpoint_auth_method"].is_array(), "{body}");
    // Setting the method to private_key_jwt through the API ends the secret's use.
    let r = c
        .patch(format!("{base}/api/v1/providers/{id}/"))
        .bearer_auth(&api_token)
        .json(&json!({ "token_endpoint_auth_method": "private_key_jwt" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let secret = c.post(&token_url).basic_auth("sync", Some("sync-secret-0123456789"));
    assert_eq!(token_answer(secret.form(&[("grant_type", "client_credentials")])).await.0, 401);
    assert_eq!(token_answer(with_assertion(fresh("jti-after-patch"))).await.0, 200);
    server.stop();

    // Contradictory settings are refused by blueprints too, naming the field.
    let jwks = key.jwks().to_string();
    let path = env.dir.path().join("bad.yaml");
    for (extra, field, says) in [
        ("token_endpoint_auth_method: private_key_jwt", "jwks", "needs the client's public keys"),
        ("token_endpoint_auth_method: client_secret_jwt", "token_endpoint_auth_method", "is not one of"),
        ("token_endpoint_auth_method: none", "token_endpoint_auth_method", "for public clients"),
        (&format!("client_type: public\n    jwks: '{jwks}'"), "jwks", "public client"),
        (
            &format!("token_endpoint_auth_method: client_secret_post\n    jwks: '{jwks}'"),
            "client_secret",
            "needs a client_secret",
        ),
    ] {
        let yaml = format!("providers:\n  - name: Bad\n    type: oauth2\n    client_id: bad\n    {extra}\n");
        std::fs::write(&path, yaml).unwrap();
        let out = env.cli(&["blueprint", "apply", path.to_str().unwrap()], "");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(&format!("(Bad).{field}")) && err.contains(says),
            "{extra}: {err}"
        );
    }
}

async fn get_json_auth(c: &reqwest::Client, url: &str, token: &str) -> Value {
    let r = c.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.json().await.unwrap()
}
