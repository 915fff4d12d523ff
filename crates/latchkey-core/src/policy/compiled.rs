//! Policies turned into ready-to-run rules: configs parsed and expressions compiled once.

use chrono::Duration;
use serde_json::Value;
use uuid::Uuid;

use super::config::Fields;
use super::expression::{CelVars, Expression};
use super::password::PasswordRules;
use super::{PolicyEnv, PolicyRequest};
use crate::error::{CoreError, Result};
use crate::model::Policy;

/// The policy kinds Latchkey knows.
pub const POLICY_KINDS: &[&str] =
    &["expression", "password", "password_expiry", "reputation", "user", "group_membership"];

/// A policy ready to evaluate. Compile once (see `Policies::compile`), evaluate many times.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub id: Uuid,
    pub name: String,
    /// Log every evaluation (for debugging a rule).
    pub execution_logging: bool,
    rule: Rule,
}

#[derive(Debug)]
enum Rule {
    Expression(Expression),
    Password(PasswordRules),
    /// `deny_only: false` also asks the caller to force a password change (see
    /// [`CompiledPolicy::forces_password_reset`]); the engine itself only denies.
    PasswordExpiry {
        days: i64,
        deny_only: bool,
    },
    Reputation {
        check_ip: bool,
        check_username: bool,
        threshold: i64,
    },
    User(Vec<Uuid>),
    GroupMembership(Uuid),
}

/// What one policy said.
#[derive(Debug)]
pub(super) enum Outcome {
    Pass,
    /// Failed, with messages for the user (possibly none).
    Fail(Vec<String>),
    /// Could not decide (runtime error, time limit, lookup failure): the binding's failure_result applies.
    Error(String),
}

impl CompiledPolicy {
    pub fn compile(policy: &Policy) -> Result<Self> {
        Ok(CompiledPolicy {
            id: policy.id,
            name: policy.name.clone(),
            execution_logging: policy.execution_logging,
            rule: Rule::parse(&policy.kind, &policy.config)?,
        })
    }

    /// Checks a kind and config as they would be saved.
    pub fn validate(kind: &str, config: &Value) -> Result<()> {
        Rule::parse(kind, config).map(|_| ())
    }

