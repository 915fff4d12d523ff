//! What every handler shares.

use ipnet::IpNet;
use latchkey_core::Core;
use std::path::PathBuf;
use std::sync::Arc;
use url::Url;

use crate::error::{WebError, WebResult};
use crate::templates::Templates;

/// Settings of the HTTP layer, from the binary's configuration.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Public base URL; when unset it is derived from each request.
    pub external_url: Option<Url>,
    /// Peers whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Folder whose templates override the embedded ones.
    pub template_dir: Option<PathBuf>,
    /// The `avatars` setting (`none`, `initials`, `gravatar`); the admin's choice overrides it.
    pub avatars: String,
}

/// What every handler shares, behind one `Arc`: extracting the state clones it for every
/// request, and one reference count touched by every worker thread is cheaper than four.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub core: Arc<Core>,
    pub config: Arc<WebConfig>,
    pub templates: Arc<Templates>,
    /// Prepared forward-auth identity answers.
    pub identities: crate::outpost::IdentityCache,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(core: Arc<Core>, config: WebConfig) -> Self {
        let templates = Arc::new(Templates::new(config.template_dir.clone()));
        AppState(Arc::new(Shared { core, config: Arc::new(config), templates, identities: Default::default() }))
    }
}

impl AppState {
    /// Renders a page template; a failure is logged with its details and answered with a 500.
    pub fn render(&self, name: &str, ctx: minijinja::Value) -> WebResult<String> {
        self.templates.render(name, ctx).map_err(|e| {
            tracing::error!(template = name, error = format!("{e:#}"), "template failed");
            WebError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", "The page could not be rendered.")
        })
    }
}
