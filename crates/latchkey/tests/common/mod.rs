//! Test harness: starts the real `latchkey` binary on free ports, on SQLite or on a fresh
//! PostgreSQL database, and drives it with a real HTTP client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_latchkey");

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A free port below the kernel's ephemeral range (32768 and up), so the client side of
/// some other test's connection cannot take it between this check and the server's bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() as u64
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0))
        % 12000;
    let _ = NEXT.compare_exchange(0, seed as u16 + 1, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let candidate = 20000 + NEXT.fetch_add(7, Ordering::SeqCst) % 12000;
        if TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            return candidate;
        }
    }
}

fn admin_url() -> String {
    std::env::var("LATCHKEY_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database (or data dir) for one test. Dropped at the end.
pub struct Env {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub database_url: String,
    pg_db: Option<String>,
    pub http: u16,
    pub https: u16,
    pub metrics: u16,
    pub ldap: u16,
    pub ldaps: u16,
}

impl Env {
    /// `None` when PostgreSQL is wanted but unreachable outside CI (the test then skips).
    pub async fn new(backend: Backend) -> Option<Env> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (database_url, pg_db) = match backend {
            Backend::Sqlite => (format!("sqlite://{}/latchkey.db", dir.path().join("data").display()), None),
            Backend::Postgres => {
                if std::env::var("LATCHKEY_TEST_SKIP_POSTGRES").is_ok() && std::env::var("CI").as_deref() != Ok("true")
                {
                    eprintln!("skipping: PostgreSQL not available");
                    return None;
                }
                use sqlx::Connection;
                let mut conn = match sqlx::PgConnection::connect(&admin_url()).await {
                    Ok(c) => c,
                    Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                        panic!("PostgreSQL unreachable under CI: {e}")
                    }
                    Err(e) => {
                        eprintln!("skipping: PostgreSQL unreachable: {e}");
                        return None;
                    }
                };
                let name = format!("lk_e2e_{}", uuid_hex());
                sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                    .await
                    .expect("create db");
                let mut url = url::Url::parse(&admin_url()).expect("admin url");
                url.set_path(&name);
                (url.to_string(), Some(name))
            }
        };
        Some(Env {
            backend,
            dir,
            database_url,
            pg_db,
            http: free_port(),
            https: free_port(),
            metrics: free_port(),
            ldap: free_port(),
            ldaps: free_port(),
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    /// Environment every process of this test gets.
    pub fn vars(&self) -> Vec<(String, String)> {
        vec![
            ("LATCHKEY_DATA_DIR".into(), self.data_dir().display().to_string()),
            ("LATCHKEY_DATABASE__URL".into(), self.database_url.clone()),
            ("LATCHKEY_LISTEN__HTTP".into(), format!("127.0.0.1:{}", self.http)),
            ("LATCHKEY_LISTEN__HTTPS".into(), format!("127.0.0.1:{}", self.https)),
            ("LATCHKEY_LISTEN__METRICS".into(), format!("127.0.0.1:{}", self.metrics)),
            ("LATCHKEY_LISTEN__LDAP".into(), format!("127.0.0.1:{}", self.ldap)),
            ("LATCHKEY_LISTEN__LDAPS".into(), format!("127.0.0.1:{}", self.ldaps)),
            ("LATCHKEY_LOG__LEVEL".into(), "info".into()),
        ]
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args).current_dir(self.dir.path()).env_remove("RUST_LOG");
        for (k, v) in self.vars() {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs a CLI command to completion, feeding `stdin`.
    pub fn cli(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cli");
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin.as_bytes());
        }
        child.wait_with_output().expect("cli output")
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn cli_ok(&self, args: &[&str], stdin: &str) -> String {
        let out = self.cli(args, stdin);
        assert!(
            out.status.success(),
            "latchkey {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `yaml` as `name` in the test's folder and applies it with `latchkey blueprint
    /// apply`; returns what the command printed.
    pub fn apply_blueprint(&self, name: &str, yaml: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        self.cli_ok(&["blueprint", "apply", path.to_str().unwrap()], "")
    }

    pub fn create_user(&self, username: &str, password: &str, extra: &[&str]) {
        let mut args = vec!["user", "create", username, "--password-stdin"];
        args.extend_from_slice(extra);
        self.cli_ok(&args, &format!("{password}\n"));
    }

    pub async fn start(&self) -> Server {
        Server::start(self).await
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(name) = self.pg_db.take() {
            // Best effort, on a separate thread: Drop cannot await.
            let url = admin_url();
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    rt.block_on(async {
                        use sqlx::Connection;
                        if let Ok(mut c) = sqlx::PgConnection::connect(&url).await {
                            let _ = sqlx::Executor::execute(
                                &mut c,
                                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
                            )
                            .await;
                        }
                    });
                }
            })
            .join();
        }
    }
}

pub fn uuid_hex() -> String {
    use std::time::SystemTime;
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}{:x}", nanos, std::process::id())
}

/// A running server process.
pub struct Server {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    pub base: String,
}

impl Server {
    pub async fn start(env: &Env) -> Server {
        Server::start_with(env, env.command(&["serve"])).await
    }

    /// Starts `serve` from a prepared command (extra environment…).
    pub async fn start_with(env: &Env, mut cmd: Command) -> Server {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn serve");
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
        let mut server = Server { child, log, base: env.base() };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{}/-/health/ready/", server.base)).send().await {
                if r.status() == 200 {
                    return server;
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("server exited ({status}) before it was ready:\n{}", server.log_text());
            }
            assert!(Instant::now() < deadline, "server did not become ready:\n{}", server.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// The first-run link printed in the log.
    pub async fn setup_link(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.log.lock().ok().and_then(|l| {
                l.iter().find_map(|line| {
                    line.find("http")
                        .map(|i| line[i..].split_whitespace().next().unwrap_or("").to_string())
                        .filter(|u| u.contains("/if/flow/initial-setup/?token="))
                })
            });
            if let Some(link) = found {
                return link;
            }
            assert!(Instant::now() < deadline, "no setup link in the log:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Graceful stop (SIGTERM) and wait.
    pub fn stop(mut self) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }

    /// kill -9.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser-like client: keeps cookies, does not follow redirects (tests check them).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

/// The JSON flow executor's URL for `slug`.
pub fn executor(base: &str, slug: &str) -> String {
    format!("{base}/api/v1/flows/executor/{slug}/")
}

/// GET `url` and parse the JSON answer.
pub async fn get_json(c: &reqwest::Client, url: &str) -> serde_json::Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

/// Logs in through the JSON executor; returns the final challenge.
pub async fn json_login(c: &reqwest::Client, base: &str, login: &str, password: &str) -> serde_json::Value {
    let url = format!("{base}/api/v1/flows/executor/default-authentication-flow/");
    let first: serde_json::Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(first["component"], "identification", "{first}");
    c.post(&url)
        .json(&serde_json::json!({ "uid_field": login, "password": password }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// A TCP forwarder that can be cut and restored, to simulate losing the database.
pub struct Forwarder {
    pub port: u16,
    target: std::net::SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Forwarder {
    pub async fn start(target: std::net::SocketAddr) -> Forwarder {
        let mut f = Forwarder { port: free_port(), target, task: None };
        f.resume().await;
        f
    }

    /// Closes the listening socket and every forwarded connection.
    pub fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    pub async fn resume(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.expect("bind forwarder");
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.cut();
    }
}

/// The Python that has the test tools (aiosmtpd…): scripts/test's virtualenv when present.
pub fn python() -> String {
    if let Ok(p) = std::env::var("LATCHKEY_TEST_PYTHON") {
        return p;
    }
    let venv =
        std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/latchkey-venv/bin/python");
    if venv.exists() {
        venv.display().to_string()
    } else {
        "python3".into()
    }
}

/// A real SMTP server (aiosmtpd) writing every message it receives into a Maildir.
pub struct SmtpServer {
    pub port: u16,
    pub maildir: PathBuf,
    child: Option<Child>,
    tls: Option<(PathBuf, PathBuf)>,
}

impl SmtpServer {
    pub async fn start(maildir: &Path) -> SmtpServer {
        let mut s = SmtpServer { port: free_port(), maildir: maildir.to_path_buf(), child: None, tls: None };
        s.resume().await;
        s
    }

    /// With STARTTLS offered, using this certificate and key (PEM files).
    pub async fn start_tls(maildir: &Path, cert: &Path, key: &Path) -> SmtpServer {
        let tls = Some((cert.to_path_buf(), key.to_path_buf()));
        let mut s = SmtpServer { port: free_port(), maildir: maildir.to_path_buf(), child: None, tls };
        s.resume().await;
        s
    }

    pub async fn resume(&mut self) {
        let mut cmd = Command::new(python());
        cmd.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{}", self.port)]);
        if let Some((cert, key)) = &self.tls {
            cmd.arg("--tlscert").arg(cert).arg("--tlskey").arg(key);
        }
        let child = cmd
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&self.maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("aiosmtpd (pip install aiosmtpd)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every message received so far, as raw text.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) {
                for e in entries.flatten() {
                    if let Ok(text) = std::fs::read_to_string(e.path()) {
                        out.push(text);
                    }
                }
            }
        }
        out
    }

    /// Waits until `n` messages arrived.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let m = self.messages();
            if m.len() >= n {
                return m;
            }
            assert!(Instant::now() < deadline, "expected {n} mails, got {}", m.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client's key pair for `private_key_jwt`: the private key as PKCS#8 PEM (what jose,
/// authlib and jsonwebtoken read), the public key as a JWK (what the provider registers).
pub struct ClientKey {
    pub pem: String,
    pub jwk: serde_json::Value,
    pub kid: String,
}

/// A fresh P-256 (ES256) client key.
pub fn es256_client_key(kid: &str) -> ClientKey {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    // The uncompressed point: 0x04 ‖ x ‖ y.
    let point = pair.public_key_raw();
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    ClientKey { pem: pair.serialize_pem(), jwk, kid: kid.to_string() }
}

impl ClientKey {
    /// A client assertion with these claims, signed ES256 with this key (header `kid` set).
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_ec_pem(self.pem.as_bytes()).expect("EC PEM");
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &key).expect("sign")
    }

    /// `{"keys": [<this key>]}`.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.jwk] })
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
