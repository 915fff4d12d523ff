//! Access rules of a proxy provider: an ordered list, first match wins, in Authelia's shape —
//! `domain` (exact or `*.wildcard`), `domain_regex`, `resources` (path regexes), `methods`,
//! `networks` (CIDR), `subject` (`user:NAME`, `group:NAME`) and the outcome `policy`
//! (`bypass`, `one_factor`, `two_factor`, `deny`). Criteria of one rule must all match; the
//! entries of one criterion are alternatives. No match keeps the provider's usual behaviour.
//!
//! Rules are compiled once, when the provider table is loaded, and evaluated from memory.

use ipnet::IpNet;
use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::net::IpAddr;

use crate::error::{CoreError, Result};

/// What a matching rule asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleOutcome {
    /// Pass without a session.
    Bypass,
    /// A session (any factor).
    OneFactor,
    /// A session that proved a second factor.
    TwoFactor,
    /// Refused, whoever asks.
    Deny,
}

/// One rule as written in blueprints and stored in the provider's config (`access_rules`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub domain: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub domain_regex: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub subject: Vec<String>,
    pub policy: RuleOutcome,
}

/// A string or a list of strings.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

#[derive(Debug)]
enum DomainPattern {
    Exact(String),
    /// `*.example.com`: any host strictly under `.example.com` (stored with the leading dot).
    Suffix(String),
}

/// A compiled rule.
#[derive(Debug)]
pub struct AccessRule {
    pub name: String,
    domains: Vec<DomainPattern>,
    domain_regex: Vec<Regex>,
    resources: Vec<Regex>,
    methods: Vec<String>,
    networks: Vec<IpNet>,
    users: Vec<String>,
    groups: Vec<String>,
    pub outcome: RuleOutcome,
}

/// The facts a rule looks at.
pub struct RuleRequest<'a> {
    /// Lower case, without port.
    pub host: &'a str,
    pub path: &'a str,
    /// Upper case.
    pub method: &'a str,
    pub client_ip: Option<IpAddr>,
}

/// Who is asking, when known.
pub struct RuleSubject<'a> {
    pub username: &'a str,
    /// Effective groups (nesting resolved).
    pub groups: &'a [String],
}

/// The first matching rule's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleMatch<'a> {
    /// No rule matched: the provider's usual behaviour.
    None,
    Matched {
        rule: &'a str,
        outcome: RuleOutcome,
    },
    /// A rule with a subject would have to be checked, and nobody is logged in yet.
    NeedsIdentity,
}

/// A provider's compiled rules, in order.
#[derive(Debug, Default)]
pub struct AccessRules {
    rules: Vec<AccessRule>,
}

impl AccessRules {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// The rules stored under `access_rules` in a provider's config (absent: none).
    pub fn from_config(config: &Value) -> Result<AccessRules> {
        match config.get("access_rules") {
            None | Some(Value::Null) => Ok(AccessRules::default()),
            Some(v) => {
                let specs: Vec<AccessRuleSpec> = serde_json::from_value(v.clone())
                    .map_err(|e| CoreError::invalid_field("access_rules", format!("access_rules: {e}")))?;
                AccessRules::compile(&specs)
            }
        }
    }

