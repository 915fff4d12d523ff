//! Reputation of usernames and client addresses: lowered by failed logins, raised by
//! successful ones, decaying back towards zero with time. Reputation policies read it.

use chrono::{DateTime, Utc};
use std::sync::Arc;

use crate::clock::Clock;
use crate::error::{CoreError, Result};
use crate::model::Reputation;
use crate::store::Store;

const MIN_SCORE: i64 = -100;
const MAX_SCORE: i64 = 100;
/// One point back towards zero per hour without news.
const DECAY_SECONDS_PER_POINT: i64 = 3600;

/// The score as it stands at `now`, after decay.
pub fn decayed(rep: &Reputation, now: DateTime<Utc>) -> i64 {
    let decay = ((now - rep.updated_at).num_seconds() / DECAY_SECONDS_PER_POINT).max(0);
    if rep.score > 0 {
        (rep.score - decay).max(0)
    } else {
        (rep.score + decay).min(0)
    }
}

#[derive(Clone)]
pub struct ReputationBook {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl ReputationBook {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        ReputationBook { store, clock }
    }

    async fn adjust(&self, key: &str, delta: i64) {
        if let Err(e) = self.store.adjust_reputation(key, delta, MIN_SCORE, MAX_SCORE, self.clock.now()).await {
            tracing::warn!(error = %e, key, "could not update reputation");
        }
    }

    /// Never fails the login it is about: reputation is advisory bookkeeping.
    pub async fn failure(&self, login: &str, ip: Option<&str>) {
        self.adjust(&format!("user:{}", login.trim().to_lowercase()), -1).await;
        if let Some(ip) = ip {
            self.adjust(&format!("ip:{ip}"), -1).await;
        }
    }

    pub async fn success(&self, login: &str, ip: Option<&str>) {
        self.adjust(&format!("user:{}", login.trim().to_lowercase()), 1).await;
        if let Some(ip) = ip {
            self.adjust(&format!("ip:{ip}"), 1).await;
        }
    }

    /// Current score of `key` (`user:<name>` or `ip:<address>`), 0 when unknown.
    pub async fn score(&self, key: &str) -> Result<i64> {
        let rep = self.store.get_reputation(key).await.map_err(CoreError::from_store)?;
        Ok(rep.map(|r| decayed(&r, self.clock.now())).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decays_towards_zero() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let bad = Reputation { key: "ip:x".into(), score: -5, updated_at: t0 };
        assert_eq!(decayed(&bad, t0), -5);
        assert_eq!(decayed(&bad, t0 + chrono::Duration::hours(2)), -3);
        assert_eq!(decayed(&bad, t0 + chrono::Duration::hours(20)), 0);
        let good = Reputation { score: 3, ..bad };
        assert_eq!(decayed(&good, t0 + chrono::Duration::hours(1)), 2);
    }
}
