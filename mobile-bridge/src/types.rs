//! The values the tablet API takes and returns: plain records of strings,
//! numbers and lists, so that Kotlin, Swift and Python see them as native
//! data classes and the command line prints them as JSON.
// UniFFI's derives implement its (unsafe) converter traits.
#![allow(unsafe_code)]

use std::collections::HashMap;

use serde::Serialize;

/// Settings of a tablet store. [`TabletConfig::default`] (FFI:
/// `default_tablet_config()`) has sensible values.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TabletConfig {
    /// Encrypts the device store (builds with the `sqlcipher` feature).
    pub passphrase: Option<String>,
    /// Photos are scaled so that their longest side is at most this.
    pub photo_max_side_px: u32,
    /// Photos are re-encoded until their file is at most this large.
    pub photo_max_bytes: u64,
    /// JPEG quality of re-encoded photos, 1–100.
    pub photo_jpeg_quality: u8,
    /// Bytes sent per tus PATCH; the confirmed offset is saved after each.
    pub upload_chunk_bytes: u64,
    /// Timeout of one HTTP request.
    pub http_timeout_ms: u64,
    /// One sync session gives up (and retries) after this long.
    pub sync_timeout_ms: u64,
    /// Sessions `sync_now` tries before reporting the failure.
    pub max_sync_attempts: u32,
    /// First reconnect delay; it doubles per failure up to `backoff_max_ms`,
    /// each delay randomised to between half and all of itself.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for TabletConfig {
    fn default() -> Self {
        Self {
            passphrase: None,
            photo_max_side_px: 2048,
            photo_max_bytes: 2 * 1024 * 1024,
            photo_jpeg_quality: 85,
            upload_chunk_bytes: 1024 * 1024,
            http_timeout_ms: 30_000,
            sync_timeout_ms: 120_000,
            max_sync_attempts: 5,
            backoff_base_ms: 500,
            backoff_max_ms: 60_000,
        }
    }
}

/// Whether the tablet can talk to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, uniffi::Enum)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Nobody ever logged in on this store.
    LoggedOut,
    /// Tokens are held (the access token may need a refresh).
    LoggedIn,
    /// The server refused the tokens: log in again. Local work is kept.
    NeedsLogin,
}

/// Who is signed in on this device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct SessionInfo {
    pub state: SessionState,
    pub device_id: String,
    pub server_url: Option<String>,
    pub username: Option<String>,
    pub user_id: Option<String>,
    pub role: Option<String>,
    pub team_id: Option<String>,
}

/// One inspection assigned to the user (from the `index` document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct Assignment {
    /// Document id (bs58check).
    pub id: String,
    /// `automerge:` URL.
    pub url: String,
    /// False until the inspection's document has been synced to the device.
    pub on_device: bool,
    pub title: Option<String>,
    pub unit_code: Option<String>,
    pub unit_name: Option<String>,
    pub scheduled_date: Option<String>,
    pub template_id: Option<String>,
    pub template_version: Option<u32>,
    /// `scheduled`, `in_progress`, `submitted`, `returned`, `accepted`.
    pub status: Option<String>,
    /// `lead` or `member` when the user is in the inspection's team.
    pub my_role: Option<String>,
    pub items_total: u32,
    pub items_answered: u32,
    pub findings: u32,
    pub photos: u32,
    pub conflicts: u32,
    /// Changes made here that the server has not confirmed yet.
    pub pending_changes: u32,
}

/// One checklist item with its current answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct ItemView {
    pub id: String,
    pub section_id: String,
    pub text_vi: String,
    /// `yes_no`, `yes_no_partial`, `percentage`, `number`, `text`, `select`, `action_list`.
    pub answer_type: String,
    /// Option values of a `select` item.
    pub options: Vec<String>,
    /// Keys of the extra fields the item declares.
    pub fields: Vec<String>,
    pub answer: Option<AnswerView>,
    /// Two or more concurrent answers wait to be settled.
    pub conflicted: bool,
}

