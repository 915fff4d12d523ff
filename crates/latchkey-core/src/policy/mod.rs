//! The policy engine: decides whether a request passes the policies bound to a flow, a stage
//! binding or an application, with authentik's rules (negate, enabled, any/all, failure_result).
//!
//! The engine ([`evaluate`]) is pure and synchronous in practice: only password (HIBP) and
//! reputation policies await anything, through the [`PolicyEnv`] the caller passes.
//! [`Policies`] is the thin service around it that loads and caches bindings and compiled policies.

mod compiled;
mod config;
mod expression;
mod password;
mod service;
#[cfg(test)]
mod tests;

pub use compiled::{CompiledPolicy, POLICY_KINDS};
pub use expression::{CelVars, Expression, EXPRESSION_TIME_LIMIT, MAX_EXPRESSION_LEN};
pub use password::breach_count;
pub use service::{test_expression, Policies};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::sync::Arc;
use uuid::Uuid;

use crate::error::{CoreError, Result};
use crate::groups::GroupIndex;
use crate::model::{BindingSubject, Group, PolicyBinding, User};
use compiled::Outcome;

/// The user as policies see it.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyUser {
    pub id: Uuid,
    pub username: String,
    pub email: Option<String>,
    pub name: String,
    /// Effective group names, including groups inherited through nesting.
    pub groups: Vec<String>,
    /// Effective group ids, including inherited ones.
    pub group_ids: Vec<Uuid>,
    pub attributes: Value,
    pub is_superuser: bool,
    pub password_changed_at: Option<DateTime<Utc>>,
}

impl PolicyUser {
    /// From a user and its effective groups (as [`GroupIndex::effective_groups`] returns them).
    pub fn from_user(user: &User, effective_groups: &[Group]) -> Self {
        PolicyUser {
            id: user.id,
            username: user.username.clone(),
            email: user.email.clone(),
            name: user.name.clone(),
            groups: effective_groups.iter().map(|g| g.name.clone()).collect(),
            group_ids: effective_groups.iter().map(|g| g.id).collect(),
            attributes: user.attributes.clone(),
            is_superuser: effective_groups.iter().any(|g| g.is_superuser),
            password_changed_at: user.password_changed_at,
        }
    }

    /// Resolves the user's effective groups through `groups` and builds the policy view.
    pub async fn load(groups: &GroupIndex, user: &User) -> Result<Self> {
        let effective = groups.effective_groups(user.id).await.map_err(CoreError::from_store)?;
        Ok(PolicyUser::from_user(user, &effective))
    }
}

/// Facts about the HTTP (or LDAP) request; absent ones are `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestFacts {
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub method: Option<String>,
}

/// Everything a policy may look at.
#[derive(Debug, Clone)]
pub struct PolicyRequest {
    /// `None` for an anonymous request.
    pub user: Option<PolicyUser>,
    pub request: RequestFacts,
    /// Flow slug, application slug, prompt data…, as expressions see them under `context`.
    pub context: serde_json::Map<String, Value>,
    pub now: DateTime<Utc>,
    /// The candidate password for password policies; never exposed to expressions.
    pub password: Option<String>,
}

impl PolicyRequest {
    pub fn new(user: Option<PolicyUser>, now: DateTime<Utc>) -> Self {
        PolicyRequest { user, request: RequestFacts::default(), context: Default::default(), now, password: None }
    }
}

/// What policies may ask of the outside world. Kept out of the engine so tests use fakes.
#[async_trait]
pub trait PolicyEnv: Send + Sync {
    /// The HIBP range answer (`SUFFIX:COUNT` lines) for a 5-character uppercase SHA-1 prefix.
    async fn hibp_range(&self, prefix: &str) -> Result<String, CoreError>;
    /// The reputation score of `ip:<address>` or `user:<username>` (0 when unknown).
    async fn reputation(&self, key: &str) -> Result<i64, CoreError>;
}

/// A binding with its policy compiled; `policy` is `None` for user and group subjects, and
/// for a policy subject whose policy is missing or does not compile (which then fails closed).
#[derive(Debug, Clone)]
pub struct ResolvedBinding {
    pub binding: PolicyBinding,
    pub policy: Option<Arc<CompiledPolicy>>,
}

impl ResolvedBinding {
    fn cost(&self) -> u8 {
        self.policy.as_ref().map_or(0, |p| p.cost())
    }
}

