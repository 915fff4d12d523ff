//! Brute-force throttling of password attempts, per account and per client address.
//! Counters live in memory: a restart forgives, which is an acceptable trade for never
//! touching the disk on the login path.

use moka::sync::Cache;
use std::time::Duration;

#[derive(Clone)]
pub struct Throttle {
    per_account: Cache<String, u32>,
    per_address: Cache<String, u32>,
    account_limit: u32,
    address_limit: u32,
}

impl Throttle {
    /// Failures are forgotten `window` after the last one.
    pub fn new(account_limit: u32, address_limit: u32, window: Duration) -> Self {
        let cache = || Cache::builder().max_capacity(100_000).time_to_idle(window).build();
        Throttle { per_account: cache(), per_address: cache(), account_limit, address_limit }
    }

    /// Keys by the login as typed (lower-cased), so unknown accounts throttle exactly like real ones.
    pub fn is_blocked(&self, login: &str, address: Option<&str>) -> bool {
        let account = self.per_account.get(&login.to_lowercase()).unwrap_or(0) >= self.account_limit;
        let addr = address.and_then(|a| self.per_address.get(a)).unwrap_or(0) >= self.address_limit;
        account || addr
    }

    pub fn failure(&self, login: &str, address: Option<&str>) {
        let key = login.to_lowercase();
        self.per_account.insert(key.clone(), self.per_account.get(&key).unwrap_or(0) + 1);
        if let Some(a) = address {
            self.per_address.insert(a.to_string(), self.per_address.get(a).unwrap_or(0) + 1);
        }
    }

    pub fn success(&self, login: &str) {
        self.per_account.invalidate(&login.to_lowercase());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_limit_and_success_resets_account() {
        let t = Throttle::new(3, 5, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(!t.is_blocked("Alice", Some("1.2.3.4")));
            t.failure("Alice", Some("1.2.3.4"));
        }
        assert!(t.is_blocked("alice", None));
        t.success("alice");
        assert!(!t.is_blocked("alice", Some("1.2.3.4")));
        t.failure("bob", Some("1.2.3.4"));
        t.failure("carol", Some("1.2.3.4"));
        assert!(t.is_blocked("dave", Some("1.2.3.4")));
        assert!(!t.is_blocked("dave", Some("5.6.7.8")));
    }
}