/// An answer as shown (the value in the text form `answer` accepts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct AnswerView {
    pub value: String,
    pub fields: HashMap<String, String>,
    pub evidence: Vec<String>,
    pub note: Option<String>,
    pub by: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct FindingView {
    pub id: String,
    pub item_id: Option<String>,
    pub title: String,
    pub note: String,
    /// `low`, `medium`, `high`.
    pub severity: String,
    pub photos: Vec<String>,
    pub by: String,
    pub at_ms: i64,
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct PhotoView {
    pub sha256: String,
    pub mime: String,
    pub bytes: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub item_id: Option<String>,
    pub finding_id: Option<String>,
    pub caption: Option<String>,
    pub by: String,
    pub at_ms: i64,
    /// The bytes are on this device.
    pub on_device: bool,
    /// The server confirmed the bytes.
    pub uploaded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct SubmissionView {
    pub id: String,
    pub by: String,
    pub at_ms: i64,
    pub note: Option<String>,
}

/// A review decision by the secretariat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct DecisionView {
    pub id: String,
    /// `accepted` or `returned`.
    pub state: String,
    pub by: String,
    pub at_ms: i64,
    pub note: Option<String>,
}

/// A review comment by the secretariat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct CommentView {
    pub id: String,
    /// `item:<id>`, `finding:<id>` or `general`.
    pub target: String,
    pub text: String,
    pub by: String,
    pub at_ms: i64,
}

/// A whole inspection as the tablet shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct InspectionDetail {
    pub id: String,
    pub unit_code: String,
    pub unit_name: String,
    pub template_id: String,
    pub template_version: u32,
    pub team_id: String,
    pub scheduled_date: String,
    pub status: String,
    pub my_role: Option<String>,
    pub items: Vec<ItemView>,
    pub findings: Vec<FindingView>,
    pub photos: Vec<PhotoView>,
    pub submissions: Vec<SubmissionView>,
    pub decisions: Vec<DecisionView>,
    pub comments: Vec<CommentView>,
    pub pending_changes: u32,
}

/// Review decisions and comments of one inspection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct ReviewView {
    pub inspection_id: String,
    pub status: String,
    pub decisions: Vec<DecisionView>,
    pub comments: Vec<CommentView>,
}

/// One of the values held at a conflicted key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct ConflictValueView {
    /// The value as JSON (an answer is `{"value": …, "by": …, "at": …}`).
    pub value_json: String,
    /// For answers: the value in the text form `answer` accepts.
    pub value: Option<String>,
    pub author: Option<String>,
    pub at_ms: Option<i64>,
    pub actor: String,
}

/// A key with concurrent values that a person has to settle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct ConflictView {
    pub inspection_id: String,
    /// e.g. `answers/A3`, `findings/<id>/title`.
    pub path: String,
    pub item_id: Option<String>,
    pub finding_id: Option<String>,
    /// In operation order: the last is what readers currently show.
    pub values: Vec<ConflictValueView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct ActionResponseView {
    pub id: String,
    pub text: String,
    pub evidence: Vec<String>,
    pub done: bool,
    pub by: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct VerificationView {
    pub id: String,
    /// `closed` or `reopened`.
    pub decision: String,
    pub note: Option<String>,
    pub by: String,
    pub at_ms: i64,
}

/// A corrective action the tablet holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct ActionView {
    pub id: String,
    pub inspection_id: String,
    pub finding_id: String,
    pub unit_code: String,
    pub title: String,
    pub due_date: String,
    pub priority: String,
    /// `open`, `responded`, `closed`, `reopened`.
    pub status: String,
    pub responses: Vec<ActionResponseView>,
    pub verifications: Vec<VerificationView>,
}

/// A finding to add.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct NewFinding {
    pub title: String,
    pub note: String,
    /// `low`, `medium` or `high`.
    pub severity: String,
    pub item_id: Option<String>,
}

/// Changes to a finding; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct FindingEdit {
    pub title: Option<String>,
    pub severity: Option<String>,
    /// Replaces the whole note (as a minimal splice, so concurrent edits of
    /// other parts of the note survive).
    pub note: Option<String>,
    /// Appended to the note.
    pub append_note: Option<String>,
    /// `Some(true)` tombstones the finding, `Some(false)` restores it.
    pub deleted: Option<bool>,
}

/// Where a photo belongs.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct PhotoTarget {
    pub item_id: Option<String>,
    pub finding_id: Option<String>,
    pub caption: Option<String>,
}

