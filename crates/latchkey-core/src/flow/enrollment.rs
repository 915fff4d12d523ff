//! `invitation`: the first stage of enrollment. It admits people holding an invitation link
//! (and, when self-registration is on, anyone), and leaves for later stages what the
//! invitation decides: a fixed email, groups to join, whether approval is needed.

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::{StageCx, StageHandler, Step};
use crate::error::{CoreError, Result};
use crate::keys::hash_secret;

/// The query parameter carrying the invitation secret.
pub const INVITATION_PARAM: &str = "itoken";
/// Flow-state keys read by prompt, user_write and the executor.
pub const CHECKED: &str = "invitation_checked";
pub const INVITATION_ID: &str = "invitation_id";
pub const GROUPS: &str = "invitation_groups";
pub const FIXED_EMAIL: &str = "fixed_email";
pub const ALLOWED_DOMAINS: &str = "allowed_email_domains";
pub const REQUIRE_APPROVAL: &str = "require_approval";
pub const VERIFY_EMAIL: &str = "verify_email";
/// Prompt fields are prefilled from this map.
pub const PROMPT_INITIAL: &str = "prompt_initial";

pub struct InvitationStage;

#[async_trait]
impl StageHandler for InvitationStage {
    fn kind(&self) -> &'static str {
        "invitation"
    }

    async fn challenge(&self, cx: &mut StageCx<'_>) -> Result<Step> {
        if cx.state.data.get(CHECKED).and_then(Value::as_bool).unwrap_or(false) {
            return Ok(Step::Next);
        }
        let flag = |k: &str| cx.config.get(k).and_then(Value::as_bool).unwrap_or(false);
        let (allow_open, approval, verify) =
            (flag("allow_without_invitation"), flag("require_approval"), flag("verify_email"));
        let domains = cx.config.get("email_domains").cloned().unwrap_or_else(|| json!([]));
        let data = &mut cx.state.data;
        match cx.state.query.get(INVITATION_PARAM) {
            Some(secret) => {
                let now = cx.services.clock.now();
                let found = cx
                    .services
                    .store
                    .find_invitation(&hash_secret(secret), now)
                    .await
                    .map_err(CoreError::from_store)?;
                let Some(inv) = found.filter(|i| i.flow_slug == cx.state.flow_slug) else {
                    return Ok(Step::Deny("This invitation is invalid, expired or used up. Ask for a new one.".into()));
                };
                data.insert(INVITATION_ID.into(), json!(inv.id));
                data.insert(GROUPS.into(), json!(inv.groups));
                if let Some(email) = inv.fixed_email {
                    data.insert(FIXED_EMAIL.into(), json!(email));
                    data.insert(PROMPT_INITIAL.into(), json!({ "email": email }));
                }
            }
            None if allow_open => {
                data.insert(ALLOWED_DOMAINS.into(), domains);
                data.insert(REQUIRE_APPROVAL.into(), json!(approval));
            }
            None => return Ok(Step::Deny("Signing up needs an invitation. Ask an administrator for a link.".into())),
        }
        data.insert(VERIFY_EMAIL.into(), json!(verify));
        data.insert(CHECKED.into(), json!(true));
        Ok(Step::Next)
    }

    async fn submit(&self, cx: &mut StageCx<'_>, _answer: &Map<String, Value>) -> Result<Step> {
        self.challenge(cx).await
    }
}

/// Whether self-registration may use `email` (an empty allow-list allows every domain).
pub fn email_domain_allowed(data: &Map<String, Value>, email: &str) -> bool {
    let Some(list) = data.get(ALLOWED_DOMAINS).and_then(Value::as_array).filter(|l| !l.is_empty()) else {
        return true;
    };
    let domain = email.rsplit_once('@').map(|(_, d)| d.to_lowercase()).unwrap_or_default();
    list.iter().filter_map(Value::as_str).any(|d| d.eq_ignore_ascii_case(&domain))
}
