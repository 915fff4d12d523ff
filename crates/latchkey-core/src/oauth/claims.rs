//! Extra claims per provider from CEL expressions, like authentik's scope mappings: each names
//! a claim, the scope that releases it (none: every token with `openid`) and an expression
//! over the same `user` the policies see (with effective `user.groups`) and a `context`
//! holding the granted `scopes` and the `client_id`. The expression's value (string, number,
//! list, map…) becomes the claim in ID tokens, access tokens and userinfo.
//!
//! Expressions are compiled when written (errors name the entry, line and column) and when
//! the provider is loaded; one that fails at run time leaves its claim out and is logged.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Arc;

use crate::error::CoreError;
use crate::policy::{CelVars, Expression, PolicyRequest, PolicyUser};

/// Claims the provider sets itself; a mapping may not replace them.
pub const RESERVED: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "auth_time",
    "nonce",
    "acr",
    "amr",
    "at_hash",
    "c_hash",
    "azp",
    "sid",
    "scope",
    "client_id",
    "uid",
    "events",
];

/// A mapping as stored in the provider's configuration (`claims: [...]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClaimSpec {
    /// The claim's name.
    pub name: String,
    /// The scope that releases it; none: released whenever `openid` is granted.
    #[serde(default)]
    pub scope: Option<String>,
    pub expression: String,
}

/// A compiled mapping.
#[derive(Debug, Clone)]
pub struct ClaimMapping {
    pub spec: ClaimSpec,
    expression: Arc<Expression>,
}

/// Checks one mapping; the error is one sentence naming what is wrong (with line and column
/// for an expression that does not compile).
pub fn compile(spec: &ClaimSpec) -> Result<ClaimMapping, String> {
    let name = spec.name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("'{}' is not a claim name", spec.name));
    }
    if RESERVED.contains(&name) {
        return Err(format!("the claim '{name}' is set by the provider itself and cannot be mapped"));
    }
    if let Some(scope) = &spec.scope {
        if scope.is_empty() || scope.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("'{scope}' is not a scope name"));
        }
    }
    let expression = Expression::compile(&spec.expression).map_err(|e| match e {
        CoreError::Invalid { message, .. } => message,
        other => other.to_string(),
    })?;
    Ok(ClaimMapping { spec: spec.clone(), expression: Arc::new(expression) })
}

/// Validates a provider configuration's `claims` list, as the admin API and blueprints write
/// it. The error names the entry: `claims[1] (roles).expression: …`.
pub fn validate(config: &Value) -> Result<(), CoreError> {
    let Some(list) = config.get("claims") else { return Ok(()) };
    let specs: Vec<ClaimSpec> = serde_json::from_value(list.clone()).map_err(|e| {
        CoreError::invalid_field("claims", format!("claims: {e} (each entry has name, scope and expression)"))
    })?;
    let mut seen = std::collections::HashSet::new();
    for (i, spec) in specs.iter().enumerate() {
        let field = format!("claims[{i}] ({})", spec.name);
        if !seen.insert((spec.name.as_str(), spec.scope.as_deref())) {
            return Err(CoreError::invalid_field(&field, format!("{field}: the claim is mapped twice for this scope")));
        }
        compile(spec).map_err(|m| CoreError::invalid_field(&field, format!("{field}: {m}")))?;
    }
    Ok(())
}

/// The mappings of a stored configuration. Invalid entries (written before validation
/// existed, or by hand) are skipped and logged rather than failing the provider.
pub fn load(provider: &str, config: &Value) -> Vec<ClaimMapping> {
    let Some(list) = config.get("claims").and_then(Value::as_array) else { return Vec::new() };
    list.iter()
        .filter_map(|v| {
            let spec: ClaimSpec = serde_json::from_value(v.clone()).ok()?;
            match compile(&spec) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(provider, claim = %spec.name, "claim mapping ignored: {e}");
                    None
                }
            }
        })
        .collect()
}

/// Whether any mapping applies to `scopes`.
pub fn any_applies(mappings: &[ClaimMapping], scopes: &[String]) -> bool {
    mappings.iter().any(|m| applies(m, scopes))
}

fn applies(m: &ClaimMapping, scopes: &[String]) -> bool {
    let wanted = m.spec.scope.as_deref().unwrap_or("openid");
    scopes.iter().any(|s| s == wanted)
}

