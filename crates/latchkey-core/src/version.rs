//! Optimistic concurrency for edits: an edit form or API client carries the version of
//! the object it started from, and a save against a changed object is refused (409)
//! instead of silently overwriting someone else's change. The version is a digest of the
//! object's visible fields, so no schema column is needed for it.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{CoreError, Result};

/// Fields that change on their own (a login) and must not make an admin's edit stale.
const VOLATILE: &[&str] = &["last_login"];

/// A short digest of `value`'s serialized fields, usable as an HTTP `ETag`.
pub fn version_of<T: Serialize>(value: &T) -> String {
    let mut json = serde_json::to_value(value).unwrap_or_default();
    if let Some(map) = json.as_object_mut() {
        for key in VOLATILE {
            map.remove(*key);
        }
    }
    // serde_json's map is ordered by key, so equal objects give equal bytes.
    let digest = Sha256::digest(json.to_string().as_bytes());
    hex::encode(&digest[..8])
}

/// Refuses the save when the caller's `expected` version is not the current one.
/// No version given means the caller does not ask for the check (a CLI, a blueprint).
pub fn check_version<T: Serialize>(current: &T, expected: Option<&str>) -> Result<()> {
    match expected.map(|v| v.trim().trim_matches('"')) {
        Some(v) if !v.is_empty() && v != version_of(current) => Err(CoreError::Conflict(
            "This object was changed by someone else in the meantime; reload it and try again.".into(),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn same_fields_same_version_and_volatile_fields_ignored() {
        let a = json!({"name": "alice", "last_login": "2026-01-01"});
        let b = json!({"last_login": "2026-02-02", "name": "alice"});
        assert_eq!(version_of(&a), version_of(&b));
        assert_ne!(version_of(&a), version_of(&json!({"name": "bob"})));
    }

    #[test]
    fn stale_version_is_a_conflict() {
        let current = json!({"name": "alice"});
        assert!(check_version(&current, None).is_ok());
        assert!(check_version(&current, Some(&version_of(&current))).is_ok());
        let quoted = format!("\"{}\"", version_of(&current));
        assert!(check_version(&current, Some(&quoted)).is_ok());
        assert!(matches!(check_version(&current, Some("0000")), Err(CoreError::Conflict(_))));
    }
}
