//! A small LDAP load generator: N connections, each sending one operation at a time for a
//! fixed duration, reporting operations per second and latency percentiles. The same binary
//! drives Latchkey and OpenLDAP's slapd in bench/ldap.sh, so the two are compared like for like.
//!
//! ldap-load ADDR OP CONNS SECONDS [key=value...]
//!   OP: bind | uid | memberof | all (paged subtree search of every user)
//!   keys: base, users (N users user0..), groups (G groups group0..), password,
//!         bind_dn (reader for searches), bind_pw, user_rdn (cn or uid), page (page size)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ldap3_proto::control::LdapControl;
use ldap3_proto::proto::*;
use ldap3_proto::LdapCodec;
use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

type Conn = Framed<TcpStream, LdapCodec>;

struct Args {
    addr: String,
    op: String,
    conns: usize,
    seconds: u64,
    kv: HashMap<String, String>,
}

impl Args {
    fn get(&self, k: &str, default: &str) -> String {
        self.kv.get(k).cloned().unwrap_or_else(|| default.to_string())
    }
    fn num(&self, k: &str, default: usize) -> usize {
        self.kv.get(k).and_then(|v| v.parse().ok()).unwrap_or(default)
    }
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let usage = "usage: ldap-load ADDR OP CONNS SECONDS [key=value...]";
    let addr = it.next().ok_or(usage)?;
    let op = it.next().ok_or(usage)?;
    let conns = it.next().and_then(|v| v.parse().ok()).ok_or(usage)?;
    let seconds = it.next().and_then(|v| v.parse().ok()).ok_or(usage)?;
    let mut kv = HashMap::new();
    for a in it {
        let (k, v) = a.split_once('=').ok_or(format!("'{a}' is not key=value"))?;
        kv.insert(k.to_string(), v.to_string());
    }
    Ok(Args { addr, op, conns, seconds, kv })
}

async fn call(conn: &mut Conn, id: &mut i32, op: LdapOp, ctrl: Vec<LdapControl>) -> Result<Vec<LdapMsg>, String> {
    *id += 1;
    conn.send(LdapMsg { msgid: *id, op, ctrl }).await.map_err(|e| format!("send: {e}"))?;
    let mut answers = Vec::new();
    loop {
        let m = conn.next().await.ok_or("connection closed")?.map_err(|e| format!("decode: {e}"))?;
        let last = !matches!(m.op, LdapOp::SearchResultEntry(_) | LdapOp::SearchResultReference(_));
        answers.push(m);
        if last {
            return Ok(answers);
        }
    }
}

async fn bind(conn: &mut Conn, id: &mut i32, dn: &str, pw: &str) -> Result<(), String> {
    let op = LdapOp::BindRequest(LdapBindRequest {
        dn: dn.to_string(),
        cred: LdapBindCred::Simple(pw.to_string()),
        version: 3,
    });
    let answers = call(conn, id, op, Vec::new()).await?;
    match answers.last().map(|m| &m.op) {
        Some(LdapOp::BindResponse(r)) if r.res.code == LdapResultCode::Success => Ok(()),
        other => Err(format!("bind {dn} failed: {other:?}")),
    }
}

fn search_req(base: &str, filter: LdapFilter, attrs: &[&str]) -> LdapOp {
    LdapOp::SearchRequest(LdapSearchRequest {
        base: base.to_string(),
        scope: LdapSearchScope::Subtree,
        aliases: LdapDerefAliases::Never,
        sizelimit: 0,
        timelimit: 0,
        typesonly: false,
        filter,
        attrs: attrs.iter().map(|a| a.to_string()).collect(),
    })
}

fn eq(a: &str, v: String) -> LdapFilter {
    LdapFilter::Equality(a.to_string(), v)
}

