//! A bounded set of recently seen keys, each trusted for a while: "this
//! user exists", "this user is not purged".

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

#[derive(Debug)]
pub struct Recent<K> {
    ttl: Duration,
    capacity: usize,
    seen: Mutex<HashMap<K, Instant>>,
}

impl<K: Eq + Hash> Recent<K> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            seen: Mutex::default(),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<K, Instant>> {
        self.seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Seen within the last `ttl`.
    pub fn contains(&self, key: &K) -> bool {
        self.seen()
            .get(key)
            .is_some_and(|at| at.elapsed() < self.ttl)
    }

    /// Seen now. When full, the stale keys go, and if none were, all.
    pub fn insert(&self, key: K) {
        let mut seen = self.seen();
        if seen.len() >= self.capacity {
            seen.retain(|_, at| at.elapsed() < self.ttl);
            if seen.len() >= self.capacity {
                seen.clear();
            }
        }
        seen.insert(key, Instant::now());
    }

    pub fn remove(&self, key: &K) {
        self.seen().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_trusted_for_their_time_and_the_set_stays_bounded() {
        let recent = Recent::new(Duration::from_secs(60), 2);
        recent.insert(1);
        recent.insert(2);
        assert!(recent.contains(&1) && recent.contains(&2));
        recent.insert(3);
        assert!(recent.contains(&3));
        assert!(
            !recent.contains(&1),
            "full of fresh keys: cleared before the insert"
        );
        recent.remove(&3);
        assert!(!recent.contains(&3));
        let expired = Recent::new(Duration::ZERO, 10);
        expired.insert(1);
        assert!(!expired.contains(&1));
    }
}
