//! Who may read, create and change which document: the one place where the
//! rules of DESIGN §6 meet the documents.
//!
//! [`DocumentRules`] is the [`Access`] the server hands to its protocol
//! [`Hub`](crate::protocol::hub::Hub). Reads are decided from the peer's
//! identity (role, team, unit scope — filled in by the server from its
//! database when the connection opens) and the document's own header; writes
//! are checked by the field-ownership [`policy`](crate::policy) and then by
//! schema [`validate`](crate::model::validate) on the document as it would
//! be after the changes.

use automerge::{Automerge, ObjType, ROOT, ReadDoc, Value};

use crate::ids::DocumentId;
use crate::model::{self, DocKind, InspectionStatus};
use crate::policy::{self, Role};
use crate::protocol::hub::{Access, Rejection};
use crate::template::TemplateRegistry;

/// The identity behind one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub user_id: String,
    pub role: Role,
    /// Inspectors: the team they belong to.
    pub team_id: Option<String>,
    /// Unit accounts: the unit they speak for.
    pub unit_code: Option<String>,
    /// The device the token was issued to.
    pub device_id: String,
}

/// The standard access rules over kiemtra's four document kinds.
#[derive(Debug, Clone, Default)]
pub struct DocumentRules {
    /// Published templates, for validating answers.
    pub templates: TemplateRegistry,
}

impl DocumentRules {
    pub fn new(templates: TemplateRegistry) -> Self {
        Self { templates }
    }
}

fn header_str(doc: &Automerge, section: &str, key: &str) -> Option<String> {
    let (_, obj) = doc
        .get(ROOT, section)
        .ok()
        .flatten()
        .filter(|(v, _)| matches!(v, Value::Object(ObjType::Map)))?;
    let (v, id) = doc.get(&obj, key).ok().flatten()?;
    model::string_at(doc, &v, &id)
}

fn is_member(doc: &Automerge, user_id: &str) -> bool {
    let Some((_, header)) = doc
        .get(ROOT, "header")
        .ok()
        .flatten()
        .filter(|(v, _)| matches!(v, Value::Object(ObjType::Map)))
    else {
        return false;
    };
    let Some((_, members)) = doc
        .get(&header, "members")
        .ok()
        .flatten()
        .filter(|(v, _)| matches!(v, Value::Object(ObjType::Map)))
    else {
        return false;
    };
    doc.get(&members, user_id).ok().flatten().is_some()
}

impl DocumentRules {
    /// The read rule, usable outside the hub (HTTP handlers, blob access).
    pub fn can_read(&self, who: &PeerInfo, doc: &Automerge) -> bool {
        let Ok(kind) = model::kind_of(doc) else {
            return false;
        };
        let everything = matches!(
            who.role,
            Role::Secretariat | Role::Leader | Role::Admin | Role::Server
        );
        match kind {
            DocKind::Catalog => true,
            DocKind::Index => {
                who.role == Role::Server
                    || doc
                        .get(ROOT, "user_id")
                        .ok()
                        .flatten()
                        .and_then(|(v, id)| model::string_at(doc, &v, &id))
                        .is_some_and(|u| u == who.user_id)
            }
            DocKind::Inspection => match who.role {
                _ if everything => true,
                Role::Inspector => {
                    is_member(doc, &who.user_id)
                        || (who.team_id.is_some()
                            && header_str(doc, "header", "team_id") == who.team_id)
                }
                // The inspected unit sees its inspection once it is accepted.
                Role::Unit => {
                    who.unit_code.is_some()
                        && header_str(doc, "header", "unit_code") == who.unit_code
                        && model::read_inspection(doc, &self.templates)
                            .is_ok_and(|i| i.status() == InspectionStatus::Accepted)
                }
                _ => false,
            },
            DocKind::Action => match who.role {
                _ if everything => true,
                Role::Unit => {
                    who.unit_code.is_some()
                        && header_str(doc, "assignment", "unit_code") == who.unit_code
                }
                Role::Inspector => {
                    who.team_id.is_some() && header_str(doc, "assignment", "team_id") == who.team_id
                }
                _ => false,
            },
        }
    }
}

impl Access for DocumentRules {
    type Identity = PeerInfo;

    fn may_read(&self, who: &PeerInfo, _id: &DocumentId, doc: &Automerge) -> bool {
        self.can_read(who, doc)
    }

    fn may_create(&self, who: &PeerInfo) -> bool {
        DocKind::ALL
            .iter()
            .any(|k| policy::may_create(who.role, *k))
    }

    fn check_write(
        &self,
        who: &PeerInfo,
        _id: &DocumentId,
        before: &Automerge,
        after: &Automerge,
    ) -> Result<(), Rejection> {
        if let Err(violations) = policy::check_changes(before, after, who.role) {
            return Err(Rejection {
                reasons: violations
                    .iter()
                    .map(|v| {
                        format!(
                            "{} may not write {} (change {}): {}",
                            v.role.as_str(),
                            v.path,
                            v.change,
                            v.reason
                        )
                    })
                    .collect(),
            });
        }
        if let Err(errors) = model::validate(after, &self.templates) {
            return Err(Rejection {
                reasons: errors
                    .iter()
                    .map(|e| format!("{}: {}", e.path, e.message))
                    .collect(),
            });
        }
        // An inspector writes only inspections of their own team.
        if who.role == Role::Inspector
            && model::kind_of(after).is_ok_and(|k| k == DocKind::Inspection)
            && !self.can_read(who, after)
        {
            return Err(Rejection {
                reasons: vec![format!(
                    "{} is not a member of this inspection's team",
                    who.user_id
                )],
            });
        }
        Ok(())
    }
}
