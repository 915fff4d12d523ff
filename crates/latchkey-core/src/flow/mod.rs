//! The flow engine: flows are stored sequences of stages; the executor runs one for a
//! browser or script, keeping its state server-side between requests.
//!
//! Adapters (HTML pages, the JSON executor) only translate: they hand the executor a
//! request description and an answer, and render the [`Challenge`] it returns. Stages are
//! [`StageHandler`]s looked up by kind, so features add stages without touching the engine.

pub mod authenticator;
pub mod consent;
pub mod defaults;
pub mod email;
pub mod enrollment;
pub mod prompt;
pub mod stages;

use async_trait::async_trait;
use chrono::Duration;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use uuid::Uuid;

use crate::access::Access;
use crate::clock::Clock;
use crate::directory::Directory;
use crate::error::{CoreError, FieldErrors, Result};
use crate::events::{ClientInfo, Events};
use crate::model::{BindingTarget, TokenKind};
use crate::model::{Flow, FlowDesignation, FlowStateRecord};
use crate::policy::{EngineMode, RequestFacts};
use crate::redirect::safe_next;
use crate::reputation::ReputationBook;
use crate::sessions::{ActiveSession, Sessions};
use crate::store::Store;
use crate::throttle::Throttle;
use crate::tokens::Tokens;

/// Where a browser goes after a flow that named no `next`.
pub const USER_HOME: &str = "/if/user/";
pub const LOGIN_FLOW: &str = "default-authentication-flow";
/// Query key: whoever starts a flow with `?completion=<random>` can later check that this
/// flow ran to its end (OAuth authorization: only then is a code issued). See [`completion_key`].
pub const COMPLETION: &str = "completion";

/// Where the receipt of a completed flow started with `?completion=<value>` is kept.
pub fn completion_key(value: &str) -> String {
    format!("completion:{}", crate::keys::hash_secret(value))
}
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
    /// End the flow, sending the browser here.
    Redirect(String),
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
    /// Host, path and method of the request, for policies.
    pub host: Option<String>,
    pub path: Option<String>,
    pub method: Option<String>,
    /// The browser's "remember this browser" cookie for the second factor, if it sent one.
    pub remember_device: Option<String>,
}

impl RequestInfo {
    pub fn facts(&self) -> RequestFacts {
        RequestFacts {
            client_ip: self.client.ip.clone(),
            user_agent: self.client.user_agent.clone(),
            host: self.host.clone(),
            path: self.path.clone(),
            method: self.method.clone(),
        }
    }
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
    /// The attempt was throttled: retry after this many seconds (adapters answer 429).
    pub retry_after: Option<u64>,
    /// Set the "remember this browser" cookie to this value for this many seconds.
    pub remember_device: Option<(String, i64)>,
}

/// A new plan, or the answer for a request the flow's policies refuse.
enum Planned {
    Ready(Box<FlowState>),
    Denied(FlowResponse),
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
    /// Evaluate the stage binding's policies again when the stage is reached.
    #[serde(default)]
    pub re_evaluate: bool,
    /// The stage binding's settings (policy engine mode…).
    #[serde(default)]
    pub binding_settings: Value,
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
    pub reputation: ReputationBook,
    pub access: Access,
    pub mailer: crate::mail::Mailer,
    pub mfa: crate::mfa::Mfa,
    /// For back-channel logout when a session ends in a flow.
    pub oauth: crate::oauth::OAuth,
}

/// Everything a stage sees while it runs.
pub struct StageCx<'a> {
    pub services: &'a FlowServices,
    pub state: &'a mut FlowState,
    pub config: &'a Value,
    pub request: &'a RequestInfo,
    pub effects: &'a mut Effects,
}

impl StageCx<'_> {
    /// The policy view of this flow's request: the flow's user (or the session's), the
    /// request facts and the flow context.
    pub async fn policy_request(&self) -> Result<crate::policy::PolicyRequest> {
        policy_request(self.services, self.state, self.request).await
    }

    /// Messages of the password policies this stage names (`validation_policies`) that
    /// `candidate` fails; empty when it passes.
    pub async fn validate_password(&self, candidate: &str) -> Result<Vec<String>> {
        let names: Vec<String> = self
            .config
            .get("validation_policies")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
            .unwrap_or_default();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let req = self.policy_request().await?;
        self.services.access.password_problems(&self.services.store, &names, req, candidate).await
    }
}

async fn policy_request(
    services: &FlowServices,
    state: &FlowState,
    req: &RequestInfo,
) -> Result<crate::policy::PolicyRequest> {
    let user_id = state.pending_user.or(req.session.as_ref().map(|s| s.user.id));
    let user = match user_id {
        Some(id) => services.store.get_user(id).await.map_err(store_err)?,
        None => None,
    };
    services.access.request(user.as_ref(), req.facts(), flow_context(state)).await
}

