//! The policy service: loads bindings and policies from the store and keeps them compiled in
//! memory, so a check on the hot path (forward auth, portal) never touches the store.

use moka::sync::Cache;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use uuid::Uuid;

use super::compiled::CompiledPolicy;
use super::expression::{CelVars, Expression};
use super::{evaluate, Decision, EngineMode, PolicyEnv, PolicyRequest, ResolvedBinding};
use crate::error::{CoreError, Result};
use crate::model::{BindingSubject, BindingTarget, Policy};
use crate::store::Store;

/// Bounds staleness if a change signal is ever missed (as the session cache does).
const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Clone)]
pub struct Policies {
    store: Arc<dyn Store>,
    /// Keyed by policy id; the stored policy is kept to tell whether it changed since compiling.
    compiled: Cache<Uuid, Arc<(Policy, Arc<CompiledPolicy>)>>,
    bindings: Cache<BindingTarget, Arc<[ResolvedBinding]>>,
    /// Bumped by `invalidate`; a load that started before it does not fill the cache.
    generation: Arc<AtomicU64>,
}

impl Policies {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Policies {
            store,
            compiled: Cache::builder().max_capacity(10_000).time_to_live(CACHE_TTL).build(),
            bindings: Cache::builder().max_capacity(10_000).time_to_live(CACHE_TTL).build(),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Compiles `policy`, reusing the cached compilation while the policy is unchanged.
    pub fn compile(&self, policy: &Policy) -> Result<Arc<CompiledPolicy>> {
        if let Some(hit) = self.compiled.get(&policy.id) {
            if hit.0 == *policy {
                return Ok(Arc::clone(&hit.1));
            }
        }
        let generation = self.generation.load(Ordering::Acquire);
        let compiled = Arc::new(CompiledPolicy::compile(policy)?);
        if self.generation.load(Ordering::Acquire) == generation {
            self.compiled.insert(policy.id, Arc::new((policy.clone(), Arc::clone(&compiled))));
        }
        Ok(compiled)
    }

    /// Save-time check of a policy's kind and config; errors are `Invalid` naming the field
    /// (and, for expressions, the line and column of the error).
    pub fn validate(&self, kind: &str, config: &Value) -> Result<()> {
        CompiledPolicy::validate(kind, config)
    }

    /// The target's bindings in order, with their policies compiled. A policy that is missing or
    /// no longer compiles is logged and left `None`, which fails closed on evaluation.
    pub async fn bindings_for(&self, target: BindingTarget) -> Result<Arc<[ResolvedBinding]>> {
        if let Some(hit) = self.bindings.get(&target) {
            return Ok(hit);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let bindings = self.store.policy_bindings(target).await.map_err(CoreError::from_store)?;
        let mut resolved = Vec::with_capacity(bindings.len());
        for binding in bindings {
            let policy = match binding.subject {
                BindingSubject::Policy(id) => self.load_policy(id).await?,
                BindingSubject::User(_) | BindingSubject::Group(_) => None,
            };
            resolved.push(ResolvedBinding { binding, policy });
        }
        let resolved: Arc<[ResolvedBinding]> = resolved.into();
        if self.generation.load(Ordering::Acquire) == generation {
            self.bindings.insert(target, Arc::clone(&resolved));
        }
        Ok(resolved)
    }

    async fn load_policy(&self, id: Uuid) -> Result<Option<Arc<CompiledPolicy>>> {
        let Some(policy) = self.store.get_policy(id).await.map_err(CoreError::from_store)? else {
            tracing::warn!(policy = %id, "a binding names a policy that does not exist");
            return Ok(None);
        };
        match self.compile(&policy) {
            Ok(compiled) => Ok(Some(compiled)),
            Err(e) => {
                tracing::warn!(policy = %policy.name, error = %e, "stored policy does not compile");
                Ok(None)
            }
        }
    }

    /// Evaluates the target's bindings for `req`.
    pub async fn check(
        &self,
        target: BindingTarget,
        mode: EngineMode,
        req: &PolicyRequest,
        env: &dyn PolicyEnv,
    ) -> Result<Decision> {
        let bindings = self.bindings_for(target).await?;
        Ok(evaluate(&bindings, mode, req, env).await)
    }

    /// Forgets every cached binding and compiled policy; call on `Change::Config`.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.bindings.invalidate_all();
        self.compiled.invalidate_all();
    }
}

/// Evaluates one expression for `req` (`latchkey policy test`). Compile errors, runtime errors
/// and non-bool results are all `Invalid`, with the message.
pub async fn test_expression(expr: &str, req: &PolicyRequest) -> Result<bool, CoreError> {
    let compiled = Expression::compile(expr)?;
    compiled
        .evaluate(&CelVars::new(req))
        .map_err(|e| CoreError::invalid_field("expression", format!("The expression failed: {e}")))
}
