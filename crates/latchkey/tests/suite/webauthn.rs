//! WebAuthn (issue 5): passkeys registered and used in real headless Chromium with a CDP
//! virtual authenticator — second factor, passwordless, remember-this-browser, a cloned key
//! refused by its signature counter — and the JSON executor's WebAuthn answers, on SQLite and
//! PostgreSQL.

use crate::common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

on_both_backends!(webauthn_passkeys_in_a_real_browser);

fn browser_ready(repo: &std::path::Path) -> bool {
    let ready =
        repo.join("e2e/node_modules/playwright-core").exists() && std::path::Path::new("/usr/bin/chromium").exists();
    if !ready {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "playwright-core or chromium missing under CI");
        eprintln!("skipping: playwright-core or chromium not installed (scripts/test installs them)");
    }
    ready
}

async fn post(c: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let r = c.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn webauthn_passkeys_in_a_real_browser(env: Env) {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if !browser_ready(&repo) {
        return;
    }
    env.create_user("petra", "petra-password-1", &["--name", "Petra Passkey"]);
    env.create_user("quinn", "quinn-password-1", &[]);
    // Remember-this-browser for 7 days on the login's validation stage.
    let blueprint = env.dir.path().join("remember.yaml");
    std::fs::write(
        &blueprint,
        r#"
stages:
  - name: default-authentication-mfa-validation
    kind: authenticator_validate
    config:
      device_classes: [totp, static, webauthn]
      not_configured_action: skip
      remember_device_days: 7
"#,
    )
    .unwrap();
    env.cli_ok(&["blueprint", "apply", blueprint.to_str().unwrap()], "");
    // WebAuthn needs a secure context: browsers count http://localhost as one.
    let origin = format!("http://localhost:{}", env.http);
    let mut cmd = env.command(&["serve"]);
    cmd.env("LATCHKEY_EXTERNAL_URL", &origin);
    let server = Server::start_with(&env, cmd).await;
    let base = server.base.clone();

    let steps = env.dir.path().join("steps");
    std::fs::create_dir_all(&steps).unwrap();
    for step in ["second-factor", "passwordless", "cloned"] {
        std::fs::write(steps.join(format!("{step}.go")), b"").unwrap();
    }
    let mut child = Command::new("node")
        .arg(repo.join("e2e/browser/webauthn.mjs"))
        .args([&origin, "petra", "petra-password-1"])
        .env("STEP_DIR", &steps)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    let stdout = child.stdout.take().unwrap();
    let cli_env = env.vars();
    let steps_dir = steps.clone();
    // Between the browser's steps: sign out everywhere, as an administrator would.
    let (lines, sessions) = tokio::task::spawn_blocking(move || {
        let cli = |args: &[&str]| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_latchkey"));
            cmd.args(args).env_remove("RUST_LOG");
            for (k, v) in &cli_env {
                cmd.env(k, v);
            }
            let out = cmd.output().expect("latchkey");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let (mut lines, mut sessions) = (Vec::new(), String::new());
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("\"waiting\":\"remember\"") {
                // The sessions of the second-factor and the passwordless logins.
                sessions = cli(&["session", "list", "petra"]);
                std::fs::write(steps_dir.join("remember.go"), b"").unwrap();
            }
            if line.contains("\"waiting\":\"after-sign-out-everywhere\"") {
                cli(&["session", "revoke", "--user", "petra"]);
                std::fs::write(steps_dir.join("after-sign-out-everywhere.go"), b"").unwrap();
            }
            lines.push(line);
        }
        (lines, sessions)
    })
    .await
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "browser run failed:\n{}\n{stderr}\n{}", lines.join("\n"), server.log_text());
    let seen: Value = serde_json::from_str(lines.last().expect("a result line")).unwrap();

    // Registered: one resident (discoverable) credential, listed as a webauthn device.
    assert_eq!(seen["first_login"], "/if/user/", "{seen}");
    assert_eq!((seen["credentials"].as_u64(), seen["resident"].as_bool()), (Some(1), Some(true)), "{seen}");
    let listed = env.cli_ok(&["user", "mfa", "list", "petra"], "");
    assert!(listed.contains("webauthn") && listed.contains("Virtual passkey"), "{listed}");
    // Second factor after the password.
    assert_eq!(seen["asked_second_factor"], true, "{seen}");
    assert_eq!(seen["second_factor"], "/if/user/", "{seen}");
    // Passwordless, offered as autofill on the username field.
    assert_eq!(seen["autocomplete"], "username webauthn", "{seen}");
    assert_eq!(seen["passwordless"], "/if/user/", "{seen}");
    assert_eq!(seen["conditional_ui"], "/if/user/", "{seen}");
    // Remembered: the second login went straight in; after signing out everywhere it asked again.
    assert_eq!(seen["remembered_login"], "/if/user/", "{seen}");
    assert_eq!(seen["skipped_second_factor"], "/if/user/", "{seen}");
    assert_eq!(seen["asked_again"], true, "{seen}");
    assert_eq!(seen["after_sign_out_everywhere_done"], "/if/user/", "{seen}");
    // A clone with a lower signature counter: refused, and audited.
    assert!(seen["counter_before_clone"].as_u64().unwrap() >= 4, "{seen}");
    assert_ne!(seen["cloned_path"], "/if/user/", "{seen}");
    assert!(seen["cloned_error"].as_str().unwrap_or("").contains("not accepted"), "{seen}");
    let log = server.log_text();
    assert!(log.contains("mfa_webauthn_counter_regressed"), "audited:\n{log}");
    assert!(log.contains("mfa_skipped_remembered_browser"), "{log}");

    // The sessions record the factors (RFC 8176): password + device-bound key, and the
    // passkey alone (with user verification: multi-factor).
    assert!(sessions.lines().any(|l| l.ends_with(" pwd,hwk,mfa")), "{sessions}");
    assert!(sessions.lines().any(|l| l.ends_with(" hwk,mfa")), "{sessions}");
    // Signing out everywhere ended them all.
    assert_eq!(env.cli_ok(&["session", "list", "petra"], "").lines().count(), 1, "only the header");

    // The JSON executor: the challenge carries the publicKey options, and malformed
    // WebAuthn JSON is a 400 with a reason.
    let c = client();
    let ch = json_login(&c, &base, "petra", "petra-password-1").await;
    assert_eq!(ch["component"], "authenticator_validate", "{ch}");
    assert_eq!(ch["device_classes"], json!(["webauthn"]));
    assert_eq!(ch["remember_device_days"], 7);
    let options = &ch["webauthn"]["publicKey"];
    assert!(options["challenge"].as_str().is_some_and(|s| s.len() >= 43), "{ch}");
    assert_eq!(options["rpId"], "localhost", "{ch}");
    assert_eq!(options["allowCredentials"].as_array().map(Vec::len), Some(1), "{ch}");
    let url = executor(&base, "default-authentication-flow");
    for bad in [json!({"webauthn": {"id": 5}}), json!({"webauthn": "{not json"}), json!({"webauthn": [1, 2]})] {
        let (status, body) = post(&c, &url, bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {body}");
        assert!(body["errors"]["webauthn"][0].as_str().unwrap().contains("not a WebAuthn credential"), "{body}");
    }
    // Well-formed but forged: the generic refusal, counted like a wrong code.
    let forged = json!({"webauthn": {
        "id": "AAAA", "rawId": "AAAA", "type": "public-key",
        "response": {"authenticatorData": "AAAA", "clientDataJSON": "AAAA", "signature": "AAAA", "userHandle": null}
    }});
    let (status, body) = post(&c, &url, forged).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["errors"]["non_field_errors"], json!(["The security key or passkey was not accepted."]));
    assert_ne!(c.get(format!("{base}/if/user/")).send().await.unwrap().status(), 200, "not logged in");
    // Picking a class that is not the user's is refused.
    let (status, body) = post(&c, &url, json!({"device_class": "totp"})).await;
    assert_eq!(status, 400, "{body}");

    // Passwordless over JSON: the identification challenge has the discoverable options.
    let c = client();
    let first = get_json(&c, &url).await;
    assert_eq!(first["component"], "identification");
    assert_eq!(first["passkey_challenge"]["mediation"], "conditional", "{first}");
    let (status, body) = post(&c, &url, json!({"passkey": "nonsense"})).await;
    assert_eq!(status, 400, "{body}");

    // Registration over JSON: the options carry the relying party and the user; malformed
    // attestation JSON is a 400, a forged one the generic refusal, and nothing is stored.
    let c = client();
    assert_eq!(json_login(&c, &base, "quinn", "quinn-password-1").await["component"], "redirect");
    let setup = executor(&base, "default-authenticator-webauthn-setup");
    let ch = get_json(&c, &setup).await;
    assert_eq!(ch["component"], "authenticator_webauthn", "{ch}");
    let options = &ch["registration"]["publicKey"];
    assert_eq!(options["rp"]["id"], "localhost", "{ch}");
    assert_eq!(options["user"]["name"], "quinn", "{ch}");
    assert_eq!(options["authenticatorSelection"]["residentKey"], "preferred", "{ch}");
    assert_eq!(options["authenticatorSelection"]["userVerification"], "preferred", "{ch}");
    let (status, body) = post(&c, &setup, json!({"response": {"id": []}})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["errors"]["response"][0].as_str().unwrap().contains("not a WebAuthn credential"), "{body}");
    let forged = json!({"response": {"id": "AAAA", "rawId": "AAAA", "type": "public-key",
        "response": {"attestationObject": "AAAA", "clientDataJSON": "AAAA"}}, "name": "forged"});
    let (status, body) = post(&c, &setup, forged).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["errors"]["non_field_errors"], json!(["The security key or passkey was not accepted."]));
    assert!(!env.cli_ok(&["user", "mfa", "list", "quinn"], "").contains("forged"));
    server.stop();
}
