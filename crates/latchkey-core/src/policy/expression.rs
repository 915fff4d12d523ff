//! Expression policies: CEL programs, compiled once at save/load time and evaluated against
//! the request's `user`, `request` and `context`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value};
use serde_json::Value as Json;

use super::PolicyRequest;
use crate::error::{CoreError, Result};

/// Longer expressions are refused at save time: nobody needs more, and it bounds parse cost.
pub const MAX_EXPRESSION_LEN: usize = 4096;

/// Time an evaluation may take before its result is discarded (fail closed).
pub const EXPRESSION_TIME_LIMIT: Duration = Duration::from_millis(50);

/// The standard CEL environment, built once: building it registers every stdlib function.
fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib()))
}

/// A compiled CEL program.
#[derive(Debug)]
pub struct Expression {
    program: Program,
}

impl Expression {
    /// Parses `source`; errors are `Invalid` on the `expression` field and carry the position.
    pub fn compile(source: &str) -> Result<Self> {
        if source.trim().is_empty() {
            return Err(CoreError::invalid_field("expression", "The expression is empty."));
        }
        if source.len() > MAX_EXPRESSION_LEN {
            return Err(CoreError::invalid_field(
                "expression",
                format!("The expression is longer than {MAX_EXPRESSION_LEN} characters."),
            ));
        }
        let program = env().compile(source).map_err(|errors| {
            let detail = errors
                .errors
                .iter()
                .map(|e| format!("line {}, column {}: {}", e.pos.0, e.pos.1 + 1, e.msg))
                .collect::<Vec<_>>()
                .join("; ");
            CoreError::invalid_field("expression", format!("The expression does not compile: {detail}"))
        })?;
        Ok(Expression { program })
    }

    /// Runs the program for its value (claim expressions), as JSON. `Err` holds a message for
    /// logs: runtime error, a value JSON cannot carry, time limit exceeded.
    pub fn evaluate_json(&self, vars: &CelVars) -> std::result::Result<Json, String> {
        let started = Instant::now();
        let mut ctx = Context::with_env(Arc::clone(env()));
        ctx.add_variable_from_value("user", vars.user.clone());
        ctx.add_variable_from_value("request", vars.request.clone());
        ctx.add_variable_from_value("context", vars.context.clone());
        let result = self.program.execute(&ctx);
        if started.elapsed() > EXPRESSION_TIME_LIMIT {
            return Err(format!("exceeded its time limit ({} ms)", started.elapsed().as_millis()));
        }
        cel_to_json(&result.map_err(|e| e.to_string())?)
    }

    /// Runs the program. `Err` holds a message for logs (runtime error, non-bool result,
    /// time limit exceeded); callers fail closed on it.
    pub fn evaluate(&self, vars: &CelVars) -> std::result::Result<bool, String> {
        let started = Instant::now();
        let mut ctx = Context::with_env(Arc::clone(env()));
        ctx.add_variable_from_value("user", vars.user.clone());
        ctx.add_variable_from_value("request", vars.request.clone());
        ctx.add_variable_from_value("context", vars.context.clone());
        let result = self.program.execute(&ctx);
        let elapsed = started.elapsed();
        // CEL always terminates, but a comprehension over a large list can still be slow:
        // a result that came too late is not trusted, so a slow rule cannot become a bypass.
        if elapsed > EXPRESSION_TIME_LIMIT {
            return Err(format!("exceeded its time limit ({} ms)", elapsed.as_millis()));
        }
        match result {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("returned {}, not a bool", other.type_of())),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The variables expressions see, built once per engine run and shared by its expressions.
#[derive(Debug, Clone)]
pub struct CelVars {
    user: Value,
    request: Value,
    context: Value,
}

impl CelVars {
    pub fn new(req: &PolicyRequest) -> Self {
        let user = match &req.user {
            Some(u) => map([
                ("id", Value::from(u.id.to_string())),
                ("username", Value::from(u.username.as_str())),
                ("email", Value::from(u.email.as_deref().unwrap_or(""))),
                ("name", Value::from(u.name.as_str())),
                ("groups", Value::List(Arc::new(u.groups.iter().map(|g| Value::from(g.as_str())).collect()))),
                ("attributes", json_to_cel(&u.attributes)),
                ("is_superuser", Value::Bool(u.is_superuser)),
                ("is_authenticated", Value::Bool(true)),
            ]),
            // An anonymous user has the same shape, so `'x' in user.groups` is simply false.
            None => map([
                ("id", Value::from("")),
                ("username", Value::from("")),
                ("email", Value::from("")),
                ("name", Value::from("")),
                ("groups", Value::List(Arc::new(Vec::new()))),
                ("attributes", Value::Map(Map { map: Arc::new(HashMap::new()) })),
                ("is_superuser", Value::Bool(false)),
                ("is_authenticated", Value::Bool(false)),
            ]),
        };
        // Absent request facts are empty strings so string methods on them do not error.
        let r = &req.request;
        let s = |v: &Option<String>| Value::from(v.as_deref().unwrap_or(""));
        let request = map([
            ("client_ip", s(&r.client_ip)),
            ("user_agent", s(&r.user_agent)),
            ("host", s(&r.host)),
            ("path", s(&r.path)),
            ("method", s(&r.method)),
        ]);
        let context = Value::Map(Map {
            map: Arc::new(req.context.iter().map(|(k, v)| (Key::from(k.as_str()), json_to_cel(v))).collect()),
        });
        CelVars { user, request, context }
    }
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Map(Map { map: Arc::new(entries.into_iter().map(|(k, v)| (Key::from(k), v)).collect()) })
}

fn cel_to_json(v: &Value) -> std::result::Result<Json, String> {
    Ok(match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::UInt(u) => Json::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f).map(Json::Number).ok_or("returned a non-finite number")?,
        Value::String(s) => Json::String(s.to_string()),
        Value::List(items) => Json::Array(items.iter().map(cel_to_json).collect::<std::result::Result<_, _>>()?),
        Value::Map(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m.map.iter() {
                let key = match k {
                    Key::String(s) => s.to_string(),
                    Key::Int(i) => i.to_string(),
                    Key::Uint(u) => u.to_string(),
                    Key::Bool(b) => b.to_string(),
                };
                out.insert(key, cel_to_json(v)?);
            }
            Json::Object(out)
        }
        other => return Err(format!("returned {}, which a claim cannot carry", other.type_of())),
    })
}

fn json_to_cel(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Json::Object(m) => {
            Value::Map(Map { map: Arc::new(m.iter().map(|(k, v)| (Key::from(k.as_str()), json_to_cel(v))).collect()) })
        }
    }
}
