use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use uuid::Uuid;

use super::*;
use crate::model::{BindingTarget, Policy};

#[derive(Default)]
struct FakeEnv {
    prefixes: Mutex<Vec<String>>,
    breached: HashMap<String, u64>,
    scores: HashMap<String, i64>,
    broken: bool,
}

impl FakeEnv {
    fn with_breached(password: &str, count: u64) -> Self {
        let digest = hex::encode_upper(Sha1::digest(password.as_bytes()));
        FakeEnv { breached: HashMap::from([(digest, count)]), ..Default::default() }
    }
}

#[async_trait]
impl PolicyEnv for FakeEnv {
    async fn hibp_range(&self, prefix: &str) -> Result<String, CoreError> {
        if self.broken {
            return Err(CoreError::Internal("offline".into()));
        }
        if let Ok(mut p) = self.prefixes.lock() {
            p.push(prefix.to_string());
        }
        let mut body = String::from("0000000000000000000000000000000000A:3\r\n");
        for (hash, count) in &self.breached {
            if let Some(suffix) = hash.strip_prefix(prefix) {
                body.push_str(&format!("{suffix}:{count}\r\n"));
            }
        }
        Ok(body)
    }
    async fn reputation(&self, key: &str) -> Result<i64, CoreError> {
        if self.broken {
            return Err(CoreError::Internal("offline".into()));
        }
        Ok(self.scores.get(key).copied().unwrap_or(0))
    }
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
}

const ADMINS: Uuid = Uuid::from_u128(0xa);
const FAMILY: Uuid = Uuid::from_u128(0xf);
const ALICE: Uuid = Uuid::from_u128(0x1);

fn alice() -> PolicyUser {
    PolicyUser {
        id: ALICE,
        username: "alice".into(),
        email: Some("alice@example.test".into()),
        name: "Alice Example".into(),
        groups: vec!["admins".into(), "family".into()],
        group_ids: vec![ADMINS, FAMILY],
        attributes: json!({"department": "ops", "level": 3, "tags": ["a", "b"]}),
        is_superuser: true,
        password_changed_at: Some(now() - Duration::days(10)),
    }
}

fn req() -> PolicyRequest {
    let mut r = PolicyRequest::new(Some(alice()), now());
    r.request = RequestFacts {
        client_ip: Some("192.168.1.20".into()),
        user_agent: Some("curl/8".into()),
        host: Some("auth.example.test".into()),
        path: Some("/if/flow/x/".into()),
        method: Some("GET".into()),
    };
    r.context.insert("flow".into(), json!("x"));
    r.context.insert("application".into(), json!("grafana"));
    r
}

fn compiled(kind: &str, config: Value) -> Arc<CompiledPolicy> {
    let policy = Policy {
        id: Uuid::new_v4(),
        name: format!("test-{kind}"),
        kind: kind.into(),
        config,
        execution_logging: false,
        created_at: now(),
    };
    match CompiledPolicy::compile(&policy) {
        Ok(p) => Arc::new(p),
        Err(e) => panic!("{kind} policy does not compile: {e}"),
    }
}

fn binding(subject: BindingSubject) -> PolicyBinding {
    PolicyBinding {
        id: Uuid::new_v4(),
        target: BindingTarget::Application(Uuid::nil()),
        subject,
        order: 0,
        negate: false,
        enabled: true,
        timeout_ms: 30_000,
        failure_result: false,
        created_at: now(),
    }
}

fn pol(kind: &str, config: Value) -> ResolvedBinding {
    let policy = compiled(kind, config);
    ResolvedBinding { binding: binding(BindingSubject::Policy(policy.id)), policy: Some(policy) }
}

fn expr(e: &str) -> ResolvedBinding {
    pol("expression", json!({ "expression": e }))
}

fn with(mut rb: ResolvedBinding, f: impl FnOnce(&mut PolicyBinding)) -> ResolvedBinding {
    f(&mut rb.binding);
    rb
}