/// How binding results combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineMode {
    /// One passing binding is enough.
    #[default]
    Any,
    /// Every binding must pass.
    All,
}

impl EngineMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "any" => Some(EngineMode::Any),
            "all" => Some(EngineMode::All),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            EngineMode::Any => "any",
            EngineMode::All => "all",
        }
    }
}

/// The engine's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub passing: bool,
    /// Messages of the failing policies that were evaluated, safe to show to the user.
    pub messages: Vec<String>,
}

impl Decision {
    fn new(passing: bool, messages: Vec<String>) -> Self {
        Decision { passing, messages }
    }
}

/// Evaluates `bindings` with authentik's rules: disabled bindings are skipped, `negate` inverts,
/// no enabled binding passes, `Any` needs one passing binding and `All` needs every one.
///
/// A policy that errors (runtime error, time limit, lookup failure, missing policy) takes the
/// binding's `failure_result` as its final result — not negated, so a negated binding cannot turn
/// an error into a pass. Cheap bindings are evaluated before expressions and those before
/// policies that do I/O, and evaluation stops as soon as the outcome is known.
pub async fn evaluate(
    bindings: &[ResolvedBinding],
    mode: EngineMode,
    req: &PolicyRequest,
    env: &dyn PolicyEnv,
) -> Decision {
    let mut messages = Vec::new();
    let mut any_enabled = false;
    // Built on the first expression and shared by the others.
    let mut vars: Option<CelVars> = None;
    for cost in 0..=2u8 {
        for rb in bindings.iter().filter(|rb| rb.binding.enabled && rb.cost() == cost) {
            any_enabled = true;
            let passing = evaluate_one(rb, req, &mut vars, env, &mut messages).await;
            match mode {
                EngineMode::Any if passing => return Decision::new(true, messages),
                EngineMode::All if !passing => return Decision::new(false, messages),
                _ => {}
            }
        }
    }
    if !any_enabled {
        return Decision::new(true, messages);
    }
    Decision::new(mode == EngineMode::All, messages)
}

async fn evaluate_one(
    rb: &ResolvedBinding,
    req: &PolicyRequest,
    vars: &mut Option<CelVars>,
    env: &dyn PolicyEnv,
    messages: &mut Vec<String>,
) -> bool {
    let b = &rb.binding;
    let outcome = match (&b.subject, &rb.policy) {
        (BindingSubject::User(id), _) => pass_if(req.user.as_ref().is_some_and(|u| u.id == *id)),
        (BindingSubject::Group(id), _) => pass_if(req.user.as_ref().is_some_and(|u| u.group_ids.contains(id))),
        (BindingSubject::Policy(_), Some(policy)) => {
            if policy.is_expression() && vars.is_none() {
                *vars = Some(CelVars::new(req));
            }
            let run = policy.evaluate(req, vars.as_ref(), env);
            // Only policies that do I/O can hang; the others are bounded by their own checks.
            if policy.cost() == 2 && b.timeout_ms > 0 && tokio::runtime::Handle::try_current().is_ok() {
                let limit = std::time::Duration::from_millis(b.timeout_ms.unsigned_abs());
                tokio::time::timeout(limit, run)
                    .await
                    .unwrap_or_else(|_| Outcome::Error(format!("exceeded its time limit ({} ms)", b.timeout_ms)))
            } else {
                run.await
            }
        }
        (BindingSubject::Policy(id), None) => Outcome::Error(format!("policy {id} is missing or does not compile")),
    };
    let name = rb.policy.as_deref().map_or("", |p| p.name.as_str());
    let passing = match outcome {
        Outcome::Pass => !b.negate,
        Outcome::Fail(msgs) => {
            if !b.negate {
                // Two policies may say the same thing; the user needs to read it once.
                for m in msgs {
                    if !messages.contains(&m) {
                        messages.push(m);
                    }
                }
            }
            b.negate
        }
        Outcome::Error(error) => {
            tracing::warn!(policy = name, binding = %b.id, %error, failure_result = b.failure_result, "policy could not be evaluated");
            b.failure_result
        }
    };
    if rb.policy.as_ref().is_some_and(|p| p.execution_logging) {
        tracing::info!(policy = name, binding = %b.id, passing, "policy evaluated");
    }
    passing
}

fn pass_if(ok: bool) -> Outcome {
    if ok {
        Outcome::Pass
    } else {
        Outcome::Fail(Vec::new())
    }
}
