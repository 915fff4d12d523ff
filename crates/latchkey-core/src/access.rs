//! The one place that decides with policies: whether a user may use an application (asked
//! by forward auth, OIDC and the portal alike) and what a flow's bindings say.

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use std::sync::Arc;

use crate::clock::Clock;
use crate::error::{CoreError, Result};
use crate::groups::GroupIndex;
use crate::model::{Application, BindingSubject, BindingTarget, PolicyBinding, User};
use crate::policy::{
    Decision, EngineMode, Policies, PolicyEnv, PolicyRequest, PolicyUser, RequestFacts, ResolvedBinding,
};
use crate::reputation::ReputationBook;
use crate::store::Store;
use uuid::Uuid;

/// Fetches a Have I Been Pwned range (`SUFFIX:COUNT` lines) for a 5-character SHA-1 prefix.
/// The binary provides the HTTP client; the core makes no network calls of its own.
#[async_trait]
pub trait HibpFetch: Send + Sync {
    async fn range(&self, prefix: &str) -> Result<String, CoreError>;
}

/// What policies may look up outside the engine.
pub struct CorePolicyEnv {
    reputation: ReputationBook,
    hibp: Arc<std::sync::OnceLock<Arc<dyn HibpFetch>>>,
}

#[async_trait]
impl PolicyEnv for CorePolicyEnv {
    async fn hibp_range(&self, prefix: &str) -> Result<String, CoreError> {
        match self.hibp.get() {
            Some(fetch) => fetch.range(prefix).await,
            None => Err(CoreError::invalid("The breach check (Have I Been Pwned) is not available on this instance.")),
        }
    }

    async fn reputation(&self, key: &str) -> Result<i64, CoreError> {
        self.reputation.score(key).await
    }
}

#[derive(Clone)]
pub struct Access {
    pub policies: Policies,
    groups: GroupIndex,
    clock: Arc<dyn Clock>,
    env: Arc<dyn PolicyEnv>,
    hibp: Arc<std::sync::OnceLock<Arc<dyn HibpFetch>>>,
}

impl Access {
    pub fn new(policies: Policies, groups: GroupIndex, clock: Arc<dyn Clock>, reputation: ReputationBook) -> Self {
        let hibp = Arc::new(std::sync::OnceLock::new());
        let env = Arc::new(CorePolicyEnv { reputation, hibp: Arc::clone(&hibp) });
        Access { policies, groups, clock, env, hibp }
    }

    /// Installs the breach-check client (once, at start-up).
    pub fn set_hibp(&self, fetch: Arc<dyn HibpFetch>) {
        let _ = self.hibp.set(fetch);
    }

    pub fn env(&self) -> &dyn PolicyEnv {
        self.env.as_ref()
    }

    /// The policy view of a request by `user` (or an anonymous one).
    pub async fn request(
        &self,
        user: Option<&User>,
        facts: RequestFacts,
        context: Map<String, Value>,
    ) -> Result<PolicyRequest> {
        let user = match user {
            Some(u) => Some(PolicyUser::load(&self.groups, u).await?),
            None => None,
        };
        let mut req = PolicyRequest::new(user, self.clock.now());
        req.request = facts;
        req.context = context;
        Ok(req)
    }

    pub async fn check(&self, target: BindingTarget, mode: EngineMode, req: &PolicyRequest) -> Result<Decision> {
        self.policies.check(target, mode, req, self.env.as_ref()).await
    }

    /// Messages of the named password policies that `candidate` fails (empty when it passes).
    /// Missing policies are skipped with a warning: a typo must not lock everyone out.
    pub async fn password_problems(
        &self,
        store: &Arc<dyn Store>,
        policy_names: &[String],
        mut req: PolicyRequest,
        candidate: &str,
    ) -> Result<Vec<String>> {
        req.password = Some(candidate.to_string());
        let mut resolved = Vec::new();
        for name in policy_names {
            let Some(policy) = store.get_policy_by_name(name).await.map_err(CoreError::from_store)? else {
                tracing::warn!(policy = %name, "a password check names a policy that does not exist");
                continue;
            };
            let compiled = self.policies.compile(&policy)?;
            resolved.push(ResolvedBinding {
                binding: PolicyBinding {
                    id: policy.id,
                    target: BindingTarget::Flow(Uuid::nil()),
                    subject: BindingSubject::Policy(policy.id),
                    order: 0,
                    negate: false,
                    enabled: true,
                    timeout_ms: 1000,
                    failure_result: false,
                    created_at: policy.created_at,
                },
                policy: Some(compiled),
            });
        }
        let decision = crate::policy::evaluate(&resolved, EngineMode::All, &req, self.env.as_ref()).await;
        Ok(match (decision.passing, decision.messages.is_empty()) {
            (true, _) => Vec::new(),
            (false, true) => vec!["This password is not allowed.".into()],
            (false, false) => decision.messages,
        })
    }

