//! Audit events. Recording never fails the action that caused it: a store error is logged.

use serde_json::Value;
use std::sync::Arc;
use uuid::Uuid;

use crate::clock::Clock;
use crate::model::{Event, User};
use crate::store::Store;

/// Who did something and from where, as adapters know it.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// Username of who acted (an administrator using the API), recorded as `actor` in the
    /// event's context: `user` names whom the event is about.
    pub actor: Option<String>,
}

impl ClientInfo {
    /// The CLI acting on the local machine.
    pub fn cli() -> Self {
        ClientInfo { ip: None, user_agent: Some("latchkey-cli".into()), actor: None }
    }
}

#[derive(Clone)]
pub struct Events {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl Events {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Events { store, clock }
    }

    /// Records `action` about `user` (if any). `context` is free-form JSON.
    pub async fn record(&self, action: &str, user: Option<&User>, client: &ClientInfo, context: Value) {
        self.record_raw(action, user.map(|u| u.id), user.map(|u| u.username.clone()), client, context).await
    }

    pub async fn record_raw(
        &self,
        action: &str,
        user_id: Option<Uuid>,
        username: Option<String>,
        client: &ClientInfo,
        mut context: Value,
    ) {
        if let (Some(actor), Some(map)) = (&client.actor, context.as_object_mut()) {
            map.insert("actor".into(), Value::String(actor.clone()));
        }
        let event = Event {
            id: Uuid::now_v7(),
            created_at: self.clock.now(),
            action: action.to_string(),
            user_id,
            username,
            client_ip: client.ip.clone(),
            context,
        };
        tracing::info!(
            event.action = %event.action,
            user.name = event.username.as_deref().unwrap_or("-"),
            client.ip = event.client_ip.as_deref().unwrap_or("-"),
            "audit"
        );
        if let Err(e) = self.store.record_event(&event).await {
            tracing::error!(error = %e, action, "could not store audit event");
        }
    }
}
