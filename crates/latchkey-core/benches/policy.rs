//! Policy engine throughput: a typical binding set (a group binding, a user policy and one CEL
//! expression), all evaluated (mode `all`, every binding passes, so nothing short-circuits).
//!
//! cargo bench -p latchkey-core --bench policy

use std::hint::black_box;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use uuid::Uuid;

use latchkey_core::model::{BindingSubject, BindingTarget, Policy, PolicyBinding};
use latchkey_core::policy::{
    evaluate, CompiledPolicy, EngineMode, PolicyEnv, PolicyRequest, PolicyUser, RequestFacts, ResolvedBinding,
};
use latchkey_core::CoreError;

struct NoEnv;

#[async_trait]
impl PolicyEnv for NoEnv {
    async fn hibp_range(&self, _prefix: &str) -> Result<String, CoreError> {
        Ok(String::new())
    }
    async fn reputation(&self, _key: &str) -> Result<i64, CoreError> {
        Ok(0)
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
        created_at: Utc::now(),
    }
}

fn policy(kind: &str, config: serde_json::Value) -> Arc<CompiledPolicy> {
    let p = Policy {
        id: Uuid::new_v4(),
        name: kind.into(),
        kind: kind.into(),
        config,
        execution_logging: false,
        created_at: Utc::now(),
    };
    match CompiledPolicy::compile(&p) {
        Ok(c) => Arc::new(c),
        Err(e) => panic!("{e}"),
    }
}

fn bench(c: &mut Criterion) {
    let family = Uuid::new_v4();
    let user_id = Uuid::new_v4();
    let user = PolicyUser {
        id: user_id,
        username: "alice".into(),
        email: Some("alice@example.test".into()),
        name: "Alice Example".into(),
        groups: vec!["admins".into(), "family".into(), "media".into()],
        group_ids: vec![Uuid::new_v4(), family, Uuid::new_v4()],
        attributes: json!({"department": "ops", "locale": "en"}),
        is_superuser: false,
        password_changed_at: Some(Utc::now()),
    };
    let mut req = PolicyRequest::new(Some(user), Utc::now());
    req.request = RequestFacts {
        client_ip: Some("192.168.1.20".into()),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0".into()),
        host: Some("grafana.example.test".into()),
        path: Some("/d/abc".into()),
        method: Some("GET".into()),
    };
    req.context.insert("application".into(), json!("grafana"));
    req.context.insert("flow".into(), json!("default-provider-authorization-implicit-consent"));

    let users = policy("user", json!({"users": [Uuid::new_v4().to_string(), user_id.to_string()]}));
    let expr = policy(
        "expression",
        json!({"expression": "'family' in user.groups && request.client_ip.startsWith('192.168.')"}),
    );
    let bindings = vec![
        ResolvedBinding { binding: binding(BindingSubject::Group(family)), policy: None },
        ResolvedBinding { binding: binding(BindingSubject::Policy(users.id)), policy: Some(users) },
        ResolvedBinding { binding: binding(BindingSubject::Policy(expr.id)), policy: Some(expr) },
    ];
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => panic!("{e}"),
    };
    assert!(rt.block_on(evaluate(&bindings, EngineMode::All, &req, &NoEnv)).passing);

    c.bench_function("policy: 3 bindings, 1 CEL expression (all)", |b| {
        b.iter(|| rt.block_on(evaluate(black_box(&bindings), EngineMode::All, black_box(&req), &NoEnv)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