    /// May `user` use `app`? An application without bindings is open to every logged-in user.
    pub async fn application(&self, app: &Application, user: &User, facts: RequestFacts) -> Result<Decision> {
        if !user.is_active {
            return Ok(Decision { passing: false, messages: vec!["This account is disabled.".into()] });
        }
        let policy_user = PolicyUser::load(&self.groups, user).await?;
        self.application_as(app, user, &policy_user, || facts).await
    }

    /// [`Access::application`] with the user's policy view already at hand (forward auth keeps
    /// it in memory, so its per-request check makes no store query). The request facts are
    /// only built when a binding will look at them.
    pub async fn application_as(
        &self,
        app: &Application,
        user: &User,
        policy_user: &PolicyUser,
        facts: impl FnOnce() -> RequestFacts,
    ) -> Result<Decision> {
        if !user.is_active {
            return Ok(Decision { passing: false, messages: vec!["This account is disabled.".into()] });
        }
        let target = BindingTarget::Application(app.id);
        let bindings = self.policies.bindings_for(target).await?;
        // An application without bindings lets every user in (as `evaluate` would decide).
        if !bindings.iter().any(|b| b.binding.enabled) {
            return Ok(Decision { passing: true, messages: Vec::new() });
        }
        let mut context = Map::new();
        context.insert("application".into(), json!(app.slug));
        let mut req = PolicyRequest::new(Some(policy_user.clone()), self.clock.now());
        req.request = facts();
        req.context = context;
        let mode = EngineMode::parse(&app.policy_engine_mode).unwrap_or_default();
        Ok(crate::policy::evaluate(&bindings, mode, &req, self.env.as_ref()).await)
    }

    /// The user's policy view (effective groups resolved through the store).
    pub async fn policy_user(&self, user: &User) -> Result<PolicyUser> {
        PolicyUser::load(&self.groups, user).await
    }

    /// May `user`, whose credentials were just verified, bind to the LDAP `provider`? As in
    /// authentik, a bind runs the provider's bind flow: the flow's policy bindings decide,
    /// then the access rules of the application that uses the provider (if one does).
    /// `bind_flow_id` is the provider's bind flow; without one the default authentication flow
    /// stands in, as it does in authentik.
    pub async fn ldap_bind(
        &self,
        store: &Arc<dyn Store>,
        provider_id: Uuid,
        bind_flow_id: Option<Uuid>,
        user: &User,
        facts: RequestFacts,
    ) -> Result<Decision> {
        if !user.is_active {
            return Ok(Decision { passing: false, messages: vec!["This account is disabled.".into()] });
        }
        let policy_user = PolicyUser::load(&self.groups, user).await?;
        let application = store
            .list_applications()
            .await
            .map_err(CoreError::from_store)?
            .into_iter()
            .find(|a| a.provider_id == Some(provider_id));
        let flows = store.list_flows().await.map_err(CoreError::from_store)?;
        let flow = match bind_flow_id {
            Some(id) => flows.into_iter().find(|f| f.id == id),
            None => flows.into_iter().find(|f| f.slug == crate::flow::LOGIN_FLOW),
        };
        if let Some(flow) = &flow {
            let mut context = Map::new();
            context.insert("flow".into(), json!(flow.slug));
            context.insert("protocol".into(), json!("ldap"));
            if let Some(app) = &application {
                context.insert("application".into(), json!(app.slug));
            }
            let mut req = PolicyRequest::new(Some(policy_user.clone()), self.clock.now());
            req.request = facts.clone();
            req.context = context;
            let mode = flow
                .settings
                .get("policy_engine_mode")
                .and_then(Value::as_str)
                .and_then(EngineMode::parse)
                .unwrap_or_default();
            let decision = self.check(BindingTarget::Flow(flow.id), mode, &req).await?;
            if !decision.passing {
                return Ok(decision);
            }
        }
        match &application {
            Some(app) => self.application_as(app, user, &policy_user, || facts).await,
            None => Ok(Decision { passing: true, messages: Vec::new() }),
        }
    }
}