/// Adds the claims the mappings for `scopes` produce to `claims`. A mapping whose expression
/// fails is left out (and logged): a broken mapping must not stop anyone logging in.
pub fn apply(
    mappings: &[ClaimMapping],
    provider: &str,
    client_id: &str,
    user: &PolicyUser,
    scopes: &[String],
    claims: &mut Map<String, Value>,
) {
    if !any_applies(mappings, scopes) {
        return;
    }
    let mut req = PolicyRequest::new(Some(user.clone()), chrono::Utc::now());
    req.context.insert("scopes".into(), json!(scopes));
    req.context.insert("client_id".into(), json!(client_id));
    let vars = CelVars::new(&req);
    for m in mappings.iter().filter(|m| applies(m, scopes)) {
        match m.expression.evaluate_json(&vars) {
            Ok(Value::Null) => {}
            Ok(v) => {
                claims.insert(m.spec.name.clone(), v);
            }
            Err(e) => tracing::warn!(provider, claim = %m.spec.name, user = %user.username, "claim left out: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Group, User};

    fn spec(name: &str, scope: Option<&str>, expression: &str) -> ClaimSpec {
        ClaimSpec { name: name.into(), scope: scope.map(String::from), expression: expression.into() }
    }

    fn user() -> User {
        User {
            id: uuid::Uuid::nil(),
            username: "alice".into(),
            name: "Alice".into(),
            email: Some("alice@example.test".into()),
            is_active: true,
            kind: crate::model::UserKind::Internal,
            attributes: json!({"locale": "de"}),
            password_hash: None,
            password_changed_at: None,
            uid_number: 2000,
            created_at: chrono::Utc::now(),
            last_login: None,
        }
    }

    #[test]
    fn write_errors_name_the_entry_and_position() {
        let config = json!({ "claims": [
            {"name": "roles", "expression": "['a']"},
            {"name": "locale", "scope": "profile", "expression": "user.attributes.locale +"},
        ]});
        let err = validate(&config).unwrap_err().to_string();
        assert!(err.contains("claims[1] (locale)") && err.contains("line 1, column"), "{err}");
        let err = validate(&json!({"claims": [{"name": "sub", "expression": "'x'"}]})).unwrap_err().to_string();
        assert!(err.contains("set by the provider"), "{err}");
        let err = validate(&json!({"claims": [{"name": "x", "expresion": "'x'"}]})).unwrap_err().to_string();
        assert!(err.contains("expresion"), "{err}");
        assert!(validate(&json!({})).is_ok());
        assert!(compile(&spec("roles", Some("profile"), "['a']")).is_ok());
        assert!(compile(&spec("roles", Some("two words"), "['a']")).unwrap_err().contains("not a scope name"));
        assert!(compile(&spec("has space", None, "1")).unwrap_err().contains("not a claim name"));
    }

    #[test]
    fn claims_come_from_user_groups_and_scopes_and_failures_are_left_out() {
        let mappings = load(
            "p",
            &json!({ "claims": [
                {"name": "roles", "expression": "'admins' in user.groups ? ['admin'] : ['viewer']"},
                {"name": "locale", "scope": "profile", "expression": "user.attributes.locale"},
                {"name": "broken", "expression": "user.attributes.nothing.deeper"},
                {"name": "granted", "expression": "context.scopes"},
            ]}),
        );
        assert_eq!(mappings.len(), 4);
        let admins = Group {
            id: uuid::Uuid::nil(),
            name: "admins".into(),
            parent_id: None,
            is_superuser: true,
            attributes: json!({}),
            gid_number: 2000,
            created_at: chrono::Utc::now(),
        };
        let scopes = vec!["openid".to_string()];
        let mut claims = Map::new();
        apply(&mappings, "p", "c", &PolicyUser::from_user(&user(), &[admins]), &scopes, &mut claims);
        assert_eq!(claims.get("roles"), Some(&json!(["admin"])));
        assert_eq!(claims.get("granted"), Some(&json!(["openid"])));
        assert!(!claims.contains_key("locale"), "profile was not granted");
        assert!(!claims.contains_key("broken"));
        let scopes = vec!["openid".to_string(), "profile".to_string()];
        let mut claims = Map::new();
        apply(&mappings, "p", "c", &PolicyUser::from_user(&user(), &[]), &scopes, &mut claims);
        assert_eq!(claims.get("roles"), Some(&json!(["viewer"])));
        assert_eq!(claims.get("locale"), Some(&json!("de")));
    }
}