async fn run(bindings: &[ResolvedBinding], mode: EngineMode, r: &PolicyRequest) -> Decision {
    evaluate(bindings, mode, r, &FakeEnv::default()).await
}

async fn passes(b: ResolvedBinding, r: &PolicyRequest) -> bool {
    run(&[b], EngineMode::All, r).await.passing
}

fn invalid_message(e: CoreError) -> String {
    match e {
        CoreError::Invalid { message, .. } => message,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn expression_variables() {
    let r = req();
    for (e, want) in [
        ("'admins' in user.groups", true),
        ("'nobody' in user.groups", false),
        ("request.client_ip.startsWith('192.168.')", true),
        ("request.client_ip.startsWith('10.')", false),
        ("context.flow == 'x'", true),
        ("context.application == 'x'", false),
        ("user.attributes.department == 'ops' && user.attributes.level >= 3", true),
        ("'b' in user.attributes.tags", true),
        ("user.username == 'alice' && user.email.endsWith('@example.test')", true),
        ("user.is_superuser", true),
        ("request.method == 'GET' && request.path.startsWith('/if/') && request.host != ''", true),
        ("has(user.attributes.department) && !has(user.attributes.missing)", true),
        ("user.groups.exists(g, g == 'family')", true),
    ] {
        assert_eq!(passes(expr(e), &r).await, want, "{e}");
    }
}

#[tokio::test]
async fn anonymous_user_has_same_shape() {
    let mut r = req();
    r.user = None;
    assert!(!passes(expr("'admins' in user.groups"), &r).await);
    assert!(passes(expr("!user.is_authenticated && user.username == ''"), &r).await);
    assert!(!passes(expr("user.is_superuser"), &r).await);
}

#[tokio::test]
async fn absent_request_facts_are_empty_strings() {
    let mut r = req();
    r.request = RequestFacts::default();
    assert!(!passes(expr("request.client_ip.startsWith('192.168.')"), &r).await);
}

#[test]
fn compile_error_names_position() {
    let err = CompiledPolicy::validate("expression", &json!({"expression": "user.username == "})).err();
    let msg = invalid_message(err.unwrap_or_else(|| panic!("accepted")));
    assert!(msg.contains("line 1, column"), "{msg}");

    let err = CompiledPolicy::validate("expression", &json!({"expression": "true &&\n  (user.x"})).err();
    let msg = invalid_message(err.unwrap_or_else(|| panic!("accepted")));
    assert!(msg.contains("line 2"), "{msg}");

    let long = "true || ".repeat(600) + "true";
    let msg = invalid_message(
        CompiledPolicy::validate("expression", &json!({ "expression": long }))
            .err()
            .unwrap_or_else(|| panic!("accepted")),
    );
    assert!(msg.contains("longer than"), "{msg}");
}

#[tokio::test]
async fn runtime_error_fails_closed_and_honours_failure_result() {
    let r = req();
    assert!(!passes(expr("user.attributes.missing.x == 1"), &r).await);
    // Negation must not turn an error into a pass.
    assert!(!passes(with(expr("user.attributes.missing.x == 1"), |b| b.negate = true), &r).await);
    assert!(passes(with(expr("user.attributes.missing.x == 1"), |b| b.failure_result = true), &r).await);
    // Non-bool results are errors too.
    assert!(!passes(expr("user.username"), &r).await);
    assert!(!passes(with(expr("1 + 1"), |b| b.negate = true), &r).await);
    assert!(passes(with(expr("1 + 1"), |b| b.failure_result = true), &r).await);
}

#[tokio::test]
async fn negate_inverts() {
    let r = req();
    assert!(!passes(with(expr("true"), |b| b.negate = true), &r).await);
    assert!(passes(with(expr("false"), |b| b.negate = true), &r).await);
}

#[tokio::test]
async fn any_and_all() {
    let r = req();
    let set = [expr("false"), expr("true")];
    assert!(run(&set, EngineMode::Any, &r).await.passing);
    assert!(!run(&set, EngineMode::All, &r).await.passing);
    let set = [expr("true"), expr("true")];
    assert!(run(&set, EngineMode::All, &r).await.passing);
    let set = [expr("false"), expr("false")];
    assert!(!run(&set, EngineMode::Any, &r).await.passing);
    assert_eq!(EngineMode::parse("all"), Some(EngineMode::All));
    assert_eq!(EngineMode::parse("any"), Some(EngineMode::Any));
    assert_eq!(EngineMode::parse("most"), None);
}

#[tokio::test]
async fn disabled_skipped_and_empty_passes() {
    let r = req();
    assert!(run(&[], EngineMode::Any, &r).await.passing);
    assert!(run(&[], EngineMode::All, &r).await.passing);
    let off = with(expr("false"), |b| b.enabled = false);
    assert!(run(std::slice::from_ref(&off), EngineMode::Any, &r).await.passing);
    assert!(run(&[off.clone(), expr("true")], EngineMode::All, &r).await.passing);
    assert!(!run(&[off, expr("false")], EngineMode::Any, &r).await.passing);
}

#[tokio::test]
async fn user_and_group_subjects() {
    let r = req();
    let direct = |s| ResolvedBinding { binding: binding(s), policy: None };
    assert!(passes(direct(BindingSubject::User(ALICE)), &r).await);
    assert!(!passes(direct(BindingSubject::User(Uuid::from_u128(99))), &r).await);
    assert!(passes(direct(BindingSubject::Group(FAMILY)), &r).await);
    assert!(!passes(direct(BindingSubject::Group(Uuid::from_u128(99))), &r).await);
    let mut anon = req();
    anon.user = None;
    assert!(!passes(direct(BindingSubject::Group(FAMILY)), &anon).await);
    // A policy subject whose policy is missing fails closed.
    assert!(!passes(direct(BindingSubject::Policy(Uuid::from_u128(5))), &r).await);
}

#[tokio::test]
async fn user_and_group_membership_policies() {
    let r = req();
    assert!(passes(pol("user", json!({"users": [ALICE.to_string()]})), &r).await);
    assert!(!passes(pol("user", json!({"users": [Uuid::from_u128(2).to_string()]})), &r).await);
    assert!(passes(pol("group_membership", json!({"group": ADMINS.to_string()})), &r).await);
    assert!(!passes(pol("group_membership", json!({"group": Uuid::from_u128(3).to_string()})), &r).await);
}

fn with_password(p: &str) -> PolicyRequest {
    let mut r = req();
    r.password = Some(p.into());
    r
}

async fn password_messages(config: Value, password: &str, env: &FakeEnv) -> Decision {
    evaluate(&[pol("password", config)], EngineMode::All, &with_password(password), env).await
}

#[tokio::test]
async fn password_rules() {
    let env = FakeEnv::default();
    let d =
        password_messages(json!({"length_min": 12, "amount_uppercase": 1, "amount_digits": 2}), "short", &env).await;
    assert!(!d.passing);
    assert_eq!(d.messages, vec!["Use at least 12 characters.", "Add an uppercase letter.", "Use at least 2 digits."]);

    let d = password_messages(json!({"amount_symbols": 1, "amount_lowercase": 1}), "ABCDEFGH1", &env).await;
    assert_eq!(d.messages, vec!["Add a lowercase letter.", "Add a symbol."]);

    let d = password_messages(json!({"length_min": 12, "amount_uppercase": 1}), "Correct horse battery", &env).await;
    assert!(d.passing, "{d:?}");

    let d = password_messages(json!({"length_min": 12, "error_message": "Nope."}), "short", &env).await;
    assert_eq!(d.messages, vec!["Nope."]);

    // No candidate password: nothing to check.
    assert!(passes(pol("password", json!({"length_min": 50})), &req()).await);
}

#[tokio::test]
async fn password_zxcvbn() {
    let env = FakeEnv::default();
    let cfg = json!({"zxcvbn_score_threshold": 3});
    let d = password_messages(cfg.clone(), "password123", &env).await;
    assert_eq!(d.messages, vec!["This password is too easy to guess."]);
    // Built from the user's own name: weak.
    assert!(!password_messages(cfg.clone(), "alice1234", &env).await.passing);
    assert!(password_messages(cfg, "tangerine-Orbit-57-gazebo", &env).await.passing);
}

#[tokio::test]
async fn password_hibp_uses_k_anonymity() {
    let pw = "Tr0ub4dor&3-but-longer";
    let env = FakeEnv::with_breached(pw, 7);
    let cfg = json!({"check_hibp": true});
    let d = password_messages(cfg.clone(), pw, &env).await;
    assert_eq!(d.messages, vec!["This password has appeared in a data breach."]);
    let digest = hex::encode_upper(Sha1::digest(pw.as_bytes()));
    let sent = env.prefixes.lock().map(|p| p.clone()).unwrap_or_default();
    assert_eq!(sent, vec![digest[..5].to_string()]);
    assert!(sent[0].chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));

    // Allowed count, and a password not in the range.
    assert!(password_messages(json!({"check_hibp": true, "hibp_allowed_count": 7}), pw, &env).await.passing);
    assert!(password_messages(cfg.clone(), "some other password", &env).await.passing);
    // Off by default: nothing sent.
    let quiet = FakeEnv::with_breached(pw, 7);
    assert!(password_messages(json!({}), pw, &quiet).await.passing);
    assert!(quiet.prefixes.lock().map(|p| p.is_empty()).unwrap_or(false));
    // A lookup failure counts as an error: failure_result decides.
    let broken = FakeEnv { broken: true, ..Default::default() };
    assert!(!password_messages(cfg, pw, &broken).await.passing);
}

#[tokio::test]
async fn password_expiry() {
    let mut r = req();
    let p = || pol("password_expiry", json!({"days": 30}));
    assert!(passes(p(), &r).await);
    if let Some(u) = r.user.as_mut() {
        u.password_changed_at = Some(now() - Duration::days(31));
    }
    let d = run(&[p()], EngineMode::All, &r).await;
    assert!(!d.passing);
    assert_eq!(d.messages, vec!["Your password has expired."]);
    assert!(compiled("password_expiry", json!({"days": 30, "deny_only": false})).forces_password_reset());
    assert!(!compiled("password_expiry", json!({"days": 30})).forces_password_reset());
}

#[tokio::test]
async fn reputation_threshold() {
    let r = req();
    let p = || pol("reputation", json!({"threshold": -5}));
    let env = |k: &str, v: i64| FakeEnv { scores: HashMap::from([(k.to_string(), v)]), ..Default::default() };
    assert!(evaluate(&[p()], EngineMode::All, &r, &env("ip:192.168.1.20", -4)).await.passing);
    assert!(!evaluate(&[p()], EngineMode::All, &r, &env("ip:192.168.1.20", -5)).await.passing);
    assert!(!evaluate(&[p()], EngineMode::All, &r, &env("user:alice", -9)).await.passing);
    let ip_only = pol("reputation", json!({"check_username": false}));
    assert!(evaluate(&[ip_only], EngineMode::All, &r, &env("user:alice", -9)).await.passing);
}

#[tokio::test]
async fn messages_collected() {
    let r = with_password("abc");
    let set = [pol("password", json!({"length_min": 8})), pol("password", json!({"amount_digits": 4})), expr("false")];
    let d = run(&set, EngineMode::Any, &r).await;
    assert!(!d.passing);
    assert_eq!(d.messages, vec!["Use at least 8 characters.", "Use at least 4 digits."]);
    // A negated failure passes and says nothing.
    let d = run(&[with(pol("password", json!({"length_min": 8})), |b| b.negate = true)], EngineMode::All, &r).await;
    assert!(d.passing);
    assert!(d.messages.is_empty());
}

#[test]
fn invalid_configs_name_the_field() {
    let cases = [
        ("bogus", json!({}), "kind"),
        ("expression", json!({}), "expression"),
        ("expression", json!({"expression": "true", "extra": 1}), "extra"),
        ("password", json!({"length_min": "eight"}), "length_min"),
        ("password", json!({"zxcvbn_score_threshold": 5}), "zxcvbn_score_threshold"),
        ("password", json!({"check_hibp": "yes"}), "check_hibp"),
        ("password_expiry", json!({"days": 0}), "days"),
        ("reputation", json!({"threshold": "low"}), "threshold"),
        ("user", json!({"users": ["not-a-uuid"]}), "users"),
        ("group_membership", json!({}), "group"),
        ("group_membership", json!([]), "config"),
    ];
    for (kind, config, field) in cases {
        match CompiledPolicy::validate(kind, &config) {
            Err(CoreError::Invalid { fields, message }) => {
                assert!(fields.contains_key(field), "{kind} {config}: {message} {fields:?}");
                assert!(message.contains(field) || field == "config" || field == "kind", "{message}");
            }
            other => panic!("{kind} {config}: {other:?}"),
        }
    }
    assert!(CompiledPolicy::validate("password", &Value::Null).is_ok());
}

#[tokio::test]
async fn test_expression_reports_errors() {
    let r = req();
    assert!(matches!(test_expression("'admins' in user.groups", &r).await, Ok(true)));
    assert!(matches!(test_expression("user.username == 'bob'", &r).await, Ok(false)));
    let msg =
        invalid_message(test_expression("user.attributes.missing.x", &r).await.err().unwrap_or_else(|| panic!("ok")));
    assert!(msg.contains("missing"), "{msg}");
    assert!(test_expression("1 +", &r).await.is_err());
    assert!(test_expression("'x'", &r).await.is_err());
}

#[test]
fn policy_user_from_groups() {
    let group = |id: Uuid, name: &str, su: bool| crate::model::Group {
        id,
        name: name.into(),
        parent_id: None,
        is_superuser: su,
        attributes: json!({}),
        gid_number: 2000,
        created_at: now(),
    };
    let user = crate::model::User {
        id: ALICE,
        username: "alice".into(),
        name: "Alice".into(),
        email: None,
        is_active: true,
        kind: crate::model::UserKind::Internal,
        attributes: json!({}),
        password_hash: None,
        password_changed_at: None,
        uid_number: 2000,
        created_at: now(),
        last_login: None,
    };
    let pu = PolicyUser::from_user(&user, &[group(ADMINS, "admins", true), group(FAMILY, "family", false)]);
    assert_eq!(pu.groups, vec!["admins", "family"]);
    assert_eq!(pu.group_ids, vec![ADMINS, FAMILY]);
    assert!(pu.is_superuser);
}

#[test]
fn futures_are_send() {
    // Adapters run checks inside spawned tasks (axum handlers), so the futures must be Send.
    fn assert_send<T: Send>(_: &T) {}
    let r = req();
    let env = FakeEnv::default();
    let bindings: Vec<ResolvedBinding> = Vec::new();
    let fut = evaluate(&bindings, EngineMode::Any, &r, &env);
    assert_send(&fut);
    let fut = test_expression("true", &r);
    assert_send(&fut);
}

#[test]
fn compile_error_message_reads_well() {
    let msg = invalid_message(
        CompiledPolicy::validate("expression", &json!({"expression": "user.groups.exists(g, g == )"}))
            .err()
            .unwrap_or_else(|| panic!("accepted")),
    );
    assert!(msg.starts_with("The expression does not compile: line 1, column "), "{msg}");
}