/// One operation; returns how many entries it received.
async fn one(conn: &mut Conn, id: &mut i32, args: &Args, rng: &mut impl Rng) -> Result<usize, String> {
    let base = args.get("base", "dc=example,dc=test");
    let users = args.num("users", 1000);
    let groups = args.num("groups", 10).max(1);
    let rdn = args.get("user_rdn", "cn");
    let i = rng.gen_range(0..users);
    let check = |answers: &[LdapMsg], want: Option<usize>| -> Result<usize, String> {
        let entries = answers.iter().filter(|m| matches!(m.op, LdapOp::SearchResultEntry(_))).count();
        match answers.last().map(|m| &m.op) {
            Some(LdapOp::SearchResultDone(r)) if r.code == LdapResultCode::Success => {}
            other => return Err(format!("search failed: {other:?}")),
        }
        if want.is_some_and(|w| w != entries) {
            return Err(format!("expected {want:?} entries, got {entries}"));
        }
        Ok(entries)
    };
    match args.op.as_str() {
        "bind" => {
            // `same=1`: one account binding again and again (a service account; cache hits).
            let who = if args.get("same", "0") == "1" { 0 } else { i };
            bind(conn, id, &format!("{rdn}=user{who},ou=users,{base}"), &args.get("password", "bench-password"))
                .await?;
            Ok(0)
        }
        "uid" => {
            let f = LdapFilter::And(vec![eq("objectClass", "inetOrgPerson".into()), eq("uid", format!("user{i}"))]);
            let answers = call(conn, id, search_req(&base, f, &["uid", "cn", "mail", "memberOf"]), Vec::new()).await?;
            check(&answers, Some(1))
        }
        "memberof" => {
            // What Jellyfin, Gitea or Grafana send: this user, if it is in the allowed group.
            let f = LdapFilter::And(vec![
                eq("objectClass", "inetOrgPerson".into()),
                eq("uid", format!("user{i}")),
                eq("memberOf", format!("cn=group{},ou=groups,{base}", i % groups)),
            ]);
            let answers = call(conn, id, search_req(&base, f, &["uid", "cn", "mail"]), Vec::new()).await?;
            check(&answers, Some(1))
        }
        "all" => {
            let page = i64::try_from(args.num("page", 500)).unwrap_or(500);
            let mut cookie = Vec::new();
            let mut total = 0;
            loop {
                let f = eq("objectClass", "inetOrgPerson".into());
                let ctrl = vec![LdapControl::SimplePagedResults { size: page, cookie: cookie.clone() }];
                let answers = call(
                    conn,
                    id,
                    search_req(&format!("ou=users,{base}"), f, &["uid", "cn", "mail", "memberOf"]),
                    ctrl,
                )
                .await?;
                total += check(&answers, None)?;
                cookie = answers
                    .last()
                    .and_then(|m| {
                        m.ctrl.iter().find_map(|c| match c {
                            LdapControl::SimplePagedResults { cookie, .. } => Some(cookie.clone()),
                            _ => None,
                        })
                    })
                    .unwrap_or_default();
                if cookie.is_empty() {
                    break;
                }
            }
            if total < users {
                return Err(format!("paged search returned {total} of {users} users"));
            }
            Ok(total)
        }
        other => Err(format!("unknown operation {other}")),
    }
}

#[tokio::main]
async fn main() {
    let args = match parse() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let entries = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.conns {
        let (args, stop, entries) = (Arc::clone(&args), Arc::clone(&stop), Arc::clone(&entries));
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(&args.addr).await.map_err(|e| format!("connect: {e}"))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let mut conn = Framed::new(stream, LdapCodec::new(Some(64 * 1024 * 1024), None));
            let mut id = 0;
            if args.op != "bind" {
                bind(&mut conn, &mut id, &args.get("bind_dn", ""), &args.get("bind_pw", "")).await?;
            }
            let mut rng = rand::rngs::StdRng::from_entropy();
            let mut latencies: Vec<u32> = Vec::with_capacity(1 << 16);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let n = one(&mut conn, &mut id, &args, &mut rng).await?;
                latencies.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                entries.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok::<_, String>(latencies)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut failed = false;
    for t in tasks {
        match t.await {
            Ok(Ok(l)) => all.extend(l),
            Ok(Err(e)) => {
                eprintln!("connection failed: {e}");
                failed = true;
            }
            Err(e) => {
                eprintln!("task failed: {e}");
                failed = true;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct =
        |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0);
    println!(
        "op={} conns={} ops={} ops_per_s={:.0} entries_per_s={:.0} p50_ms={:.3} p99_ms={:.3}",
        args.op,
        args.conns,
        all.len(),
        all.len() as f64 / elapsed,
        entries.load(Ordering::Relaxed) as f64 / elapsed,
        f64::from(pct(0.50)) / 1000.0,
        f64::from(pct(0.99)) / 1000.0,
    );
    if failed {
        std::process::exit(1);
    }
}
