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

use std::collections::HashMap;

use automerge::{ActorId, Automerge, Change, ObjType, ROOT, ReadDoc, Value};

use crate::ids::DocumentId;
use crate::model::{self, DocKind, InspectionStatus};
use crate::policy::{self, Author, ChangeCheck, Role, Rule, Violation};
use crate::protocol::hub::Access;
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

/// Whom an automerge actor belongs to: the user and device that first
/// wrote with it (recorded by the server the first time it accepts a
/// change from that actor).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ActorOwner {
    pub user_id: String,
    pub device_id: String,
}

/// The user id the server's own actor is registered to.
pub const SERVER_USER: &str = "server";

/// The standard access rules over kiemtra's four document kinds.
#[derive(Debug, Clone, Default)]
pub struct DocumentRules {
    /// Published templates, for validating answers.
    pub templates: TemplateRegistry,
    /// Actor → owner, as recorded so far.
    actors: HashMap<ActorId, ActorOwner>,
}

impl DocumentRules {
    pub fn new(templates: TemplateRegistry) -> Self {
        Self {
            templates,
            actors: HashMap::new(),
        }
    }

    /// Records who an actor belongs to (loading the registry, or the
    /// server's own actor). An actor already recorded keeps its owner.
    pub fn bind_actor(&mut self, actor: ActorId, owner: ActorOwner) {
        self.actors.entry(actor).or_insert(owner);
    }

    /// Who an actor belongs to, if recorded.
    pub fn actor_owner(&self, actor: &ActorId) -> Option<&ActorOwner> {
        self.actors.get(actor)
    }

    /// How many actors are recorded.
    pub fn actor_count(&self) -> usize {
        self.actors.len()
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
    // A removed member's key stays (entries are never deleted) with the
    // value "removed": only "lead" and "member" count.
    doc.get(&members, user_id)
        .ok()
        .flatten()
        .and_then(|(v, id)| model::string_at(doc, &v, &id))
        .is_some_and(|role| role == "lead" || role == "member")
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

    fn role_of(&self, who: &PeerInfo) -> Role {
        who.role
    }

    fn check_change(
        &self,
        who: &PeerInfo,
        _id: &DocumentId,
        doc: &Automerge,
        change: &Change,
    ) -> Result<ChangeCheck, Vec<Violation>> {
        let refuse = |rule: Rule, reason: String| {
            Err(vec![Violation {
                path: String::new(),
                role: who.role,
                change: change.hash(),
                rule,
                reason,
            }])
        };
        if let Some(owner) = self.actors.get(change.actor_id())
            && (owner.user_id != who.user_id || owner.device_id != who.device_id)
        {
            return refuse(
                Rule::Actor,
                format!(
                    "automerge actor {} belongs to another user or device; each device \
                     writes with an actor of its own",
                    change.actor_id()
                ),
            );
        }
        // An inspector writes only inspections of their own team.
        if who.role == Role::Inspector
            && model::kind_of(doc).is_ok_and(|k| k == DocKind::Inspection)
            && !self.can_read(who, doc)
        {
            return refuse(
                Rule::Member,
                format!("{} is not a member of this inspection's team", who.user_id),
            );
        }
        let lead = who.role == Role::Inspector && policy::is_lead(doc, &who.user_id);
        policy::check_change(
            doc,
            change,
            &Author {
                user_id: &who.user_id,
                role: who.role,
                lead,
            },
        )
    }

    fn check_result(
        &self,
        who: &PeerInfo,
        _id: &DocumentId,
        after: &Automerge,
        accepted: &[(Change, ChangeCheck)],
    ) -> Vec<Violation> {
        let Err(errors) = model::validate(after, &self.templates) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in &errors {
            // Problems in parts no change of this batch wrote were there
            // before (a template or header changed meanwhile): not theirs.
            for (change, check) in accepted {
                if check.concerns(&e.path) {
                    out.push(Violation {
                        path: e.path.clone(),
                        role: who.role,
                        change: change.hash(),
                        rule: Rule::Invalid,
                        reason: e.message.clone(),
                    });
                }
            }
        }
        out
    }

    fn accepted(&mut self, who: &PeerInfo, change: &Change) {
        self.bind_actor(
            change.actor_id().clone(),
            ActorOwner {
                user_id: who.user_id.clone(),
                device_id: who.device_id.clone(),
            },
        );
    }
}
