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
        let Some(claims) = self.remember_key.unseal(cookie).and_then(RememberClaims::parse) else {
            return Ok(false);
        };
        if claims.user_id != user.id || claims.password_binding != Self::password_binding(user) {
            return Ok(false);
        }
        if claims.expires <= self.now().timestamp() {
            return Ok(false);
        }
        Ok(claims.epoch == self.signout_epoch(user.id).await?)
    }
}

/// What a remembered-browser cookie says (after its signature was checked).
#[derive(Debug, PartialEq, Eq)]
struct RememberClaims {
    user_id: Uuid,
    expires: i64,
    epoch: i64,
    password_binding: String,
}

impl RememberClaims {
    fn parse(value: &str) -> Option<Self> {
        let parts: Vec<&str> = value.split(':').collect();
        let [VERSION, user_id, expires, epoch, binding] = parts[..] else {
            return None;
        };
        Some(RememberClaims {
            user_id: user_id.parse().ok()?,
            expires: expires.parse().ok()?,
            epoch: epoch.parse().ok()?,
            password_binding: binding.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;

    #[test]
    fn claims_parse_only_what_was_issued() {
        let id = Uuid::now_v7();
        let value = format!("{VERSION}:{id}:1900000000:42:0011223344556677");
        let claims = RememberClaims::parse(&value).unwrap();
        assert_eq!(claims.user_id, id);
        assert_eq!((claims.expires, claims.epoch), (1_900_000_000, 42));
        assert_eq!(claims.password_binding, "0011223344556677");
        assert!(RememberClaims::parse(&value.replacen(VERSION, "r0", 1)).is_none(), "other versions");
        assert!(RememberClaims::parse(&format!("{value}:extra")).is_none());
        assert!(RememberClaims::parse(&format!("{VERSION}:not-a-uuid:1:2:x")).is_none());
    }

    #[test]
    fn the_signature_covers_every_claim() {
        let key = Keys::derive(b"test master secret").encryption.subkey(b"latchkey/v1/remember-browser");
        let id = Uuid::now_v7();
        let sealed = key.seal(&format!("{VERSION}:{id}:1900000000:0:00"));
        assert!(key.unseal(&sealed).and_then(RememberClaims::parse).is_some());
        // A longer expiry or another epoch under the old signature is refused.
        let (_, sig) = sealed.rsplit_once('.').unwrap();
        let forged = format!("{VERSION}:{id}:2900000000:0:00.{sig}");
        assert!(key.unseal(&forged).is_none());
        // A key for another purpose does not verify it.
        let other = Keys::derive(b"test master secret").encryption.subkey(b"latchkey/v1/other");
        assert!(other.unseal(&sealed).is_none());
    }
}