/// A photo that was added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct AddedPhoto {
    pub sha256: String,
    pub mime: String,
    pub bytes: u64,
    pub width: u32,
    pub height: u32,
    pub reencoded: bool,
}

/// Which stage a sync is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, uniffi::Enum)]
#[serde(rename_all = "snake_case")]
pub enum SyncPhase {
    Connecting,
    Documents,
    Photos,
    Waiting,
    Done,
}

/// Progress of a sync, reported as it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct SyncProgress {
    pub phase: SyncPhase,
    /// Attempt number, from 1.
    pub attempt: u32,
    pub documents: u32,
    pub photos_total: u32,
    pub photos_done: u32,
    /// Photo bytes the server has confirmed in this sync.
    pub bytes_uploaded: u64,
}

/// What a finished sync did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct SyncReport {
    pub attempts: u32,
    /// Documents held after the sync.
    pub documents: u32,
    /// Documents that received changes from the server.
    pub documents_changed: u32,
    pub photos_uploaded: u32,
    pub bytes_uploaded: u64,
    /// Problems that did not stop the sync (a document the server would not
    /// serve, a photo that will be retried).
    pub warnings: Vec<String>,
    /// Pieces of refused work written again on top of the server's state
    /// (and uploaded) during this sync.
    pub rebased: u32,
    /// Work the server refused that is still not on the server: kept on
    /// this device, each with the reason (see `refused`). Empty when every
    /// piece of work is on the server.
    pub refused: Vec<RefusedView>,
}

/// A piece of work the server refused and that is not on the server: kept
/// on this device with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct RefusedView {
    /// The document (inspection) it belongs to.
    pub document_id: String,
    /// Which refusal (several may concern one document).
    pub refusal_id: i64,
    /// Where the work lives: `answers/A4`, `findings/<id>`,
    /// `findings/<id>/note`, `photos/<sha256>`, `submissions/<id>`,
    /// `changes/<hash>` (a change of another kind of document), or `*`
    /// (not worked out yet).
    pub piece: String,
    /// `answer`, `finding`, `photo`, `submission`, `change` or `pending`.
    pub kind: String,
    /// What it is, for people (`answer A4 = yes`, `finding "…"`).
    pub label: String,
    /// `open`: a person has to act (the reason says why; `rebase` tries
    /// again); `pending`: tried again automatically after each sync.
    pub state: String,
    /// The rule that refuses it (`invalid`, `settle`, `member`, …), if known.
    pub rule: Option<String>,
    /// The path the rule names.
    pub path: Option<String>,
    pub reason: String,
    pub refused_at_ms: i64,
}

/// What `rebase` did for one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct RebaseReport {
    pub document_id: String,
    /// Pieces of work written again (sync to upload them), or found
    /// already on the server.
    pub reapplied: Vec<String>,
    /// What stays refused, with the reasons.
    pub refused: Vec<RefusedView>,
}

/// One local document, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct DocumentStatus {
    pub id: String,
    pub kind: String,
    /// Hex change hashes.
    pub heads: Vec<String>,
    /// Changes made here that the server has not confirmed.
    pub pending_changes: u32,
    /// Photos of this document whose bytes are not uploaded yet.
    pub pending_photos: Vec<String>,
    pub last_synced_ms: Option<i64>,
}

/// One photo of the upload queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct PhotoStatus {
    pub sha256: String,
    pub inspection_id: String,
    pub bytes: u64,
    pub uploaded_offset: u64,
    pub uploaded: bool,
    pub last_error: Option<String>,
}

/// Everything on the device, for `status --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, uniffi::Record)]
pub struct DeviceStatus {
    pub session: SessionInfo,
    pub documents: Vec<DocumentStatus>,
    pub photos: Vec<PhotoStatus>,
    /// Total changes not yet confirmed by the server.
    pub pending_changes: u32,
    /// Photos not yet uploaded.
    pub pending_photos: u32,
}

/// Progress and error callbacks of a sync (implemented by the app).
#[uniffi::export(with_foreign)]
pub trait SyncListener: Send + Sync {
    fn on_progress(&self, progress: SyncProgress);
    /// A failed attempt (it may be retried) or a problem that did not stop
    /// the sync.
    fn on_error(&self, message: String);
}