    /// Compiles and validates; an error names the rule (`access_rules[2] (admin)`) and the value.
    pub fn compile(specs: &[AccessRuleSpec]) -> Result<AccessRules> {
        let mut rules = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let label = match &spec.name {
                Some(n) => format!("access_rules[{i}] ({n})"),
                None => format!("access_rules[{i}]"),
            };
            let bad = |what: &str| CoreError::invalid_field("access_rules", format!("{label}: {what}"));
            let mut domains = Vec::new();
            for d in &spec.domain {
                let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
                let pattern = match d.strip_prefix("*.") {
                    Some(rest) if valid_host(rest) => DomainPattern::Suffix(format!(".{rest}")),
                    None if valid_host(&d) => DomainPattern::Exact(d),
                    _ => return Err(bad(&format!("domain '{d}' is not a host name or *.wildcard"))),
                };
                domains.push(pattern);
            }
            let regexes = |list: &[String], field: &str| -> Result<Vec<Regex>> {
                list.iter()
                    .map(|r| {
                        regex::RegexBuilder::new(r)
                            .size_limit(1 << 20)
                            .build()
                            .map_err(|e| bad(&format!("{field} '{r}' is not a valid regex: {e}")))
                    })
                    .collect()
            };
            let domain_regex = regexes(&spec.domain_regex, "domain_regex")?;
            let resources = regexes(&spec.resources, "resources")?;
            let mut methods = Vec::new();
            for m in &spec.methods {
                let m = m.trim().to_ascii_uppercase();
                if m.is_empty() || m.len() > 32 || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(bad(&format!("method '{m}' is not an HTTP method")));
                }
                methods.push(m);
            }
            let mut networks = Vec::new();
            for n in &spec.networks {
                let n = n.trim();
                let net = n
                    .parse::<IpNet>()
                    .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| bad(&format!("network '{n}' is not an address or CIDR range")))?;
                networks.push(net);
            }
            let (mut users, mut groups) = (Vec::new(), Vec::new());
            for s in &spec.subject {
                match s.trim().split_once(':') {
                    Some(("user", u)) if !u.trim().is_empty() => users.push(u.trim().to_lowercase()),
                    Some(("group", g)) if !g.trim().is_empty() => groups.push(g.trim().to_string()),
                    _ => return Err(bad(&format!("subject '{s}' is not user:NAME or group:NAME"))),
                }
            }
            if spec.policy == RuleOutcome::Bypass && !(users.is_empty() && groups.is_empty()) {
                // Authelia refuses this too: bypass answers before anyone is identified.
                return Err(bad("a bypass rule cannot have a subject"));
            }
            rules.push(AccessRule {
                name: spec.name.clone().unwrap_or_else(|| format!("rule {i}")),
                domains,
                domain_regex,
                resources,
                methods,
                networks,
                users,
                groups,
                outcome: spec.policy,
            });
        }
        Ok(AccessRules { rules })
    }

    /// The first rule matching `req` (and `subject`, for rules that name one).
    pub fn evaluate<'a>(&'a self, req: &RuleRequest<'_>, subject: Option<&RuleSubject<'_>>) -> RuleMatch<'a> {
        for rule in &self.rules {
            if !rule.matches_request(req) {
                continue;
            }
            if rule.users.is_empty() && rule.groups.is_empty() {
                return RuleMatch::Matched { rule: &rule.name, outcome: rule.outcome };
            }
            let Some(subject) = subject else { return RuleMatch::NeedsIdentity };
            let user_hit = rule.users.iter().any(|u| u.eq_ignore_ascii_case(subject.username));
            let group_hit = rule.groups.iter().any(|g| subject.groups.iter().any(|have| have == g));
            if user_hit || group_hit {
                return RuleMatch::Matched { rule: &rule.name, outcome: rule.outcome };
            }
        }
        RuleMatch::None
    }
}

