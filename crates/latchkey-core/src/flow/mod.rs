//! The flow engine: flows are stored sequences of stages; the executor runs one for a
//! browser or script, keeping its state server-side between requests.
//!
//! Adapters (HTML pages, the JSON executor) only translate: they hand the executor a
//! request description and an answer, and render the [`Challenge`] it returns. Stages are
//! [`StageHandler`]s looked up by kind, so features add stages without touching the engine.

pub mod defaults;
pub mod stages;

use async_trait::async_trait;
use chrono::Duration;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use uuid::Uuid;

use crate::clock::Clock;
use crate::directory::Directory;
use crate::error::{CoreError, FieldErrors, Result};
use crate::events::{ClientInfo, Events};
use crate::model::{Flow, FlowDesignation, FlowStateRecord, Stage};
use crate::redirect::safe_next;
use crate::sessions::{ActiveSession, Sessions};
use crate::store::Store;
use crate::throttle::Throttle;
use crate::tokens::Tokens;

/// Where a browser goes after a flow that named no `next`.
pub const USER_HOME: &str = "/if/user/";
pub const LOGIN_FLOW: &str = "default-authentication-flow";
/// Unfinished flows are forgotten after this long.
const FLOW_STATE_TTL: Duration = Duration::minutes(30);

/// What a stage shows: a component name plus its data, and errors if an answer was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Challenge {
    pub component: String,
    #[serde(flatten)]
    pub data: Map<String, Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: FieldErrors,
}

impl Challenge {
    pub fn new(component: &str) -> Self {
        Challenge { component: component.to_string(), data: Map::new(), errors: FieldErrors::new() }
    }
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.data.insert(key.to_string(), value.into());
        self
    }
    pub fn error(mut self, field: &str, message: &str) -> Self {
        self.errors.entry(field.to_string()).or_default().push(message.to_string());
        self
    }
    pub fn redirect(to: &str) -> Self {
        Challenge::new("redirect").with("to", to)
    }
    pub fn access_denied(message: &str) -> Self {
        Challenge::new("access_denied").with("error", message)
    }
}

/// What a stage decided.
#[derive(Debug)]
pub enum Step {
    /// Show this challenge (possibly with errors) and wait for an answer.
    Show(Challenge),
    /// The answer was malformed (missing or mistyped fields): show the challenge with errors,
    /// and adapters answer 400.
    Malformed(Challenge),
    /// The stage is done; go on with the next.
    Next,
    /// Stop the flow with this message.
    Deny(String),
}

/// The request as the adapter saw it.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub client: ClientInfo,
    pub session: Option<Arc<ActiveSession>>,
    /// The raw session cookie, so logout and login can end the current session.
    pub session_cookie: Option<String>,
    /// `scheme://host[:port]` under which users reach this instance; `next` must stay on it.
    pub origin: String,
}

/// Side effects the adapter must carry out on the response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// Set the session cookie to this value.
    pub set_session: Option<String>,
    pub clear_session: bool,
    /// Number of failed and successful logins in this step, for metrics.
    pub logins_ok: u32,
    pub logins_failed: u32,
}

/// The executor's answer to one request.
#[derive(Debug, Clone)]
pub struct FlowResponse {
    pub challenge: Challenge,
    pub effects: Effects,
    /// The answer was malformed (adapters answer 400).
    pub malformed: bool,
}

/// A stage snapshotted into the plan when the flow starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedStage {
    pub binding_id: Uuid,
    pub stage_id: Uuid,
    pub name: String,
    pub kind: String,
    pub config: Value,
}

/// The server-side state of one running flow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowState {
    pub flow_slug: String,
    pub flow_title: String,
    pub designation: FlowDesignation,
    /// The query the flow was started with (`next`, `token`…).
    pub query: BTreeMap<String, String>,
    /// Validated redirect target for the end of the flow.
    pub next: Option<String>,
    pub plan: Vec<PlannedStage>,
    pub index: usize,
    /// The user the flow is about, once identified.
    pub pending_user: Option<Uuid>,
    /// What the user typed to identify, even if no such account exists (so later stages
    /// fail exactly as for a real account).
    pub pending_login: Option<String>,
    /// Authentication methods completed in this flow (RFC 8176).
    pub amr: Vec<String>,
    /// Free-form data stages leave for later stages (prompt answers…).
    pub data: Map<String, Value>,
}

/// The services stages may use.
#[derive(Clone)]
pub struct FlowServices {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub directory: Directory,
    pub sessions: Sessions,
    pub events: Events,
    pub tokens: Tokens,
    pub throttle: Throttle,
}

/// Everything a stage sees while it runs.
pub struct StageCx<'a> {
    pub services: &'a FlowServices,
    pub state: &'a mut FlowState,
    pub config: &'a Value,
    pub request: &'a RequestInfo,
    pub effects: &'a mut Effects,
}

