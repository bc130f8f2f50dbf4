//! The UniFFI surface: [`FieldClient`], a thin object over [`Tablet`] for
//! Kotlin, Swift and Python. No logic lives here; every method forwards.
//!
//! Every method blocks its calling thread while it works (sync and login
//! talk to the server): call them from a background thread or coroutine.
// UniFFI's scaffolding is `extern "C"` code.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::Result;
use crate::tablet::Tablet;
use crate::types::*;

/// A tablet's store and sync client.
#[derive(Debug, uniffi::Object)]
pub struct FieldClient {
    tablet: Tablet,
}

/// The default settings (fill in a passphrase for an encrypted store).
#[uniffi::export]
pub fn default_tablet_config() -> TabletConfig {
    TabletConfig::default()
}

#[uniffi::export]
impl FieldClient {
    /// Opens (creating if needed) the store in the folder `dir`.
    #[uniffi::constructor]
    pub fn open(dir: String, config: TabletConfig) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            tablet: Tablet::open(&PathBuf::from(dir), config)?,
        }))
    }

    pub fn device_id(&self) -> String {
        self.tablet.device_id()
    }

    pub fn session(&self) -> Result<SessionInfo> {
        self.tablet.session()
    }

    pub fn login(
        &self,
        server_url: String,
        username: String,
        password: String,
    ) -> Result<SessionInfo> {
        self.tablet.login(&server_url, &username, &password)
    }

    pub fn logout(&self) -> Result<SessionInfo> {
        self.tablet.logout()
    }

    pub fn assignments(&self) -> Result<Vec<Assignment>> {
        self.tablet.assignments()
    }

    pub fn inspection(&self, inspection: String) -> Result<InspectionDetail> {
        self.tablet.inspection(&inspection)
    }

    pub fn answer(
        &self,
        inspection: String,
        item_id: String,
        value: String,
        fields: HashMap<String, String>,
        note: Option<String>,
    ) -> Result<AnswerView> {
        self.tablet
            .answer(&inspection, &item_id, &value, fields, note)
    }

    pub fn add_finding(&self, inspection: String, finding: NewFinding) -> Result<String> {
        self.tablet.add_finding(&inspection, finding)
    }

    pub fn edit_finding(
        &self,
        inspection: String,
        finding_id: String,
        edit: FindingEdit,
    ) -> Result<()> {
        self.tablet.edit_finding(&inspection, &finding_id, edit)
    }

    pub fn add_photo(
        &self,
        inspection: String,
        file: String,
        target: PhotoTarget,
    ) -> Result<AddedPhoto> {
        self.tablet
            .add_photo(&inspection, &PathBuf::from(file), target)
    }

    pub fn conflicts(&self, inspection: Option<String>) -> Result<Vec<ConflictView>> {
        self.tablet.conflicts(inspection.as_deref())
    }

    pub fn settle(
        &self,
        inspection: String,
        item_id: String,
        value: String,
        fields: HashMap<String, String>,
        note: Option<String>,
    ) -> Result<AnswerView> {
        self.tablet
            .settle(&inspection, &item_id, &value, fields, note)
    }

    pub fn submit(&self, inspection: String, note: Option<String>) -> Result<String> {
        self.tablet.submit(&inspection, note)
    }

    pub fn review(&self, inspection: String) -> Result<ReviewView> {
        self.tablet.review(&inspection)
    }

    pub fn actions(&self) -> Result<Vec<ActionView>> {
        self.tablet.actions()
    }

    pub fn sync_now(&self, listener: Option<Arc<dyn SyncListener>>) -> Result<SyncReport> {
        self.tablet.sync_now(listener)
    }

    pub fn start_background_sync(
        &self,
        interval_ms: u64,
        listener: Option<Arc<dyn SyncListener>>,
    ) -> Result<()> {
        self.tablet.start_background_sync(interval_ms, listener)
    }

    pub fn stop_background_sync(&self) {
        self.tablet.stop_background_sync();
    }

    pub fn status(&self) -> Result<DeviceStatus> {
        self.tablet.status()
    }

    /// Work the server refused, kept on this device, with the reasons.
    pub fn refused(&self) -> Result<Vec<RefusedView>> {
        self.tablet.refused()
    }

    /// Tries again to write an inspection's refused work on top of the
    /// server's state (then sync to upload it).
    pub fn rebase(&self, inspection: String) -> Result<RebaseReport> {
        self.tablet.rebase(&inspection)
    }
}
