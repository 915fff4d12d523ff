//! What every portal and admin page reads — the system settings, the applications and their
//! providers — kept in memory and dropped on any configuration change (from this process at
//! once, from others through the store's feed). A logged-in page then costs no store query,
//! and keeps answering from memory while the store is briefly away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use uuid::Uuid;

use crate::error::{CoreError, Result};
use crate::model::{Application, Change, Provider};
use crate::store::Store;
use crate::system_settings::{self, SystemSettings};

/// One consistent copy of the configuration the interfaces show.
#[derive(Debug)]
pub struct Snapshot {
    pub settings: SystemSettings,
    pub applications: Vec<Application>,
    pub providers: HashMap<Uuid, Provider>,
}

#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn Store>,
    cached: Arc<RwLock<Option<Arc<Snapshot>>>>,
    /// Bumped by every invalidation, so a load that raced one is not kept.
    generation: Arc<AtomicU64>,
}

impl Catalog {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Catalog { store, cached: Arc::new(RwLock::new(None)), generation: Arc::new(AtomicU64::new(0)) }
    }

    pub async fn snapshot(&self) -> Result<Arc<Snapshot>> {
        if let Some(s) = self.cached.read().ok().and_then(|c| c.clone()) {
            return Ok(s);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let settings = system_settings::read(self.store.as_ref()).await?;
        let applications = self.store.list_applications().await.map_err(CoreError::from_store)?;
        let providers = self.store.list_providers().await.map_err(CoreError::from_store)?;
        let snapshot = Arc::new(Snapshot {
            settings,
            applications,
            providers: providers.into_iter().map(|p| (p.id, p)).collect(),
        });
        if let Ok(mut slot) = self.cached.write() {
            if self.generation.load(Ordering::Acquire) == generation {
                *slot = Some(Arc::clone(&snapshot));
            }
        }
        Ok(snapshot)
    }

    pub fn apply_change(&self, change: &Change) {
        if *change == Change::Config {
            self.invalidate();
        }
    }

    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut slot) = self.cached.write() {
            *slot = None;
        }
    }
}