/// One kind of stage.
#[async_trait]
pub trait StageHandler: Send + Sync {
    /// The `kind` stored on stages this handler runs.
    fn kind(&self) -> &'static str;
    /// Refuses a stage configuration this handler cannot run.
    fn validate_config(&self, _config: &Value) -> Result<()> {
        Ok(())
    }
    /// Called when the stage is reached (and on every GET while it is current).
    async fn challenge(&self, cx: &mut StageCx<'_>) -> Result<Step>;
    /// Called with the user's answer.
    async fn submit(&self, cx: &mut StageCx<'_>, answer: &Map<String, Value>) -> Result<Step>;
}

/// Runs flows.
#[derive(Clone)]
pub struct FlowEngine {
    services: FlowServices,
    handlers: Arc<HashMap<&'static str, Arc<dyn StageHandler>>>,
}

fn store_err(e: crate::StoreError) -> CoreError {
    CoreError::from_store(e)
}

impl FlowEngine {
    pub fn new(services: FlowServices) -> Self {
        let mut engine = FlowEngine { services, handlers: Arc::new(HashMap::new()) };
        for h in stages::builtin() {
            engine.register(h);
        }
        engine
    }

    /// Adds (or replaces) the handler for a stage kind.
    pub fn register(&mut self, handler: Arc<dyn StageHandler>) {
        Arc::make_mut(&mut self.handlers).insert(handler.kind(), handler);
    }

    pub fn handler(&self, kind: &str) -> Option<&Arc<dyn StageHandler>> {
        self.handlers.get(kind)
    }

    pub fn services(&self) -> &FlowServices {
        &self.services
    }

    fn state_key(flow_key: &str, slug: &str) -> String {
        format!("{flow_key}:{slug}")
    }

    async fn load_flow(&self, slug: &str) -> Result<Flow> {
        self.services
            .store
            .get_flow_by_slug(slug)
            .await
            .map_err(store_err)?
            .ok_or_else(|| CoreError::NotFound(format!("flow '{slug}'")))
    }

    async fn load_state(&self, key: &str) -> Result<Option<FlowState>> {
        let now = self.services.clock.now();
        let Some(record) = self.services.store.get_flow_state(key, now).await.map_err(store_err)? else {
            return Ok(None);
        };
        // State written by an older version that no longer parses is simply restarted.
        Ok(serde_json::from_value(record.data).ok())
    }

    async fn save_state(&self, key: &str, state: &FlowState) -> Result<()> {
        let data = serde_json::to_value(state).map_err(|e| CoreError::Internal(e.to_string()))?;
        let record =
            FlowStateRecord { key: key.to_string(), data, expires_at: self.services.clock.now() + FLOW_STATE_TTL };
        self.services.store.put_flow_state(&record).await.map_err(store_err)
    }

    /// Builds a fresh plan for `flow`.
    async fn plan(&self, flow: &Flow, query: BTreeMap<String, String>, req: &RequestInfo) -> Result<FlowState> {
        let bindings = self.services.store.flow_bindings(flow.id).await.map_err(store_err)?;
        let plan = bindings
            .into_iter()
            .map(|(binding, stage): (_, Stage)| PlannedStage {
                binding_id: binding.id,
                stage_id: stage.id,
                name: stage.name,
                kind: stage.kind,
                config: stage.config,
            })
            .collect();
        let next = query.get("next").and_then(|n| safe_next(n, &req.origin));
        let pending_user = match flow.designation {
            FlowDesignation::Authentication | FlowDesignation::Enrollment | FlowDesignation::Recovery => None,
            _ => req.session.as_ref().map(|s| s.user.id),
        };
        Ok(FlowState {
            flow_slug: flow.slug.clone(),
            flow_title: flow.title.clone(),
            designation: flow.designation,
            query,
            next,
            plan,
            index: 0,
            pending_user,
            pending_login: None,
            amr: Vec::new(),
            data: Map::new(),
        })
    }

    /// Refuses to start a flow whose authentication requirement the request does not meet.
    fn check_requirement(flow: &Flow, req: &RequestInfo) -> Option<String> {
        let requirement = flow.settings.get("authentication").and_then(Value::as_str).unwrap_or("none");
        match requirement {
            "require_authenticated" if req.session.is_none() => Some("You need to log in first.".into()),
            "require_unauthenticated" if req.session.is_some() => Some("You are already logged in.".into()),
            "require_superuser" if !req.session.as_ref().is_some_and(|s| s.user.is_superuser) => {
                Some("This requires an administrator.".into())
            }
            _ => None,
        }
    }

    /// The current challenge of the flow `slug` for the browser holding `flow_key`.
    /// A different non-empty `query` than the running flow's restarts it.
    pub async fn get(
        &self,
        flow_key: &str,
        slug: &str,
        query: BTreeMap<String, String>,
        req: &RequestInfo,
    ) -> Result<FlowResponse> {
        let flow = self.load_flow(slug).await?;
        let key = Self::state_key(flow_key, slug);
        let existing = self.load_state(&key).await?;
        let state = match existing {
            Some(s) if query.is_empty() || s.query == query => s,
            _ => {
                if let Some(reason) = Self::check_requirement(&flow, req) {
                    return Ok(denied(&flow, &reason));
                }
                self.plan(&flow, query, req).await?
            }
        };
        self.advance(&key, state, req, None).await
    }

    /// Answers the current stage of the flow `slug`.
    pub async fn submit(&self, flow_key: &str, slug: &str, answer: Value, req: &RequestInfo) -> Result<FlowResponse> {
        let flow = self.load_flow(slug).await?;
        let key = Self::state_key(flow_key, slug);
        let mut state = match self.load_state(&key).await? {
            Some(s) => s,
            None => {
                if let Some(reason) = Self::check_requirement(&flow, req) {
                    return Ok(denied(&flow, &reason));
                }
                self.plan(&flow, BTreeMap::new(), req).await?
            }
        };
        let Value::Object(answer) = answer else {
            return Err(CoreError::invalid("the answer must be a JSON object"));
        };
        let mut effects = Effects::default();
        let step = match state.plan.get(state.index).cloned() {
            Some(planned) => {
                let handler = self.require_handler(&planned.kind)?;
                let mut cx = StageCx {
                    services: &self.services,
                    state: &mut state,
                    config: &planned.config,
                    request: req,
                    effects: &mut effects,
                };
                Some(handler.submit(&mut cx, &answer).await?)
            }
            None => None,
        };
        let mut response = self.advance(&key, state, req, step).await?;
        merge_effects(&mut response.effects, effects);
        Ok(response)
    }

    fn require_handler(&self, kind: &str) -> Result<Arc<dyn StageHandler>> {
        self.handlers
            .get(kind)
            .cloned()
            .ok_or_else(|| CoreError::Internal(format!("no handler for stage kind '{kind}'")))
    }

    async fn advance(
        &self,
        key: &str,
        mut state: FlowState,
        req: &RequestInfo,
        first: Option<Step>,
    ) -> Result<FlowResponse> {
        let mut effects = Effects::default();
        let mut pending = first;
        loop {
            let Some(planned) = state.plan.get(state.index).cloned() else {
                self.services.store.delete_flow_state(key).await.map_err(store_err)?;
                let to = state.next.clone().unwrap_or_else(|| default_target(state.designation));
                return Ok(FlowResponse { challenge: Challenge::redirect(&to), effects, malformed: false });
            };
            let step = match pending.take() {
                Some(step) => step,
                None => {
                    let handler = self.require_handler(&planned.kind)?;
                    let mut cx = StageCx {
                        services: &self.services,
                        state: &mut state,
                        config: &planned.config,
                        request: req,
                        effects: &mut effects,
                    };
                    handler.challenge(&mut cx).await?
                }
            };
            match step {
                Step::Next => state.index += 1,
                Step::Show(challenge) => {
                    self.save_state(key, &state).await?;
                    return Ok(FlowResponse {
                        challenge: with_flow_info(challenge, &state),
                        effects,
                        malformed: false,
                    });
                }
                Step::Malformed(challenge) => {
                    self.save_state(key, &state).await?;
                    return Ok(FlowResponse { challenge: with_flow_info(challenge, &state), effects, malformed: true });
                }
                Step::Deny(message) => {
                    self.services.store.delete_flow_state(key).await.map_err(store_err)?;
                    let challenge = with_flow_info(Challenge::access_denied(&message), &state);
                    return Ok(FlowResponse { challenge, effects, malformed: false });
                }
            }
        }
    }
}

fn merge_effects(into: &mut Effects, from: Effects) {
    if from.set_session.is_some() && into.set_session.is_none() {
        into.set_session = from.set_session;
    }
    into.clear_session |= from.clear_session;
    into.logins_ok += from.logins_ok;
    into.logins_failed += from.logins_failed;
}

fn default_target(designation: FlowDesignation) -> String {
    match designation {
        FlowDesignation::Invalidation => format!("/if/flow/{LOGIN_FLOW}/"),
        _ => USER_HOME.to_string(),
    }
}

fn with_flow_info(mut challenge: Challenge, state: &FlowState) -> Challenge {
    challenge.data.insert(
        "flow_info".into(),
        json!({ "title": state.flow_title, "slug": state.flow_slug, "designation": state.designation }),
    );
    challenge
}

fn denied(flow: &Flow, reason: &str) -> FlowResponse {
    let challenge = Challenge::access_denied(reason)
        .with("flow_info", json!({ "title": flow.title, "slug": flow.slug, "designation": flow.designation }));
    FlowResponse { challenge, effects: Effects::default(), malformed: false }
}
