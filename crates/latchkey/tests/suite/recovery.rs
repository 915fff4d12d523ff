//! Issue-9 scenarios: password recovery by email through a real SMTP server (aiosmtpd).

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

on_both_backends!(recovery_by_email_round_trip, outbox_survives_an_smtp_outage);

fn executor(base: &str, slug: &str) -> String {
    format!("{base}/api/v1/flows/executor/{slug}/")
}

async fn get(c: &reqwest::Client, url: &str) -> Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

async fn post(c: &reqwest::Client, url: &str, body: Value) -> Value {
    c.post(url).json(&body).send().await.unwrap().json().await.unwrap()
}

/// Mail-enabled server environment.
async fn with_smtp(env: &Env) -> SmtpServer {
    SmtpServer::start(&env.dir.path().join("maildir")).await
}

fn start_env(env: &Env, smtp: &SmtpServer) -> std::process::Command {
    let mut cmd = env.command(&["serve"]);
    cmd.env("LATCHKEY_EMAIL__HOST", "127.0.0.1")
        .env("LATCHKEY_EMAIL__PORT", smtp.port.to_string())
        .env("LATCHKEY_EMAIL__FROM", "Latchkey <latchkey@example.test>");
    cmd
}

async fn request_reset(base: &str, login: &str) -> Value {
    let c = client();
    let url = executor(base, "default-recovery-flow");
    let first = get(&c, &url).await;
    assert_eq!(first["component"], "identification", "{first}");
    assert_eq!(first["password_fields"], false);
    post(&c, &url, json!({ "uid_field": login })).await
}

fn link_in(mail: &str) -> String {
    // Quoted-printable may wrap lines; undo soft breaks before looking.
    let flat = mail.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=");
    let start = flat.find("http://").expect("a link in the mail");
    flat[start..].split(|c: char| c.is_whitespace() || c == '"' || c == '<').next().unwrap().to_string()
}

async fn recovery_by_email_round_trip(env: Env) {
    env.create_user("grace", "grace-old-password", &["--email", "grace@example.test"]);
    let smtp = with_smtp(&env).await;
    let server = Server::start_with(&env, start_env(&env, &smtp)).await;
    let base = &server.base;

    // The login page offers recovery.
    let login = get(&client(), &executor(base, "default-authentication-flow")).await;
    assert_eq!(login["recovery_url"], "/if/flow/default-recovery-flow/");

    let a = client();
    assert_eq!(json_login(&a, base, "grace", "grace-old-password").await["component"], "redirect");

    // The same answer whether or not the account exists.
    let known = request_reset(base, "grace@example.test").await;
    let unknown = request_reset(base, "nobody@example.test").await;
    assert_eq!(known["component"], "email", "{known}");
    assert_eq!(known, unknown);

    let mails = smtp.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(mails.len(), 1, "only the real account gets mail");
    assert!(mails[0].contains("grace@example.test"));
    let link = link_in(&mails[0]);
    assert!(link.contains("/if/flow/default-recovery-flow/?flow_token="), "{link}");
    let token = link.split("flow_token=").nth(1).unwrap().to_string();

    // Opened in another browser: straight to the new password.
    let b = client();
    let url = format!("{}?query=flow_token%3D{token}", executor(base, "default-recovery-flow"));
    let prompt = get(&b, &url).await;
    assert_eq!(prompt["component"], "prompt", "{prompt}");
    let answer = executor(base, "default-recovery-flow");
    let refused = post(&b, &answer, json!({"password": "short", "password_repeat": "short"})).await;
    assert!(refused["errors"]["password"].is_array(), "{refused}");
    let done =
        post(&b, &answer, json!({"password": "Brand-New-Secret-42", "password_repeat": "Brand-New-Secret-42"})).await;
    assert_eq!(done["component"], "redirect", "{done}");
    assert_eq!(b.get(format!("{base}/if/user/")).send().await.unwrap().status(), 200, "logged in");
    // Every older session ended; the old password is gone.
    assert_eq!(a.get(format!("{base}/if/user/")).send().await.unwrap().status(), 302);
    assert_eq!(json_login(&client(), base, "grace", "grace-old-password").await["component"], "identification");
    assert_eq!(json_login(&client(), base, "grace", "Brand-New-Secret-42").await["component"], "redirect");
    // The link is dead after use.
    let again = get(&client(), &url).await;
    assert_eq!(again["component"], "access_denied", "{again}");
    let page = client().get(format!("{base}/if/flow/default-recovery-flow/?flow_token={token}")).send().await.unwrap();
    assert_eq!(page.status(), 403);
    assert!(page.text().await.unwrap().contains("Start again"));

    // At most three mails per account per hour; further requests look the same.
    for _ in 0..3 {
        assert_eq!(request_reset(base, "grace").await["component"], "email");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(smtp.messages().len(), 3, "1 + 2 more allowed within the hour");
    server.stop();
}

async fn outbox_survives_an_smtp_outage(env: Env) {
    env.create_user("heidi", "heidi-password", &["--email", "heidi@example.test"]);
    let mut smtp = with_smtp(&env).await;
    smtp.stop();
    let server = Server::start_with(&env, start_env(&env, &smtp)).await;
    assert_eq!(request_reset(&server.base, "heidi").await["component"], "email");
    // The attempt fails and is recorded; the admin sees why.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listed = env.cli_ok(&["email", "list"], "");
        if listed.contains("queued") && listed.contains("SMTP") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no failed attempt recorded:\n{listed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A restart loses nothing; SMTP comes back; the mail goes out.
    server.stop();
    smtp.resume().await;
    let server = Server::start_with(&env, start_env(&env, &smtp)).await;
    let mails = smtp.wait_for(1, Duration::from_secs(30)).await;
    assert!(mails[0].contains("heidi@example.test"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !env.cli_ok(&["email", "list"], "").contains("sent") {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let test = env.cli(&["email", "test", "x@example.test"], "");
    assert!(test.status.success() || !String::from_utf8_lossy(&test.stderr).is_empty());
    server.stop();
}
