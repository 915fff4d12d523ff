//! Brute-force throttling of password attempts, per account and per client address.
//!
//! Throttle, never lock: an attacker must not be able to shut the admin out. An account gets
//! exponential back-off after a few failures; an address gets a larger budget, so that one
//! attacked account does not lock out everyone behind the same home router. State lives in
//! the store so every instance (and `latchkey throttle clear`) sees the same counters.

use chrono::{DateTime, Duration, Utc};
use std::sync::Arc;

use crate::clock::Clock;
use crate::error::{CoreError, Result};
use crate::model::ThrottleRecord;
use crate::store::Store;

/// How failures turn into waiting.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleLimits {
    /// Failures are counted in windows of this length.
    pub window: Duration,
    /// Failures of one account in a window before back-off starts.
    pub account_failures: i64,
    /// First back-off; doubles with every further failure.
    pub account_base_delay: Duration,
    pub account_max_delay: Duration,
    /// Failures from one address in a window before it is blocked for `address_block`.
    pub address_failures: i64,
    pub address_block: Duration,
}

impl Default for ThrottleLimits {
    fn default() -> Self {
        ThrottleLimits {
            window: Duration::minutes(5),
            account_failures: 5,
            account_base_delay: Duration::seconds(15),
            account_max_delay: Duration::minutes(15),
            address_failures: 50,
            address_block: Duration::minutes(5),
        }
    }
}

pub fn account_key(login: &str) -> String {
    format!("user:{}", login.trim().to_lowercase())
}

pub fn address_key(ip: &str) -> String {
    format!("ip:{ip}")
}

/// How long `record` still blocks at `now`, if at all.
pub fn blocked_for(record: Option<&ThrottleRecord>, now: DateTime<Utc>) -> Option<Duration> {
    let until = record?.blocked_until?;
    (until > now).then(|| until - now)
}

/// The record after one more failure at `now`. `threshold` failures in a window start blocking;
/// `delay(n)` is the block after the n-th failure past the threshold (n ≥ 0).
pub fn record_failure(
    record: Option<ThrottleRecord>,
    key: &str,
    now: DateTime<Utc>,
    window: Duration,
    threshold: i64,
    delay: impl Fn(i64) -> Duration,
) -> ThrottleRecord {
    let mut r = match record {
        // A window that ended without an active block starts over.
        Some(r) if now - r.window_start <= window || blocked_for(Some(&r), now).is_some() => r,
        _ => ThrottleRecord {
            key: key.to_string(),
            failures: 0,
            window_start: now,
            last_failure: now,
            blocked_until: None,
        },
    };
    r.failures += 1;
    r.last_failure = now;
    if r.failures >= threshold {
        r.blocked_until = Some(now + delay(r.failures - threshold));
    }
    r
}

#[derive(Clone)]
pub struct Throttle {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    limits: ThrottleLimits,
}

/// Seconds to wait, rounded up so that a client retrying after them is not refused again.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let ms = wait.num_milliseconds().max(0) as u64;
    ms.div_ceil(1000).max(1)
}

impl Throttle {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, limits: ThrottleLimits) -> Self {
        Throttle { store, clock, limits }
    }

    async fn get(&self, key: &str) -> Result<Option<ThrottleRecord>> {
        self.store.get_throttle(key).await.map_err(CoreError::from_store)
    }

    /// How long this login from this address must wait before it may try again, if at all.
    pub async fn check(&self, login: &str, ip: Option<&str>) -> Result<Option<Duration>> {
        let now = self.clock.now();
        let mut wait = blocked_for(self.get(&account_key(login)).await?.as_ref(), now);
        if let Some(ip) = ip {
            if let Some(w) = blocked_for(self.get(&address_key(ip)).await?.as_ref(), now) {
                wait = Some(wait.map_or(w, |a| a.max(w)));
            }
        }
        Ok(wait)
    }

    /// Counts a failed attempt; returns the new block if this failure started or extended one.
    pub async fn failure(&self, login: &str, ip: Option<&str>) -> Result<Option<Duration>> {
        let now = self.clock.now();
        let l = self.limits;
        let key = account_key(login);
        let account = record_failure(self.get(&key).await?, &key, now, l.window, l.account_failures, |n| {
            let factor = 1i64 << n.clamp(0, 20);
            (l.account_base_delay * factor as i32).min(l.account_max_delay)
        });
        self.store.put_throttle(&account).await.map_err(CoreError::from_store)?;
        let mut wait = blocked_for(Some(&account), now);
        if let Some(ip) = ip {
            let key = address_key(ip);
            let address =
                record_failure(self.get(&key).await?, &key, now, l.window, l.address_failures, |_| l.address_block);
            self.store.put_throttle(&address).await.map_err(CoreError::from_store)?;
            if let Some(w) = blocked_for(Some(&address), now) {
                wait = Some(wait.map_or(w, |a| a.max(w)));
            }
        }
        Ok(wait)
    }

    /// A successful login forgives the account (not the address).
    pub async fn success(&self, login: &str) -> Result<()> {
        self.store.delete_throttle(&account_key(login)).await.map(|_| ()).map_err(CoreError::from_store)
    }

    /// For admins: lift a block (`user:<login>` or `ip:<address>`).
    pub async fn clear(&self, key: &str) -> Result<bool> {
        self.store.delete_throttle(key).await.map_err(CoreError::from_store)
    }

    pub async fn list(&self) -> Result<Vec<ThrottleRecord>> {
        self.store.list_throttles(self.clock.now()).await.map_err(CoreError::from_store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
    }

    fn account(record: Option<ThrottleRecord>, now: DateTime<Utc>) -> ThrottleRecord {
        let l = ThrottleLimits::default();
        record_failure(record, "user:alice", now, l.window, l.account_failures, |n| {
            (l.account_base_delay * (1i32 << n)).min(l.account_max_delay)
        })
    }

    #[test]
    fn account_backoff_engages_doubles_and_releases() {
        let mut r = None;
        for i in 0..4 {
            let next = account(r, t(i));
            assert_eq!(blocked_for(Some(&next), t(i)), None, "no block before the 5th failure");
            r = Some(next);
        }
        let fifth = account(r, t(4));
        assert_eq!(blocked_for(Some(&fifth), t(4)), Some(Duration::seconds(15)));
        // Released by time alone.
        assert_eq!(blocked_for(Some(&fifth), t(19)), None);
        let sixth = account(Some(fifth), t(20));
        assert_eq!(blocked_for(Some(&sixth), t(20)), Some(Duration::seconds(30)));
        let mut r = sixth;
        for i in 0..20 {
            r = account(Some(r), t(100 + i));
        }
        assert_eq!(blocked_for(Some(&r), t(119)), Some(Duration::minutes(15)), "capped");
    }

    #[test]
    fn a_quiet_window_starts_over() {
        let mut r = None;
        for i in 0..4 {
            r = Some(account(r, t(i)));
        }
        let later = account(r, t(4 + 301));
        assert_eq!(later.failures, 1);
        assert_eq!(blocked_for(Some(&later), t(305)), None);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::milliseconds(1)), 1);
        assert_eq!(retry_after_secs(Duration::milliseconds(15_001)), 16);
        assert_eq!(retry_after_secs(Duration::seconds(15)), 15);
    }
}
