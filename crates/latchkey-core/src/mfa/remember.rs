//! "Remember this browser": after a second factor, a signed cookie lets the same user skip
//! the second factor on that browser for some days. The cookie is bound to the user, to their
//! sign-out epoch (moved by "sign out everywhere", a password change or disabling the account)
//! and to their current password hash, so any of those voids it.

use chrono::Duration;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Mfa;
use crate::error::{CoreError, Result};
use crate::model::User;
use crate::sessions::signout_epoch_key;

/// The cookie that carries the remembered-browser token.
pub const REMEMBER_COOKIE: &str = "latchkey_mfa_remember";
const VERSION: &str = "r1";

impl Mfa {
    async fn signout_epoch(&self, user_id: Uuid) -> Result<i64> {
        let value = self.store.get_setting(&signout_epoch_key(user_id)).await.map_err(CoreError::from_store)?;
        Ok(value.as_ref().and_then(Value::as_i64).unwrap_or(0))
    }

    /// A short fingerprint of the password hash: a new password voids remembered browsers.
    fn password_binding(user: &User) -> String {
        let hash = user.password_hash.as_deref().unwrap_or("");
        hex::encode(&Sha256::digest(hash.as_bytes())[..8])
    }

    /// The signed cookie value remembering this browser for `user` for `days` days.
    pub async fn remember_browser(&self, user: &User, days: i64) -> Result<String> {
        let expires = (self.now() + Duration::days(days)).timestamp();
        let epoch = self.signout_epoch(user.id).await?;
        let value = format!("{VERSION}:{}:{expires}:{epoch}:{}", user.id, Self::password_binding(user));
        Ok(self.remember_key.seal(&value))
    }

    /// Whether `cookie` remembers this browser for `user`: genuine, unexpired, and issued
    /// since the user's last sign-out everywhere and password change.
    pub async fn is_remembered(&self, user: &User, cookie: &str) -> Result<bool> {
        let Some(value) = self.remember_key.unseal(cookie) else {
            return Ok(false);
        };
        let parts: Vec<&str> = value.split(':').collect();
        let [VERSION, user_id, expires, epoch, binding] = parts[..] else {
            return Ok(false);
        };
        if user_id != user.id.to_string() || binding != Self::password_binding(user) {
            return Ok(false);
        }
        let (Ok(expires), Ok(epoch)) = (expires.parse::<i64>(), epoch.parse::<i64>()) else {
            return Ok(false);
        };
        if expires <= self.now().timestamp() {
            return Ok(false);
        }
        Ok(epoch == self.signout_epoch(user.id).await?)
    }
}