fn engine_mode(settings: &Value) -> EngineMode {
    settings.get("policy_engine_mode").and_then(Value::as_str).and_then(EngineMode::parse).unwrap_or_default()
}

/// What expressions see under `context` while a flow runs.
fn flow_context(state: &FlowState) -> Map<String, Value> {
    let mut context = Map::new();
    context.insert("flow".into(), json!(state.flow_slug));
    if let Some(app) = state.data.get(consent::APPLICATION) {
        context.insert("application".into(), app.clone());
    }
    if let Some(prompt) = state.data.get(prompt::PROMPT_DATA) {
        let mut visible = prompt.clone();
        // Passwords never reach expressions.
        if let Value::Object(m) = &mut visible {
            m.retain(|k, _| !k.contains("password"));
        }
        context.insert("prompt_data".into(), visible);
    }
    context
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

    /// Builds a fresh plan for `flow`: the flow's policies decide whether it runs at all, each
    /// stage binding's policies whether its stage is in the plan.
    async fn plan(&self, flow: &Flow, query: BTreeMap<String, String>, req: &RequestInfo) -> Result<Planned> {
        let next = match query.get("next") {
            Some(n) => match safe_next(n, &req.origin) {
                Some(next) => Some(next),
                // Forward auth: back to the protected app the login was started from.
                None => {
                    crate::proxy::protected_target(self.services.store.as_ref(), n.trim()).await?.map(|u| u.to_string())
                }
            },
            None => None,
        };
        let session_user = req.session.as_ref().map(|s| (s.user.id, s.user.username.clone()));
        let (pending_user, pending_login) = match flow.designation {
            FlowDesignation::Authentication | FlowDesignation::Enrollment | FlowDesignation::Recovery => (None, None),
            _ => session_user.map_or((None, None), |(id, name)| (Some(id), Some(name))),
        };
        let mut state = FlowState {
            flow_slug: flow.slug.clone(),
            flow_title: flow.title.clone(),
            designation: flow.designation,
            query,
            next,
            plan: Vec::new(),
            index: 0,
            pending_user,
            pending_login,
            amr: Vec::new(),
            data: Map::new(),
        };
        let application = match state.query.get("application") {
            Some(slug) => self.services.store.get_application_by_slug(slug).await.map_err(store_err)?,
            None => None,
        };
        if let Some(app) = &application {
            state.data.insert(consent::APPLICATION.into(), json!(app.slug));
            // The permissions (scopes) asked for, space-separated as OAuth writes them.
            if let Some(p) = state.query.get(consent::PERMISSIONS) {
                state.data.insert(consent::PERMISSIONS.into(), json!(p.split_whitespace().collect::<Vec<_>>()));
            }
            if state.query.get(consent::FORCE).is_some_and(|f| f == "true") {
                state.data.insert(consent::FORCE.into(), json!(true));
            }
        }
        let preq = policy_request(&self.services, &state, req).await?;
        let decision =
            self.services.access.check(BindingTarget::Flow(flow.id), engine_mode(&flow.settings), &preq).await?;
        if !decision.passing {
            return Ok(Planned::Denied(self.denied(flow, &state, decision.messages)));
        }
        if let (Some(app), Some(session)) = (&application, &req.session) {
            if let Some(user) = self.services.store.get_user(session.user.id).await.map_err(store_err)? {
                let decision = self.services.access.application(app, &user, req.facts()).await?;
                if !decision.passing {
                    let mut messages = decision.messages;
                    messages.insert(0, format!("You do not have access to {}.", app.name));
                    return Ok(Planned::Denied(denied(flow, &messages.join(" "))));
                }
            }
        }
        let resume = match state.query.get(email::LINK_PARAM) {
            Some(secret) => match self.services.tokens.find(TokenKind::FlowLink, secret).await? {
                Some(token) if token.description == flow.slug && token.user_id.is_some() => Some(token),
                _ => {
                    let message = format!(
                        "This link is invalid, expired or already used. Start again at /if/flow/{}/.",
                        flow.slug
                    );
                    return Ok(Planned::Denied(denied(flow, &message)));
                }
            },
            None => None,
        };
        for (binding, stage) in self.services.store.flow_bindings(flow.id).await.map_err(store_err)? {
            let on_plan = binding.settings.get("evaluate_on_plan").and_then(Value::as_bool).unwrap_or(true);
            if on_plan {
                let target = BindingTarget::StageBinding(binding.id);
                if !self.services.access.check(target, engine_mode(&binding.settings), &preq).await?.passing {
                    continue;
                }
            }
            state.plan.push(PlannedStage {
                binding_id: binding.id,
                stage_id: stage.id,
                name: stage.name,
                kind: stage.kind,
                config: stage.config,
                re_evaluate: binding.settings.get("re_evaluate_policies").and_then(Value::as_bool).unwrap_or(false),
                binding_settings: binding.settings,
            });
        }
        if let Some(token) = resume {
            // Opened from the mailed link: continue after the email stage, as its user.
            if let Some(user) =
                self.services.store.get_user(token.user_id.unwrap_or_default()).await.map_err(store_err)?
            {
                state.pending_login = Some(user.username.clone());
                state.pending_user = Some(user.id);
            }
            state.data.insert(email::LINK_USED.into(), json!(true));
            state.data.insert(email::CONSUME_TOKEN.into(), json!(token.id));
            state.index = state.plan.iter().position(|p| p.kind == "email").map_or(0, |i| i + 1);
        }
        Ok(Planned::Ready(Box::new(state)))
    }

    /// What a user whom the flow's policies refuse gets, by the flow's `denied_action`.
    fn denied(&self, flow: &Flow, state: &FlowState, messages: Vec<String>) -> FlowResponse {
        let action = flow.settings.get("denied_action").and_then(Value::as_str).unwrap_or("message");
        let to = state.next.clone().unwrap_or_else(|| default_target(flow.designation));
        match action {
            "continue" => {
                FlowResponse { challenge: Challenge::redirect(&to), effects: Effects::default(), malformed: false }
            }
            "message_continue" if state.next.is_some() => {
                FlowResponse { challenge: Challenge::redirect(&to), effects: Effects::default(), malformed: false }
            }
            _ => {
                let message = if messages.is_empty() {
                    "You are not allowed to use this flow.".to_string()
                } else {
                    messages.join(" ")
                };
                denied(flow, &message)
            }
        }
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
                match self.plan(&flow, query, req).await? {
                    Planned::Ready(state) => *state,
                    Planned::Denied(response) => return Ok(response),
                }
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
                match self.plan(&flow, BTreeMap::new(), req).await? {
                    Planned::Ready(state) => *state,
                    Planned::Denied(response) => return Ok(response),
                }
            }
        };
        let Value::Object(answer) = answer else {
            return Err(CoreError::invalid("the answer must be a JSON object"));
        };
        let mut effects = Effects::default();
        let step = match state.plan.get(state.index).cloned() {
            Some(planned) => Some(self.run_stage(&planned, &mut state, req, &mut effects, Some(&answer)).await?),
            None => None,
        };
        let mut response = self.advance(&key, state, req, step).await?;
        merge_effects(&mut response.effects, effects);
        Ok(response)
    }

    /// Runs the planned stage: its `submit` with an answer, else its `challenge`.
    async fn run_stage(
        &self,
        planned: &PlannedStage,
        state: &mut FlowState,
        request: &RequestInfo,
        effects: &mut Effects,
        answer: Option<&Map<String, Value>>,
    ) -> Result<Step> {
        let handler = self.require_handler(&planned.kind)?;
        let mut cx = StageCx { services: &self.services, state, config: &planned.config, request, effects };
        match answer {
            Some(answer) => handler.submit(&mut cx, answer).await,
            None => handler.challenge(&mut cx).await,
        }
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
                if let Some(id) =
                    state.data.get(email::CONSUME_TOKEN).and_then(|v| serde_json::from_value::<Uuid>(v.clone()).ok())
                {
                    // Used up only now that the flow completed: a prefetched link stays good.
                    if !self.services.store.consume_token(id, self.services.clock.now()).await.map_err(store_err)? {
                        let challenge = with_flow_info(Challenge::access_denied("This link was already used."), &state);
                        return Ok(FlowResponse { challenge, effects, malformed: false });
                    }
                }
                if let Some(value) = state.query.get(COMPLETION) {
                    let user = state.pending_user.or(req.session.as_ref().map(|s| s.user.id));
                    let receipt = FlowStateRecord {
                        key: completion_key(value),
                        data: json!({ "flow": state.flow_slug, "user": user, "application": state.data.get(consent::APPLICATION) }),
                        expires_at: self.services.clock.now() + Duration::minutes(5),
                    };
                    self.services.store.put_flow_state(&receipt).await.map_err(store_err)?;
                }
                let to = state.next.clone().unwrap_or_else(|| default_target(state.designation));
                return Ok(FlowResponse { challenge: Challenge::redirect(&to), effects, malformed: false });
            };
            let step = match pending.take() {
                Some(step) => step,
                None => {
                    if planned.re_evaluate {
                        let preq = policy_request(&self.services, &state, req).await?;
                        let target = BindingTarget::StageBinding(planned.binding_id);
                        let mode = engine_mode(&planned.binding_settings);
                        if !self.services.access.check(target, mode, &preq).await?.passing {
                            state.index += 1;
                            continue;
                        }
                    }
                    self.run_stage(&planned, &mut state, req, &mut effects, None).await?
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
                Step::Redirect(to) => {
                    self.services.store.delete_flow_state(key).await.map_err(store_err)?;
                    return Ok(FlowResponse { challenge: Challenge::redirect(&to), effects, malformed: false });
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
    into.retry_after = into.retry_after.or(from.retry_after);
    if from.remember_device.is_some() {
        into.remember_device = from.remember_device;
    }
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
