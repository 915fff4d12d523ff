//! The group tree in memory: nesting is resolved here, from one cached copy of all groups,
//! so effective membership never costs more than one store query (direct memberships).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use uuid::Uuid;

use crate::error::StoreResult;
use crate::model::Group;
use crate::store::Store;

#[derive(Clone)]
pub struct GroupIndex {
    store: Arc<dyn Store>,
    cached: Arc<RwLock<Option<Arc<Tree>>>>,
}

/// A snapshot of every group, indexed by id.
#[derive(Debug, Default)]
pub struct Tree {
    pub by_id: HashMap<Uuid, Group>,
}

impl Tree {
    /// The groups themselves and all their ancestors, without duplicates, in a stable order.
    pub fn with_ancestors(&self, direct: &[Uuid]) -> Vec<&Group> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for id in direct {
            let mut cursor = Some(*id);
            // Cycles are refused on write; the `seen` check also stops a corrupt loop.
            while let Some(id) = cursor {
                if !seen.insert(id) {
                    break;
                }
                match self.by_id.get(&id) {
                    Some(g) => {
                        out.push(g);
                        cursor = g.parent_id;
                    }
                    None => break,
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Would making `parent` the parent of `child` close a loop?
    pub fn would_cycle(&self, child: Uuid, parent: Uuid) -> bool {
        let mut cursor = Some(parent);
        let mut steps = 0;
        while let Some(id) = cursor {
            if id == child || steps > self.by_id.len() {
                return true;
            }
            steps += 1;
            cursor = self.by_id.get(&id).and_then(|g| g.parent_id);
        }
        false
    }
}

impl GroupIndex {
    pub fn new(store: Arc<dyn Store>) -> Self {
        GroupIndex { store, cached: Arc::new(RwLock::new(None)) }
    }

    pub async fn tree(&self) -> StoreResult<Arc<Tree>> {
        if let Some(t) = self.cached.read().ok().and_then(|g| g.clone()) {
            return Ok(t);
        }
        let groups = self.store.all_groups().await?;
        let tree = Arc::new(Tree { by_id: groups.into_iter().map(|g| (g.id, g)).collect() });
        if let Ok(mut slot) = self.cached.write() {
            *slot = Some(Arc::clone(&tree));
        }
        Ok(tree)
    }

    pub fn invalidate(&self) {
        if let Ok(mut slot) = self.cached.write() {
            *slot = None;
        }
    }

    /// Effective groups of a user: direct memberships and every ancestor of them.
    pub async fn effective_groups(&self, user_id: Uuid) -> StoreResult<Vec<Group>> {
        let direct = self.store.direct_group_ids(user_id).await?;
        let tree = self.tree().await?;
        Ok(tree.with_ancestors(&direct).into_iter().cloned().collect())
    }
}
