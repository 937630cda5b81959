//! State that outlives a config snapshot: the counters of a limit, a connection to Redis.
//!
//! A reload compiles every policy again; a policy whose name and settings did not change
//! must keep its state, or each reload would hand every client a fresh budget (and open new
//! connections). Policies look their state up here by identity; the registry holds weak
//! references, so state goes away with the last snapshot that uses it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

/// One registry per kind of state.
pub struct Registry<T> {
    entries: Mutex<BTreeMap<String, Weak<T>>>,
}

impl<T> Registry<T> {
    pub const fn new() -> Registry<T> {
        Registry {
            entries: Mutex::new(BTreeMap::new()),
        }
    }

    /// The live state for `identity`, or a new one made by `make`.
    pub fn shared(&self, identity: String, make: impl FnOnce() -> T) -> Arc<T> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.retain(|_, entry| entry.strong_count() > 0);
        if let Some(live) = entries.get(&identity).and_then(Weak::upgrade) {
            return live;
        }
        let state = Arc::new(make());
        entries.insert(identity, Arc::downgrade(&state));
        state
    }

    /// Every live state.
    pub fn live(&self) -> Vec<Arc<T>> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.values().filter_map(Weak::upgrade).collect()
    }
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_identity_shares_state_while_it_lives() {
        let registry: Registry<u32> = Registry::new();
        let first = registry.shared("a".into(), || 1);
        let again = registry.shared("a".into(), || 2);
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(*registry.shared("b".into(), || 3), 3);
        drop((first, again));
        assert_eq!(*registry.shared("a".into(), || 4), 4);
    }
}