    pub fn kind(&self) -> &'static str {
        match self.rule {
            Rule::Expression(_) => "expression",
            Rule::Password(_) => "password",
            Rule::PasswordExpiry { .. } => "password_expiry",
            Rule::Reputation { .. } => "reputation",
            Rule::User(_) => "user",
            Rule::GroupMembership(_) => "group_membership",
        }
    }

    /// True for an expiry policy configured to make the user set a new password (not only deny).
    pub fn forces_password_reset(&self) -> bool {
        matches!(self.rule, Rule::PasswordExpiry { deny_only: false, .. })
    }

    /// 0: a lookup in the request; 1: CPU work; 2: may ask the [`PolicyEnv`] (I/O).
    /// The engine runs cheaper policies first so short-circuiting saves the expensive ones.
    pub(super) fn cost(&self) -> u8 {
        match &self.rule {
            Rule::User(_) | Rule::GroupMembership(_) | Rule::PasswordExpiry { .. } => 0,
            Rule::Expression(_) => 1,
            Rule::Password(p) if !p.check_hibp => 1,
            Rule::Password(_) | Rule::Reputation { .. } => 2,
        }
    }

    pub(super) fn is_expression(&self) -> bool {
        matches!(self.rule, Rule::Expression(_))
    }

    pub(super) async fn evaluate(&self, req: &PolicyRequest, vars: Option<&CelVars>, env: &dyn PolicyEnv) -> Outcome {
        let pass_if = |ok: bool| if ok { Outcome::Pass } else { Outcome::Fail(Vec::new()) };
        match &self.rule {
            Rule::Expression(expr) => match vars {
                Some(vars) => match expr.evaluate(vars) {
                    Ok(b) => pass_if(b),
                    Err(e) => Outcome::Error(e),
                },
                None => Outcome::Error("expression variables were not prepared".into()),
            },
            Rule::User(ids) => pass_if(req.user.as_ref().is_some_and(|u| ids.contains(&u.id))),
            Rule::GroupMembership(id) => pass_if(req.user.as_ref().is_some_and(|u| u.group_ids.contains(id))),
            Rule::PasswordExpiry { days, .. } => {
                let changed = req.user.as_ref().and_then(|u| u.password_changed_at);
                match changed {
                    // No user or no password: nothing can have expired.
                    None => Outcome::Pass,
                    Some(at) if req.now - at > Duration::days(*days) => {
                        Outcome::Fail(vec!["Your password has expired.".to_string()])
                    }
                    Some(_) => Outcome::Pass,
                }
            }
            Rule::Password(rules) => {
                let Some(password) = req.password.as_deref() else {
                    return Outcome::Pass;
                };
                let inputs: Vec<&str> = req
                    .user
                    .iter()
                    .flat_map(|u| [u.username.as_str(), u.name.as_str(), u.email.as_deref().unwrap_or("")])
                    .filter(|s| !s.is_empty())
                    .collect();
                match rules.check(password, &inputs, env).await {
                    Ok(messages) if messages.is_empty() => Outcome::Pass,
                    Ok(messages) => Outcome::Fail(messages),
                    Err(e) => Outcome::Error(format!("password lookup failed: {e}")),
                }
            }
            Rule::Reputation { check_ip, check_username, threshold } => {
                let mut keys = Vec::with_capacity(2);
                if *check_ip {
                    if let Some(ip) = req.request.client_ip.as_deref() {
                        keys.push(format!("ip:{ip}"));
                    }
                }
                if *check_username {
                    if let Some(u) = &req.user {
                        keys.push(format!("user:{}", u.username));
                    }
                }
                for key in keys {
                    match env.reputation(&key).await {
                        Ok(score) if score <= *threshold => return Outcome::Fail(Vec::new()),
                        Ok(_) => {}
                        Err(e) => return Outcome::Error(format!("reputation lookup failed: {e}")),
                    }
                }
                Outcome::Pass
            }
        }
    }
}

impl Rule {
    fn parse(kind: &str, config: &Value) -> Result<Rule> {
        let f = Fields::new(config)?;
        match kind {
            "expression" => {
                f.only(&["expression"])?;
                Ok(Rule::Expression(Expression::compile(&f.required_str("expression")?)?))
            }
            "password" => Ok(Rule::Password(PasswordRules::parse(&f)?)),
            "password_expiry" => {
                f.only(&["days", "deny_only"])?;
                let days = f.i64_or("days", 90)?;
                if !(1..=36_500).contains(&days) {
                    return Err(CoreError::invalid_field("days", "days must be between 1 and 36500."));
                }
                Ok(Rule::PasswordExpiry { days, deny_only: f.bool_or("deny_only", true)? })
            }
            "reputation" => {
                f.only(&["check_ip", "check_username", "threshold"])?;
                let check_ip = f.bool_or("check_ip", true)?;
                let check_username = f.bool_or("check_username", true)?;
                if !check_ip && !check_username {
                    return Err(CoreError::invalid_field(
                        "check_ip",
                        "check_ip and check_username cannot both be false.",
                    ));
                }
                Ok(Rule::Reputation { check_ip, check_username, threshold: f.i64_or("threshold", -5)? })
            }
            "user" => {
                f.only(&["users"])?;
                Ok(Rule::User(f.required_uuid_list("users")?))
            }
            "group_membership" => {
                f.only(&["group"])?;
                Ok(Rule::GroupMembership(f.required_uuid("group")?))
            }
            other => Err(CoreError::invalid_field(
                "kind",
                format!("Unknown policy kind {other:?}; expected one of: {}.", POLICY_KINDS.join(", ")),
            )),
        }
    }
}
