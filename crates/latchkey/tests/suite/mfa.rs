//! Issue-5 scenarios: TOTP and recovery codes enrolled through the JSON executor, codes made by
//! Debian's `oathtool`, replay refused, enforcement for admins, removal by the CLI and the
//! recovery link that bypasses MFA — on SQLite and PostgreSQL.

use crate::common::*;
use serde_json::{json, Value};

on_both_backends!(
    mfa_totp_enrollment_login_replay_and_recovery_codes,
    mfa_wrong_codes_are_throttled_across_logins,
    mfa_admin_without_mfa_is_sent_through_enrollment,
    mfa_cli_removal_and_recovery_link_bypass,
    mfa_ldap_bind_with_password_and_code,
    mfa_device_choice_and_remembered_browser_over_json,
);

const INVALID_CODE: &str = "Invalid code.";

async fn post(c: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let r = c.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The TOTP code of `secret` (base32) at unix time `at`, by oathtool.
fn oath(secret: &str, at: i64) -> String {
    let out = std::process::Command::new("oathtool")
        .args(["--totp", "-b", "-N", &format!("@{at}"), secret])
        .output()
        .expect("oathtool is installed (scripts/test installs it)");
    assert!(out.status.success(), "oathtool: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A six-digit code that is none of the valid ones around `at`.
fn wrong_code(secret: &str, at: i64) -> String {
    let valid: Vec<String> = (-2..=2).map(|i| oath(secret, at + 30 * i)).collect();
    ["123456", "654321", "111111"].into_iter().find(|c| !valid.iter().any(|v| v == c)).unwrap().to_string()
}

/// Logs in with the password; returns the next challenge.
async fn password_step(base: &str, c: &reqwest::Client, user: &str, password: &str) -> Value {
    json_login(c, base, user, password).await
}

/// Enrolls a TOTP device through the executor for the logged-in client; returns the secret
/// and the time whose code confirmed it.
async fn enroll_totp(base: &str, c: &reqwest::Client, name: &str) -> (String, i64) {
    let url = executor(base, "default-authenticator-totp-setup");
    let ch = get_json(c, &url).await;
    assert_eq!(ch["component"], "authenticator_totp", "{ch}");
    let secret = ch["secret"].as_str().unwrap().to_string();
    let config_url = ch["config_url"].as_str().unwrap();
    assert!(config_url.starts_with("otpauth://totp/Latchkey:"), "{config_url}");
    assert!(config_url.contains(&format!("secret={secret}")), "{config_url}");
    assert!(config_url.contains("algorithm=SHA1&digits=6&period=30"), "{config_url}");
    assert!(ch["qr_svg"].as_str().unwrap().contains("<svg"), "QR code as SVG");
    // A wrong code does not confirm it.
    let at = now();
    let (status, refused) = post(c, &url, json!({"code": wrong_code(&secret, at), "name": name})).await;
    assert_eq!((status, refused["component"].as_str()), (200, Some("authenticator_totp")), "{refused}");
    assert_eq!(refused["errors"]["code"][0], INVALID_CODE);
    assert_eq!(refused["secret"], secret.as_str(), "the same device is still being enrolled");
    let (status, done) = post(c, &url, json!({"code": oath(&secret, at), "name": name})).await;
    assert_eq!((status, done["component"].as_str()), (200, Some("redirect")), "{done}");
    (secret, at)
}

async fn mfa_totp_enrollment_login_replay_and_recovery_codes(env: Env) {
    env.create_user("tina", "tina-password", &[]);
    let server = env.start().await;
    let base = &server.base;
    let c = client();
    assert_eq!(password_step(base, &c, "tina", "tina-password").await["component"], "redirect");
    // The setup flows need a login.
    let anonymous = get_json(&client(), &executor(base, "default-authenticator-totp-setup")).await;
    assert_eq!(anonymous["component"], "access_denied", "{anonymous}");

    let (secret, enrolled_at) = enroll_totp(base, &c, "pixel").await;
    let listed = env.cli_ok(&["user", "mfa", "list", "tina"], "");
    assert!(listed.contains("totp") && listed.contains("pixel"), "{listed}");

    // Recovery codes: ten, shown once, confirmed with {}.
    let url = executor(base, "default-authenticator-static-setup");
    let ch = get_json(&c, &url).await;
    assert_eq!(ch["component"], "authenticator_static", "{ch}");
    let codes: Vec<String> = ch["codes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(codes.len(), 10);
    let (_, done) = post(&c, &url, json!({})).await;
    assert_eq!(done["component"], "redirect", "{done}");

    // Now the login asks for a code after the password.
    let login_url = executor(base, "default-authentication-flow");
    let c2 = client();
    let ch = password_step(base, &c2, "tina", "tina-password").await;
    assert_eq!(ch["component"], "authenticator_validate", "{ch}");
    assert_eq!(ch["device_classes"], json!(["static", "totp"]));
    // No session before the code.
    let me = c2.get(format!("{base}/if/user/")).send().await.unwrap();
    assert_ne!(me.status(), 200, "not logged in before the second factor");
    // Wrong code, and the code already used at enrollment (replay): one generic error.
    for code in [wrong_code(&secret, now()), oath(&secret, enrolled_at)] {
        let (status, refused) = post(&c2, &login_url, json!({"code": code})).await;
        assert_eq!((status, refused["component"].as_str()), (200, Some("authenticator_validate")), "{refused}");
        assert_eq!(refused["errors"]["non_field_errors"], json!([INVALID_CODE]), "{refused}");
    }
    let (status, missing) = post(&c2, &login_url, json!({})).await;
    assert_eq!(status, 400, "{missing}");
    // The next time step's code works (one step of tolerance) …
    let next_code = oath(&secret, enrolled_at + 30);
    let (_, ok) = post(&c2, &login_url, json!({"code": next_code})).await;
    assert_eq!(ok["component"], "redirect", "{ok}");
    assert_eq!(c2.get(format!("{base}/if/user/")).send().await.unwrap().status(), 200);
    // The session records both factors (RFC 8176 amr).
    let sessions = env.cli_ok(&["session", "list", "tina"], "");
    assert!(sessions.contains("pwd,otp,mfa"), "{sessions}");
    // … once.
    let c3 = client();
    assert_eq!(password_step(base, &c3, "tina", "tina-password").await["component"], "authenticator_validate");
    let (_, replayed) = post(&c3, &login_url, json!({"code": next_code})).await;
    assert_eq!(replayed["errors"]["non_field_errors"], json!([INVALID_CODE]), "{replayed}");

    // A recovery code works once (any case, with or without dashes).
    let (_, ok) = post(&c3, &login_url, json!({"code": codes[3].to_uppercase()})).await;
    assert_eq!(ok["component"], "redirect", "{ok}");
    let c4 = client();
    assert_eq!(password_step(base, &c4, "tina", "tina-password").await["component"], "authenticator_validate");
    let (_, reused) = post(&c4, &login_url, json!({"code": codes[3]})).await;
    assert_eq!(reused["errors"]["non_field_errors"], json!([INVALID_CODE]), "{reused}");
    let (_, ok) = post(&c4, &login_url, json!({"code": codes[4].replace('-', "")})).await;
    assert_eq!(ok["component"], "redirect", "{ok}");

    // Regenerating replaces the set.
    let ch = get_json(&c4, &url).await;
    let fresh: Vec<String> = ch["codes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let (_, done) = post(&c4, &url, json!({})).await;
    assert_eq!(done["component"], "redirect", "{done}");
    let c5 = client();
    assert_eq!(password_step(base, &c5, "tina", "tina-password").await["component"], "authenticator_validate");
    let page = c5
        .get(format!("{base}/if/flow/default-authentication-flow/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("name=\"code\"") && page.contains("autocomplete=\"one-time-code\""), "{page}");
    let (_, old) = post(&c5, &login_url, json!({"code": codes[5]})).await;
    assert_eq!(old["errors"]["non_field_errors"], json!([INVALID_CODE]), "the old set is gone: {old}");
    let (_, ok) = post(&c5, &login_url, json!({"code": fresh[0]})).await;
    assert_eq!(ok["component"], "redirect", "{ok}");

    // The HTML pages render the new components.
    let page = c5
        .get(format!("{base}/if/flow/default-authenticator-totp-setup/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("data:image/svg+xml"), "the QR code is inline: {page}");
    let page = c5
        .get(format!("{base}/if/flow/default-authenticator-static-setup/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("data:text/plain") && page.contains("download="), "codes download");
    server.stop();
}

async fn mfa_wrong_codes_are_throttled_across_logins(env: Env) {
    env.create_user("ursula", "ursula-password", &[]);
    let server = env.start().await;
    let base = &server.base;
    let c = client();
    json_login(&c, base, "ursula", "ursula-password").await;
    let (secret, _) = enroll_totp(base, &c, "phone").await;
    let login_url = executor(base, "default-authentication-flow");
    // A correct password between attempts does not forgive wrong codes.
    for round in 0..5 {
        let c = client();
        assert_eq!(password_step(base, &c, "ursula", "ursula-password").await["component"], "authenticator_validate");
        let (status, refused) = post(&c, &login_url, json!({"code": wrong_code(&secret, now())})).await;
        assert_eq!(status, 200, "round {round}: {refused}");
    }
    let c = client();
    assert_eq!(password_step(base, &c, "ursula", "ursula-password").await["component"], "authenticator_validate");
    let r = c.post(&login_url).json(&json!({"code": oath(&secret, now() + 30)})).send().await.unwrap();
    assert_eq!(r.status(), 429, "throttled, even with the right code");
    assert!(r.headers().contains_key("retry-after"));
    server.stop();
}

async fn mfa_admin_without_mfa_is_sent_through_enrollment(env: Env) {
    env.create_user("root", "root-password", &["--group", "admins"]);
    env.create_user("pleb", "pleb-password", &[]);
    let path = env.dir.path().join("enforce.yaml");
    std::fs::write(
        &path,
        r#"
stages:
  - name: admins-must-use-mfa
    kind: authenticator_validate
    config:
      not_configured_action: configure
      configure_stages: [totp]
flows:
  - slug: default-authentication-flow
    stages:
      - default-authentication-identification
      - default-authentication-mfa-validation
      - stage: admins-must-use-mfa
        evaluate_on_plan: false
        re_evaluate_policies: true
      - default-authentication-login
bindings:
  - target: { stage_binding: { flow: default-authentication-flow, stage: admins-must-use-mfa } }
    group: admins
    order: 0
"#,
    )
    .unwrap();
    env.cli_ok(&["blueprint", "apply", path.to_str().unwrap()], "");
    let server = env.start().await;
    let base = &server.base;
    let login_url = executor(base, "default-authentication-flow");

    // Not an admin: straight in.
    assert_eq!(json_login(&client(), base, "pleb", "pleb-password").await["component"], "redirect");

    // The admin is taken through TOTP enrollment before getting in.
    let c = client();
    let ch = json_login(&c, base, "root", "root-password").await;
    assert_eq!(ch["component"], "authenticator_totp", "{ch}");
    assert_ne!(c.get(format!("{base}/if/user/")).send().await.unwrap().status(), 200, "not in yet");
    let secret = ch["secret"].as_str().unwrap().to_string();
    let at = now();
    let (_, done) = post(&c, &login_url, json!({"code": oath(&secret, at), "name": "admin phone"})).await;
    assert_eq!(done["component"], "redirect", "{done}");
    assert_eq!(c.get(format!("{base}/if/user/")).send().await.unwrap().status(), 200);

    // Next time the admin is asked for a code, once (not by both validation stages).
    let c = client();
    assert_eq!(json_login(&c, base, "root", "root-password").await["component"], "authenticator_validate");
    let (_, ok) = post(&c, &login_url, json!({"code": oath(&secret, at + 30)})).await;
    assert_eq!(ok["component"], "redirect", "{ok}");

    // The admin loses the phone and it is removed: the policy still requires MFA, so the
    // next login goes through enrollment again rather than locking the admin out.
    let listed = env.cli_ok(&["user", "mfa", "list", "root"], "");
    let id = listed.lines().find(|l| l.contains("admin phone")).unwrap().split_whitespace().next().unwrap().to_string();
    env.cli_ok(&["user", "mfa", "remove", "root", &id], "");
    let c = client();
    let ch = json_login(&c, base, "root", "root-password").await;
    assert_eq!(ch["component"], "authenticator_totp", "enrollment again, not a lockout: {ch}");
    assert_ne!(c.get(format!("{base}/if/user/")).send().await.unwrap().status(), 200, "not in before enrolling");
    let secret = ch["secret"].as_str().unwrap().to_string();
    let (_, done) = post(&c, &login_url, json!({"code": oath(&secret, now()), "name": "new phone"})).await;
    assert_eq!(done["component"], "redirect", "{done}");
    assert_eq!(c.get(format!("{base}/if/user/")).send().await.unwrap().status(), 200);
    assert!(env.cli_ok(&["user", "mfa", "list", "root"], "").contains("new phone"));
    server.stop();
}

/// The `csrf_token` of an HTML form.
fn csrf(html: &str) -> String {
    let start = html.find("name=\"csrf_token\" value=\"").expect("a CSRF field") + 25;
    html[start..].split('"').next().unwrap().to_string()
}

async fn mfa_cli_removal_and_recovery_link_bypass(env: Env) {
    env.create_user("vic", "vic-password", &[]);
    let server = env.start().await;
    let base = &server.base;
    let c = client();
    json_login(&c, base, "vic", "vic-password").await;
    enroll_totp(base, &c, "lost phone").await;
    assert_eq!(json_login(&client(), base, "vic", "vic-password").await["component"], "authenticator_validate");

    // The recovery link logs in without a second factor, and is audited.
    let link = env.cli_ok(&["recovery-link", "vic", "--expires", "1h"], "");
    let link = link.trim().to_string();
    let path = &link[link.find("/recovery/").unwrap()..];
    let b = client();
    let page = b.get(format!("{base}{path}")).header("accept", "text/html").send().await.unwrap().text().await.unwrap();
    let r = b
        .post(format!("{base}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf_token={}", csrf(&page)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(b.get(format!("{base}/if/user/")).send().await.unwrap().status(), 200, "in without a code");

    // The admin removes the lost device: the next login needs no code.
    let listed = env.cli_ok(&["user", "mfa", "list", "vic"], "");
    let id = listed.lines().find(|l| l.contains("lost phone")).unwrap().split_whitespace().next().unwrap().to_string();
    let bad = env.cli(&["user", "mfa", "remove", "vic", "not-an-id"], "");
    assert!(!bad.status.success());
    let removed = env.cli_ok(&["user", "mfa", "remove", "vic", &id], "");
    assert!(removed.contains("removed totp device 'lost phone'"), "{removed}");
    assert!(!env.cli_ok(&["user", "mfa", "list", "vic"], "").contains("lost phone"));
    let again = env.cli(&["user", "mfa", "remove", "vic", &id], "");
    assert!(!again.status.success(), "already gone");
    assert_eq!(json_login(&client(), base, "vic", "vic-password").await["component"], "redirect");
    server.stop();
}

/// authentik's code-based MFA over LDAP: `password;123456` when the provider requires it.
async fn mfa_ldap_bind_with_password_and_code(env: Env) {
    let path = env.dir.path().join("ldap-mfa.yaml");
    std::fs::write(
        &path,
        r#"
users:
  - username: uma
    password: uma-password
providers:
  - name: Directory
    type: ldap
    base_dn: dc=example,dc=test
    mfa_support: true
outposts:
  - name: embedded
    providers: [Directory]
"#,
    )
    .unwrap();
    env.cli_ok(&["blueprint", "apply", path.to_str().unwrap()], "");
    let server = env.start().await;
    let base = server.base.clone();
    let c = client();
    assert_eq!(password_step(&base, &c, "uma", "uma-password").await["component"], "redirect");
    let (secret, at) = enroll_totp(&base, &c, "phone").await;
    let url = format!("ldap://127.0.0.1:{}", env.ldap);
    let dn = "cn=uma,ou=users,dc=example,dc=test";
    let whoami = |password: String| {
        std::process::Command::new("ldapwhoami").args(["-x", "-H", &url, "-D", dn, "-w", &password]).output().unwrap()
    };
    let plain = whoami("uma-password".into());
    assert!(!plain.status.success(), "the password alone is not enough once a device exists");
    let wrong = whoami(format!("uma-password;{}", wrong_code(&secret, at)));
    assert!(!wrong.status.success());
    let ok = whoami(format!("uma-password;{}", oath(&secret, at + 30)));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains(dn));
    // The same code again is a replay.
    let replay = whoami(format!("uma-password;{}", oath(&secret, at + 30)));
    assert!(!replay.status.success(), "replayed code refused");
    server.stop();
}

/// The device-class choice, and "remember this browser": a remembered browser skips the code
/// until the password changes; a browser without the cookie is still asked.
async fn mfa_device_choice_and_remembered_browser_over_json(env: Env) {
    env.create_user("rita", "rita-password", &[]);
    let path = env.dir.path().join("remember.yaml");
    std::fs::write(
        &path,
        r#"
stages:
  - name: default-authentication-mfa-validation
    kind: authenticator_validate
    config:
      device_classes: [totp, static]
      remember_device_days: 30
"#,
    )
    .unwrap();
    env.cli_ok(&["blueprint", "apply", path.to_str().unwrap()], "");
    // Out-of-range settings are refused when applied.
    std::fs::write(
        &path,
        "stages:\n  - name: default-authentication-mfa-validation\n    kind: authenticator_validate\n    config:\n      remember_device_days: -3\n",
    )
    .unwrap();
    assert!(!env.cli(&["blueprint", "apply", path.to_str().unwrap()], "").status.success());
    let server = env.start().await;
    let base = &server.base;
    let login_url = executor(base, "default-authentication-flow");
    let c = client();
    json_login(&c, base, "rita", "rita-password").await;
    let (secret, at) = enroll_totp(base, &c, "phone").await;
    let url = executor(base, "default-authenticator-static-setup");
    let codes = get_json(&c, &url).await["codes"].clone();
    post(&c, &url, json!({})).await;

    // Two classes: the challenge lists them and the user picks one.
    let browser = client();
    let ch = password_step(base, &browser, "rita", "rita-password").await;
    assert_eq!(ch["device_classes"], json!(["static", "totp"]), "{ch}");
    assert_eq!(ch["remember_device_days"], 30);
    assert!(ch.get("selected_class").is_none(), "{ch}");
    let (status, picked) = post(&browser, &login_url, json!({"device_class": "static"})).await;
    assert_eq!((status, picked["selected_class"].as_str()), (200, Some("static")), "{picked}");
    let (status, bad) = post(&browser, &login_url, json!({"device_class": "webauthn"})).await;
    assert_eq!(status, 400, "a class the user does not have: {bad}");
    // A recovery code, remembering this browser.
    let code = codes[0].as_str().unwrap();
    let r = browser.post(&login_url).json(&json!({"code": code, "remember_device": true})).send().await.unwrap();
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with("latchkey_mfa_remember="))
        .expect("remember cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("Max-Age=2592000"), "{cookie}");
    assert_eq!(r.json::<Value>().await.unwrap()["component"], "redirect");

    // The same browser logs in again without a code; another browser is asked.
    browser.get(executor(base, "default-invalidation-flow")).send().await.unwrap();
    assert_eq!(password_step(base, &browser, "rita", "rita-password").await["component"], "redirect");
    assert_eq!(password_step(base, &client(), "rita", "rita-password").await["component"], "authenticator_validate");
    // A forged or foreign cookie does not help.
    let r = client()
        .post(&login_url)
        .header("cookie", "latchkey_mfa_remember=r1:00000000-0000-0000-0000-000000000000:9999999999:0:00.AAAA")
        .json(&json!({"uid_field": "rita", "password": "rita-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["component"], "authenticator_validate");

    // A new password voids the remembered browser.
    env.cli_ok(&["user", "set-password", "rita", "--password-stdin"], "rita-new-password\n");
    let ch = password_step(base, &browser, "rita", "rita-new-password").await;
    assert_eq!(ch["component"], "authenticator_validate", "asked again after the password change: {ch}");
    let (_, ok) = post(&browser, &login_url, json!({"code": oath(&secret, at + 30)})).await;
    assert_eq!(ok["component"], "redirect", "{ok}");
    server.stop();
}