impl AccessRule {
    fn matches_request(&self, req: &RuleRequest<'_>) -> bool {
        let host_ok = (self.domains.is_empty() && self.domain_regex.is_empty())
            || self.domains.iter().any(|d| match d {
                DomainPattern::Exact(h) => h == req.host,
                DomainPattern::Suffix(s) => req.host.ends_with(s.as_str()),
            })
            || self.domain_regex.iter().any(|r| r.is_match(req.host));
        host_ok
            && (self.resources.is_empty() || self.resources.iter().any(|r| r.is_match(req.path)))
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == req.method))
            && (self.networks.is_empty()
                || req.client_ip.is_some_and(|ip| self.networks.iter().any(|n| n.contains(&ip))))
    }
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(v: Value) -> Result<AccessRules> {
        AccessRules::from_config(&json!({ "access_rules": v }))
    }

    fn req<'a>(host: &'a str, path: &'a str, method: &'a str, ip: &str) -> RuleRequest<'a> {
        RuleRequest { host, path, method, client_ip: ip.parse().ok() }
    }

    #[test]
    fn first_match_wins_over_every_criterion() {
        let r = rules(json!([
            { "name": "health", "resources": "^/api/health$", "policy": "bypass" },
            { "name": "blocked", "domain_regex": "^secret\\.", "policy": "deny" },
            { "name": "lan", "domain": "*.example.test", "networks": ["10.0.0.0/8", "192.168.1.5"], "methods": ["get"], "policy": "one_factor" },
            { "name": "admin", "domain": "admin.example.test", "policy": "two_factor" },
            { "name": "ops", "subject": ["group:ops", "user:Carol"], "policy": "deny" },
        ]))
        .unwrap();
        assert_eq!(r.len(), 5);
        let m = |q: RuleRequest<'_>, s: Option<&RuleSubject<'_>>| match r.evaluate(&q, s) {
            RuleMatch::Matched { rule, outcome } => format!("{rule}:{outcome:?}"),
            other => format!("{other:?}"),
        };
        assert_eq!(m(req("admin.example.test", "/api/health", "POST", "1.2.3.4"), None), "health:Bypass");
        assert_eq!(m(req("secret.example.test", "/", "GET", "10.1.1.1"), None), "blocked:Deny");
        assert_eq!(m(req("admin.example.test", "/", "GET", "10.1.1.1"), None), "lan:OneFactor");
        assert_eq!(m(req("admin.example.test", "/", "GET", "192.168.1.5"), None), "lan:OneFactor");
        assert_eq!(m(req("admin.example.test", "/", "PUT", "10.1.1.1"), None), "admin:TwoFactor");
        assert_eq!(m(req("admin.example.test", "/", "GET", "8.8.8.8"), None), "admin:TwoFactor");
        // The wildcard does not cover the apex.
        assert_eq!(m(req("example.test", "/", "GET", "10.1.1.1"), None), "NeedsIdentity");
        let carol = RuleSubject { username: "carol", groups: &[] };
        let ops = RuleSubject { username: "dave", groups: &["family".into(), "ops".into()] };
        let alice = RuleSubject { username: "alice", groups: &["family".into()] };
        assert_eq!(m(req("example.test", "/", "GET", "1.1.1.1"), Some(&carol)), "ops:Deny");
        assert_eq!(m(req("example.test", "/", "GET", "1.1.1.1"), Some(&ops)), "ops:Deny");
        assert_eq!(m(req("example.test", "/", "GET", "1.1.1.1"), Some(&alice)), "None");
        // No client address: a network rule cannot match.
        assert_eq!(m(req("www.example.test", "/", "GET", "none"), Some(&alice)), "None");
    }

    #[test]
    fn bad_rules_are_refused_by_name() {
        let err = |v: Value| rules(v).unwrap_err().to_string();
        assert!(err(json!([{ "policy": "one_factor" }, { "name": "x", "resources": "([", "policy": "deny" }]))
            .contains("access_rules[1] (x): resources '(['"));
        assert!(err(json!([{ "networks": "10.0.0.0/33", "policy": "deny" }])).contains("access_rules[0]: network"));
        assert!(err(json!([{ "subject": "alice", "policy": "deny" }])).contains("user:NAME"));
        assert!(err(json!([{ "subject": "user:alice", "policy": "bypass" }])).contains("bypass rule"));
        assert!(err(json!([{ "domain": "a/b", "policy": "deny" }])).contains("domain 'a/b'"));
        assert!(err(json!([{ "policy": "maybe" }])).contains("access_rules"));
        assert!(err(json!([{ "policy": "deny", "colour": "red" }])).contains("colour"));
        assert!(AccessRules::from_config(&json!({})).unwrap().is_empty());
    }
}
