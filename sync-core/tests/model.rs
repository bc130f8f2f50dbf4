//! The document model from the outside: writers and readers round-trip every
//! document kind, `validate` catches what it must, statuses follow the
//! lifecycle, and concurrent edits show up as conflicts until settled.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, Automerge, ObjType, ROOT, ReadDoc, ScalarValue};
use sync_core::DocumentId;
use sync_core::model::{
    self, Action, ActionAssignment, ActionResponse, ActionStatus, Answer, Catalog, CatalogTemplate,
    CatalogUnit, CommentTarget, DocKind, Finding, IndexEntry, InspectionHeader, InspectionStatus,
    MemberRole, ModelError, Person, PhotoMime, PhotoRef, Priority, ReviewState, Seen, Severity,
    ValidationError, Verification, VerificationDecision,
};
use sync_core::template::{AnswerValue, Template, TemplateRegistry, Tri};

const CHECKLIST: &str = include_str!("data/checklist_de_an_06.json");
const T0: i64 = 1_750_000_000_000;

fn template() -> Template {
    Template::from_json(CHECKLIST).unwrap()
}

fn registry() -> TemplateRegistry {
    let mut reg = TemplateRegistry::default();
    reg.publish(template()).unwrap();
    reg
}

fn sha(c: char) -> String {
    c.to_string().repeat(64)
}

fn header() -> InspectionHeader {
    InspectionHeader {
        unit_code: "00004".into(),
        unit_name: "Phường Ba Đình".into(),
        template_id: "DA06-HN-2025-v1".into(),
        template_version: 1,
        team_id: "t-01".into(),
        members: BTreeMap::from([
            ("u-an".to_owned(), MemberRole::Lead),
            ("u-binh".to_owned(), MemberRole::Member),
        ]),
        scheduled_date: "2025-07-15".into(),
        created_at: T0,
    }
}

fn replica(actor: &[u8]) -> AutoCommit {
    AutoCommit::new().with_actor(ActorId::from(actor.to_vec()))
}

fn new_inspection() -> AutoCommit {
    let mut doc = replica(b"secretariat-1");
    model::init_inspection(&mut doc, &header()).unwrap();
    doc.commit();
    doc
}

fn answer(value: AnswerValue, by: &str, at: i64) -> Answer {
    Answer {
        value,
        fields: BTreeMap::new(),
        evidence: BTreeSet::new(),
        note: None,
        by: by.into(),
        at,
    }
}

fn finding(title: &str) -> Finding {
    Finding {
        item_id: Some("B8".into()),
        title: title.into(),
        note: "Cán bộ yêu cầu bản giấy".into(),
        severity: Severity::Medium,
        photos: BTreeSet::from([sha('a')]),
        by: "u-an".into(),
        at: T0 + 10,
        deleted: false,
    }
}

fn errors(doc: &impl ReadDoc) -> Vec<ValidationError> {
    model::validate(doc, &registry()).err().unwrap_or_default()
}

fn error_paths(doc: &impl ReadDoc) -> Vec<String> {
    errors(doc).into_iter().map(|e| e.path).collect()
}

fn answers_obj(doc: &AutoCommit) -> automerge::ObjId {
    doc.get(ROOT, "answers").unwrap().unwrap().1
}

fn findings_obj(doc: &AutoCommit) -> automerge::ObjId {
    doc.get(ROOT, "findings").unwrap().unwrap().1
}

// ------------------------------------------------------------ round trips

#[test]
fn inspection_round_trip() {
    let mut doc = new_inspection();
    let a1 = Answer {
        value: AnswerValue::YesNo(true),
        fields: BTreeMap::from([
            ("so_ky_hieu".to_owned(), "45/KH-UBND".to_owned()),
            ("ngay_ban_hanh".to_owned(), "15/01/2025".to_owned()),
        ]),
        evidence: BTreeSet::from([sha('b')]),
        note: Some("Kế hoạch ban hành đúng hạn".into()),
        by: "u-an".into(),
        at: T0 + 1,
    };
    let g2 = AnswerValue::ActionList(BTreeMap::from([(
        "e1".to_owned(),
        BTreeMap::from([
            (
                "noi_dung".to_owned(),
                "Bổ sung thiết bị đọc chip".to_owned(),
            ),
            ("chiu_trach_nhiem".to_owned(), "UBND phường".to_owned()),
            ("thoi_han".to_owned(), "30/09/2025".to_owned()),
            ("trang_thai".to_owned(), "Đang thực hiện".to_owned()),
        ]),
    )]));
    let answers = BTreeMap::from([
        ("A1".to_owned(), a1.clone()),
        (
            "A2".to_owned(),
            answer(AnswerValue::YesNoPartial(Tri::Partial), "u-binh", T0 + 2),
        ),
        (
            "A3".to_owned(),
            answer(
                AnswerValue::Percentage {
                    numerator: 11,
                    denominator: 12,
                },
                "u-an",
                T0 + 3,
            ),
        ),
        (
            "A4".to_owned(),
            answer(AnswerValue::Number(4), "u-an", T0 + 4),
        ),
        (
            "B5".to_owned(),
            answer(AnswerValue::NotApplicable, "u-an", T0 + 5),
        ),
        (
            "G1".to_owned(),
            answer(AnswerValue::Text("Chưa có camera".into()), "u-an", T0 + 6),
        ),
        ("G2".to_owned(), answer(g2, "u-an", T0 + 7)),
        (
            "G3".to_owned(),
            answer(AnswerValue::Select("kha".into()), "u-an", T0 + 8),
        ),
    ]);
    for (item, a) in &answers {
        model::set_answer(&mut doc, item, a).unwrap();
    }
    model::add_finding(&mut doc, "f1", &finding("Yêu cầu bản giấy")).unwrap();
    model::update_finding_title(&mut doc, "f1", "Yêu cầu nộp bản giấy CCCD").unwrap();
    model::update_finding_severity(&mut doc, "f1", Severity::High).unwrap();
    model::splice_finding_note(&mut doc, "f1", 0, 0, "Kiểm tra 10 hồ sơ: ").unwrap();
    model::add_finding_photo(&mut doc, "f1", &sha('c')).unwrap();
    model::add_finding(&mut doc, "f2", &finding("Trùng lặp")).unwrap();
    model::delete_finding(&mut doc, "f2").unwrap();
    let photo = PhotoRef {
        sha256: sha('c'),
        mime: PhotoMime::Jpeg,
        bytes: 523_114,
        width: Some(1600),
        height: Some(1200),
        taken_at: Some(T0 - 60_000),
        item_id: None,
        finding_id: Some("f1".into()),
        caption: Some("Quầy một cửa".into()),
        by: "u-an".into(),
        at: T0 + 20,
        deleted: false,
    };
    model::add_photo(&mut doc, &photo).unwrap();
    model::submit(&mut doc, "s1", "u-an", T0 + 100, Some("Hoàn thành")).unwrap();
    model::review_decide(
        &mut doc,
        "d1",
        ReviewState::Returned,
        "u-thu",
        T0 + 200,
        None,
    )
    .unwrap();
    model::review_comment(
        &mut doc,
        "c1",
        &CommentTarget::Finding("f1".into()),
        "Bổ sung ảnh",
        "u-thu",
        T0 + 201,
    )
    .unwrap();
    doc.commit();

    // Through bytes, as a document travels.
    let loaded = Automerge::load(&doc.save()).unwrap();
    assert_eq!(model::kind_of(&loaded).unwrap(), DocKind::Inspection);
    assert_eq!(model::validate(&loaded, &registry()), Ok(()));
    let read = model::read_inspection(&loaded, &registry()).unwrap();

    assert_eq!(read.header, header());
    assert_eq!(read.answers, answers);
    let f1 = &read.findings["f1"];
    assert_eq!(f1.title, "Yêu cầu nộp bản giấy CCCD");
    assert_eq!(f1.severity, Severity::High);
    assert_eq!(f1.note, "Kiểm tra 10 hồ sơ: Cán bộ yêu cầu bản giấy");
    assert_eq!(f1.photos, BTreeSet::from([sha('a'), sha('c')]));
    assert_eq!(f1.item_id.as_deref(), Some("B8"));
    assert!(!f1.deleted);
    assert!(read.findings["f2"].deleted);
    assert_eq!(
        read.live_findings()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        ["f1"]
    );
    assert_eq!(read.photos[&sha('c')], photo);
    assert_eq!(read.submissions["s1"].note.as_deref(), Some("Hoàn thành"));
    assert_eq!(read.decisions["d1"].state, ReviewState::Returned);
    assert_eq!(
        read.comments["c1"].target,
        CommentTarget::Finding("f1".into())
    );
    assert_eq!(read.comments["c1"].text, "Bổ sung ảnh");
    assert_eq!(read.status(), InspectionStatus::Returned);
}

#[test]
fn header_edits_and_writer_refusals() {
    let mut doc = new_inspection();
    model::set_scheduled_date(&mut doc, "2025-08-01").unwrap();
    model::set_member(&mut doc, "u-chi", Some(MemberRole::Member)).unwrap();
    model::set_member(&mut doc, "u-binh", None).unwrap();
    let read = model::read_inspection(&doc, &registry()).unwrap();
    assert_eq!(read.header.scheduled_date, "2025-08-01");
    assert_eq!(
        read.header
            .members
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["u-an", "u-chi"]
    );

    // Writers refuse what validation would refuse, and never re-initialise.
    assert!(matches!(
        model::set_scheduled_date(&mut doc, "2025-02-30"),
        Err(ModelError::InvalidArgument(_))
    ));
    assert!(matches!(
        model::init_inspection(&mut doc, &header()),
        Err(ModelError::AlreadyInitialized { .. })
    ));
    model::add_finding(&mut doc, "f1", &finding("Một")).unwrap();
    assert!(matches!(
        model::add_finding(&mut doc, "f1", &finding("Hai")),
        Err(ModelError::AlreadyExists { path }) if path == "findings/f1"
    ));
    assert!(matches!(
        model::update_finding_title(&mut doc, "f9", "x"),
        Err(ModelError::NotFound { path }) if path == "findings/f9"
    ));
    assert!(matches!(
        model::splice_finding_note(&mut doc, "f1", 1000, 0, "x"),
        Err(ModelError::InvalidArgument(_))
    ));
    assert!(matches!(
        model::set_answer(
            &mut doc,
            "G1",
            &answer(AnswerValue::Text("n/a".into()), "u-an", T0)
        ),
        Err(ModelError::InvalidArgument(_))
    ));

    // A writer on a document that is not an inspection finds no section.
    let mut empty = AutoCommit::new();
    assert!(matches!(
        model::set_answer(&mut empty, "A1", &answer(AnswerValue::YesNo(true), "u-an", T0)),
        Err(ModelError::NotFound { path }) if path == "answers"
    ));
}

#[test]
fn readers_check_kind_schema_and_template() {
    let doc = new_inspection();
    assert!(matches!(
        model::read_action(&doc),
        Err(ModelError::WrongKind {
            expected: DocKind::Action,
            found: DocKind::Inspection
        })
    ));
    assert!(matches!(
        model::read_inspection(&doc, &TemplateRegistry::default()),
        Err(ModelError::UnknownTemplate { template_id, version: 1 }) if template_id == "DA06-HN-2025-v1"
    ));
    assert!(matches!(
        model::kind_of(&AutoCommit::new()),
        Err(ModelError::NoKind)
    ));

    let mut newer = new_inspection();
    newer.put(ROOT, "schema", ScalarValue::Uint(2)).unwrap();
    let err = model::read_inspection(&newer, &registry()).unwrap_err();
    assert!(matches!(
        err,
        ModelError::SchemaTooNew {
            found: 2,
            supported: 1
        }
    ));
    assert_eq!(
        err.to_string(),
        "document schema 2 is newer than this software supports (1): update"
    );
}

fn assignment() -> ActionAssignment {
    ActionAssignment {
        inspection_id: DocumentId::from_bytes([7; 16]),
        finding_id: "f1".into(),
        unit_code: "00004".into(),
        team_id: Some("t-01".into()),
        title: "Trang bị đầu đọc chip CCCD".into(),
        due_date: "2025-09-30".into(),
        priority: Priority::High,
        created_by: "u-thu".into(),
        created_at: T0,
    }
}

fn new_action() -> AutoCommit {
    let mut doc = replica(b"secretariat-1");
    model::init_action(&mut doc, &assignment()).unwrap();
    doc.commit();
    doc
}

fn response(done: bool, at: i64) -> ActionResponse {
    ActionResponse {
        text: "Đã lắp 2 đầu đọc".into(),
        evidence: BTreeSet::from([sha('d')]),
        done,
        by: "u-unit".into(),
        at,
    }
}

fn verification(decision: VerificationDecision, at: i64) -> Verification {
    Verification {
        decision,
        note: Some("Kiểm tra lại".into()),
        by: "u-thu".into(),
        at,
    }
}

#[test]
fn action_round_trip() {
    let mut doc = new_action();
    model::respond_action(&mut doc, "r1", &response(true, T0 + 1)).unwrap();
    model::verify_action(
        &mut doc,
        "v1",
        &verification(VerificationDecision::Closed, T0 + 2),
    )
    .unwrap();
    model::update_priority(&mut doc, Priority::Urgent).unwrap();
    model::update_due_date(&mut doc, "2025-10-15").unwrap();
    doc.commit();
    let loaded = Automerge::load(&doc.save()).unwrap();
    assert_eq!(model::validate(&loaded, &registry()), Ok(()));
    let read = model::read_action(&loaded).unwrap();
    let expected = Action {
        assignment: ActionAssignment {
            priority: Priority::Urgent,
            due_date: "2025-10-15".into(),
            ..assignment()
        },
        responses: BTreeMap::from([("r1".to_owned(), response(true, T0 + 1))]),
        verifications: BTreeMap::from([(
            "v1".to_owned(),
            verification(VerificationDecision::Closed, T0 + 2),
        )]),
        seen: Seen {
            claims: BTreeMap::from([("v1".to_owned(), BTreeSet::from(["r1".to_owned()]))]),
            verdicts: BTreeMap::from([("v1".to_owned(), BTreeSet::new())]),
        },
    };
    assert_eq!(read, expected);
    assert_eq!(read.status(), ActionStatus::Closed);
}

#[test]
fn catalog_round_trip_and_registry() {
    let mut doc = replica(b"server");
    model::init_catalog(&mut doc).unwrap();
    let unit = CatalogUnit {
        name: "Ba Đình".into(),
        full_name: "Phường Ba Đình".into(),
        unit_type: "ward".into(),
        parent_code: Some("01".into()),
    };
    model::put_unit(&mut doc, "00004", &unit).unwrap();
    let entry = CatalogTemplate::from_template(&template());
    model::put_template(&mut doc, &entry).unwrap();
    // Publishing the same content again is a no-op; different content is refused.
    model::put_template(&mut doc, &entry).unwrap();
    let changed = CatalogTemplate {
        json: entry.json.replace("Phiếu kiểm tra", "Phiếu"),
        sha256: String::new(),
        ..entry.clone()
    };
    let changed = CatalogTemplate {
        sha256: {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(changed.json.as_bytes()))
        },
        ..changed
    };
    assert!(matches!(
        model::put_template(&mut doc, &changed),
        Err(ModelError::TemplateImmutable { key, .. }) if key == "DA06-HN-2025-v1@1"
    ));
    model::put_person(
        &mut doc,
        "u-an",
        &Person {
            display_name: "Nguyễn Văn An".into(),
        },
    )
    .unwrap();
    doc.commit();

    assert_eq!(model::validate(&doc, &TemplateRegistry::default()), Ok(()));
    let read = model::read_catalog(&doc).unwrap();
    assert_eq!(
        read,
        Catalog {
            units: BTreeMap::from([("00004".to_owned(), unit)]),
            templates: BTreeMap::from([("DA06-HN-2025-v1@1".to_owned(), entry)]),
            people: BTreeMap::from([(
                "u-an".to_owned(),
                Person {
                    display_name: "Nguyễn Văn An".into()
                }
            )]),
        }
    );
    // The catalog alone is enough to read inspections offline.
    let reg = read.registry().unwrap();
    let t = reg.get("DA06-HN-2025-v1", 1).unwrap();
    assert_eq!(t.items().count(), 30);
    let insp = new_inspection();
    assert_eq!(
        model::read_inspection(&insp, &reg).unwrap().header,
        header()
    );
}

#[test]
fn index_round_trip() {
    let mut doc = replica(b"server");
    model::init_index(&mut doc, "u-an").unwrap();
    let d1 = DocumentId::from_bytes([1; 16]);
    let d2 = DocumentId::from_bytes([2; 16]);
    let e1 = IndexEntry {
        kind: DocKind::Inspection,
        title: Some("Phường Ba Đình 15/07/2025".into()),
        added_at: T0,
    };
    let e2 = IndexEntry {
        kind: DocKind::Catalog,
        title: None,
        added_at: T0 + 1,
    };
    model::index_add(&mut doc, &d1, &e1).unwrap();
    model::index_add(&mut doc, &d2, &e2).unwrap();
    model::index_remove(&mut doc, &d2).unwrap();
    model::index_add(&mut doc, &d2, &e2).unwrap();
    model::index_remove(&mut doc, &d1).unwrap();
    doc.commit();
    // Indexes are server-only documents: removing an entry deletes its key.
    assert!(has_map_delete(&mut doc));
    assert_eq!(model::validate(&doc, &registry()), Ok(()));
    let read = model::read_index(&doc).unwrap();
    assert_eq!(read.user_id, "u-an");
    assert_eq!(read.documents, BTreeMap::from([(d2, e2)]));
}

// ------------------------------------------------------------ validation

#[test]
fn validation_reports_wrong_types() {
    let mut doc = new_inspection();
    let h = doc.get(ROOT, "header").unwrap().unwrap().1;
    doc.put(&h, "unit_name", 42_i64).unwrap();
    doc.put(&h, "created_at", 42_i64).unwrap();
    let answers = answers_obj(&doc);
    let a = doc.put_object(&answers, "A4", ObjType::Map).unwrap();
    doc.put(&a, "value", "bốn").unwrap();
    doc.put(&a, "by", "u-an").unwrap();
    doc.put(&a, "at", ScalarValue::Timestamp(T0)).unwrap();
    doc.commit();
    let errs = errors(&doc);
    let find = |p: &str| errs.iter().find(|e| e.path == p).map(|e| e.message.clone());
    assert_eq!(
        find("header/unit_name").unwrap(),
        "must be a string, found an integer"
    );
    assert_eq!(
        find("header/created_at").unwrap(),
        "must be a timestamp, found an integer"
    );
    assert_eq!(
        find("answers/A4/value").unwrap(),
        "must be an integer, found a string"
    );
    assert_eq!(errs.len(), 3, "{errs:?}");
    // Readers refuse the same document with the same problems.
    let err = model::read_inspection(&doc, &registry()).unwrap_err();
    assert!(matches!(&err, ModelError::Invalid(e) if e.len() == 3));
}

#[test]
fn validation_reports_bad_enum_values_dates_and_hashes() {
    let mut doc = new_inspection();
    model::add_finding(&mut doc, "f1", &finding("Thiếu thiết bị")).unwrap();
    let f = doc.get(findings_obj(&doc), "f1").unwrap().unwrap().1;
    doc.put(&f, "severity", "critical").unwrap();
    let h = doc.get(ROOT, "header").unwrap().unwrap().1;
    doc.put(&h, "scheduled_date", "2025-02-30").unwrap();
    let photos = doc.get(&f, "photos").unwrap().unwrap().1;
    doc.put(&photos, "ABC", true).unwrap();
    model::set_answer(
        &mut doc,
        "A2",
        &answer(AnswerValue::YesNoPartial(Tri::Yes), "u-an", T0),
    )
    .unwrap();
    let a2 = doc.get(answers_obj(&doc), "A2").unwrap().unwrap().1;
    doc.put(&a2, "value", "maybe").unwrap();
    doc.commit();
    let errs = errors(&doc);
    let find = |p: &str| errs.iter().find(|e| e.path == p).map(|e| e.message.clone());
    assert_eq!(
        find("findings/f1/severity").unwrap(),
        "\"critical\" is not one of: low, medium, high"
    );
    assert_eq!(
        find("header/scheduled_date").unwrap(),
        "\"2025-02-30\" is not a real date written YYYY-MM-DD"
    );
    assert!(find("findings/f1/photos/ABC").unwrap().contains("sha256"));
    assert_eq!(
        find("answers/A2/value").unwrap(),
        "\"maybe\" is not one of: yes, partial, no, n/a"
    );
    assert_eq!(errs.len(), 4, "{errs:?}");
}

#[test]
fn validation_reports_unknown_items_and_keys() {
    let mut doc = new_inspection();
    let answers = answers_obj(&doc);
    let a = doc.put_object(&answers, "Z9", ObjType::Map).unwrap();
    doc.put(&a, "value", "yes").unwrap();
    let mut f = finding("Không rõ mục");
    f.item_id = Some("Q1".into());
    model::add_finding(&mut doc, "f1", &f).unwrap();
    doc.put(ROOT, "foo", "bar").unwrap();
    let h = doc.get(ROOT, "header").unwrap().unwrap().1;
    doc.put(&h, "colour", "blue").unwrap();
    doc.commit();
    let paths = error_paths(&doc);
    assert_eq!(
        paths,
        ["foo", "header/colour", "answers/Z9", "findings/f1/item_id"],
        "{:?}",
        errors(&doc)
    );
    let errs = errors(&doc);
    assert!(errs[0].message.contains("not a known field"));
    assert!(
        errs[2]
            .message
            .contains("item Z9 is not in template DA06-HN-2025-v1@1")
    );
}

#[test]
fn validation_runs_template_checks_on_answers() {
    let mut doc = new_inspection();
    model::set_answer(
        &mut doc,
        "A3",
        &answer(
            AnswerValue::Percentage {
                numerator: 13,
                denominator: 12,
            },
            "u-an",
            T0,
        ),
    )
    .unwrap();
    model::set_answer(
        &mut doc,
        "G3",
        &answer(AnswerValue::Select("xuat_sac".into()), "u-an", T0),
    )
    .unwrap();
    doc.commit();
    let errs = errors(&doc);
    assert_eq!(
        errs.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        ["answers/A3/value", "answers/G3/value"]
    );
    assert!(errs[0].message.contains("13"), "{}", errs[0].message);
    assert!(errs[1].message.contains("xuat_sac"), "{}", errs[1].message);
}

#[test]
fn validation_enforces_sizes() {
    let mut doc = new_inspection();
    let mut a = answer(AnswerValue::YesNo(true), "u-an", T0);
    a.note = Some("x".repeat(20_001));
    model::set_answer(&mut doc, "A1", &a).unwrap();
    model::add_finding(&mut doc, "f1", &finding(&"t".repeat(501))).unwrap();
    doc.commit();
    let errs = errors(&doc);
    assert_eq!(
        errs,
        [
            ValidationError {
                path: "answers/A1/note".into(),
                message: "is 20001 characters long; at most 20000 are allowed".into(),
            },
            ValidationError {
                path: "findings/f1/title".into(),
                message: "is 501 characters long; at most 500 are allowed".into(),
            },
        ]
    );
    // Exactly at the limits is fine.
    let mut ok = new_inspection();
    a.note = Some("x".repeat(20_000));
    model::set_answer(&mut ok, "A1", &a).unwrap();
    model::add_finding(&mut ok, "f1", &finding(&"t".repeat(500))).unwrap();
    assert_eq!(model::validate(&ok, &registry()), Ok(()));
}

#[test]
fn validation_of_kind_and_schema() {
    let mut newer = new_inspection();
    newer.put(ROOT, "schema", ScalarValue::Uint(2)).unwrap();
    assert_eq!(
        errors(&newer),
        [ValidationError {
            path: "schema".into(),
            message: "document schema 2 is newer than this software supports (1): update".into(),
        }]
    );
    let mut unknown = AutoCommit::new();
    unknown.put(ROOT, "kind", "report").unwrap();
    unknown.put(ROOT, "schema", ScalarValue::Uint(1)).unwrap();
    assert_eq!(error_paths(&unknown), ["kind"]);
    assert_eq!(error_paths(&AutoCommit::new()), ["kind", "schema"]);

    let mut no_template = new_inspection();
    let h = no_template.get(ROOT, "header").unwrap().unwrap().1;
    no_template
        .put(&h, "template_version", ScalarValue::Uint(9))
        .unwrap();
    assert_eq!(error_paths(&no_template), ["header/template_id"]);
}

#[test]
fn validation_checks_every_concurrent_value() {
    let mut a = new_inspection();
    let mut b = a
        .fork()
        .with_actor(ActorId::from(b"zzzz-inspector".to_vec()));
    model::set_answer(
        &mut a,
        "A4",
        &answer(AnswerValue::Number(3), "u-an", T0 + 1),
    )
    .unwrap();
    a.commit();
    // The other replica writes a bad value; whichever wins, it must be reported.
    let answers = answers_obj(&b);
    let bad = b.put_object(&answers, "A4", ObjType::Map).unwrap();
    b.put(&bad, "value", "ba").unwrap();
    b.put(&bad, "by", "u-binh").unwrap();
    b.put(&bad, "at", ScalarValue::Timestamp(T0 + 2)).unwrap();
    b.commit();
    a.merge(&mut b).unwrap();
    assert_eq!(a.get_all(answers_obj(&a), "A4").unwrap().len(), 2);
    let errs = errors(&a);
    assert_eq!(
        errs,
        [ValidationError {
            path: "answers/A4/value".into(),
            message: "must be an integer, found a string".into(),
        }]
    );
}

// ------------------------------------------------------------ statuses

#[test]
fn inspection_status_through_the_lifecycle() {
    let reg = registry();
    let status = |doc: &AutoCommit| model::read_inspection(doc, &reg).unwrap().status();
    let mut doc = new_inspection();
    assert_eq!(status(&doc), InspectionStatus::Scheduled);
    model::set_answer(
        &mut doc,
        "A1",
        &answer(AnswerValue::YesNo(true), "u-an", T0 + 1),
    )
    .unwrap();
    assert_eq!(status(&doc), InspectionStatus::InProgress);
    model::submit(&mut doc, "s1", "u-an", T0 + 10, None).unwrap();
    assert_eq!(status(&doc), InspectionStatus::Submitted);
    model::review_decide(
        &mut doc,
        "d1",
        ReviewState::Returned,
        "u-thu",
        T0 + 20,
        Some("Thiếu ảnh"),
    )
    .unwrap();
    assert_eq!(status(&doc), InspectionStatus::Returned);
    model::set_answer(
        &mut doc,
        "A4",
        &answer(AnswerValue::Number(2), "u-an", T0 + 25),
    )
    .unwrap();
    assert_eq!(status(&doc), InspectionStatus::Returned);
    model::submit(&mut doc, "s2", "u-an", T0 + 30, None).unwrap();
    assert_eq!(status(&doc), InspectionStatus::Submitted);
    model::review_decide(
        &mut doc,
        "d2",
        ReviewState::Accepted,
        "u-thu",
        T0 + 40,
        None,
    )
    .unwrap();
    assert_eq!(status(&doc), InspectionStatus::Accepted);
    assert_eq!(InspectionStatus::Accepted.as_str(), "accepted");
}

#[test]
fn a_finding_alone_starts_the_work_and_a_deleted_one_does_not() {
    let reg = registry();
    let mut doc = new_inspection();
    let mut f = finding("Thiếu biển hướng dẫn");
    f.deleted = true;
    model::add_finding(&mut doc, "f1", &f).unwrap();
    assert_eq!(
        model::read_inspection(&doc, &reg).unwrap().status(),
        InspectionStatus::Scheduled
    );
    model::restore_finding(&mut doc, "f1").unwrap();
    assert_eq!(
        model::read_inspection(&doc, &reg).unwrap().status(),
        InspectionStatus::InProgress
    );
}

#[test]
fn action_status_through_the_lifecycle_and_overdue() {
    let status = |doc: &AutoCommit| model::read_action(doc).unwrap();
    let mut doc = new_action();
    let a = status(&doc);
    assert_eq!(a.status(), ActionStatus::Open);
    assert!(!a.is_overdue("2025-09-30"), "due today is not overdue");
    assert!(a.is_overdue("2025-10-01"));
    assert!(!a.is_overdue("not a date"));

    // A progress note that does not claim "done" leaves it open.
    model::respond_action(&mut doc, "r0", &response(false, T0 + 5)).unwrap();
    assert_eq!(status(&doc).status(), ActionStatus::Open);
    model::respond_action(&mut doc, "r1", &response(true, T0 + 10)).unwrap();
    assert_eq!(status(&doc).status(), ActionStatus::Responded);
    model::verify_action(
        &mut doc,
        "v1",
        &verification(VerificationDecision::Reopened, T0 + 20),
    )
    .unwrap();
    assert_eq!(status(&doc).status(), ActionStatus::Reopened);
    assert!(status(&doc).is_overdue("2025-12-01"));
    model::respond_action(&mut doc, "r2", &response(true, T0 + 30)).unwrap();
    assert_eq!(status(&doc).status(), ActionStatus::Responded);
    model::verify_action(
        &mut doc,
        "v2",
        &verification(VerificationDecision::Closed, T0 + 40),
    )
    .unwrap();
    let closed = status(&doc);
    assert_eq!(closed.status(), ActionStatus::Closed);
    assert!(
        !closed.is_overdue("2025-12-01"),
        "a closed action is never overdue"
    );
}

// ------------------------------------------------------------ causal statuses
//
// A status follows the document's history, never the `at` a writer chose: a
// decision decides the submissions its change had seen, a verification covers
// the responses its change had seen.

/// 9999-12-31T23:59:59Z: a writer whose clock (or intent) is far ahead.
const YEAR_9999: i64 = 253_402_300_799_000;

/// Brings two replicas to the same state.
fn sync_pair(a: &mut AutoCommit, b: &mut AutoCommit) {
    a.merge(b).unwrap();
    b.merge(a).unwrap();
}

fn fork_as(doc: &mut AutoCommit, actor: &[u8]) -> AutoCommit {
    doc.commit();
    doc.fork().with_actor(ActorId::from(actor.to_vec()))
}

fn inspection_status(doc: &AutoCommit) -> InspectionStatus {
    model::read_inspection(doc, &registry()).unwrap().status()
}

fn action_status(doc: &AutoCommit) -> ActionStatus {
    model::read_action(doc).unwrap().status()
}

#[test]
fn a_far_future_submission_does_not_block_acceptance() {
    let mut office = new_inspection();
    let mut tablet = fork_as(&mut office, b"tablet-an");
    model::set_answer(
        &mut tablet,
        "A1",
        &answer(AnswerValue::YesNo(true), "u-an", T0 + 1),
    )
    .unwrap();
    model::submit(&mut tablet, "s1", "u-an", YEAR_9999, None).unwrap();
    tablet.commit();
    sync_pair(&mut office, &mut tablet);
    assert_eq!(inspection_status(&office), InspectionStatus::Submitted);

    model::review_decide(
        &mut office,
        "d1",
        ReviewState::Accepted,
        "u-thu",
        T0 + 20,
        None,
    )
    .unwrap();
    office.commit();
    assert_eq!(inspection_status(&office), InspectionStatus::Accepted);
    sync_pair(&mut office, &mut tablet);
    assert_eq!(inspection_status(&tablet), InspectionStatus::Accepted);
    let read = model::read_inspection(&tablet, &registry()).unwrap();
    assert_eq!(
        read.latest_decision().map(|(id, _)| id.as_str()),
        Some("d1")
    );
}

#[test]
fn a_far_future_done_response_does_not_outlive_the_verification() {
    let mut office = new_action();
    let mut unit = fork_as(&mut office, b"unit-00004");
    model::respond_action(&mut unit, "r1", &response(true, YEAR_9999)).unwrap();
    unit.commit();
    sync_pair(&mut office, &mut unit);
    assert_eq!(action_status(&office), ActionStatus::Responded);

    model::verify_action(
        &mut office,
        "v1",
        &verification(VerificationDecision::Closed, T0 + 20),
    )
    .unwrap();
    office.commit();
    sync_pair(&mut office, &mut unit);
    for doc in [&office, &unit] {
        let a = model::read_action(doc).unwrap();
        assert_eq!(a.status(), ActionStatus::Closed);
        assert!(!a.is_overdue("2026-01-01"));
    }
}

#[test]
fn a_decision_that_had_not_seen_a_second_submission_leaves_it_submitted() {
    let mut office = new_inspection();
    let mut an = fork_as(&mut office, b"tablet-an");
    let mut binh = fork_as(&mut office, b"tablet-binh");
    model::submit(&mut an, "s1", "u-an", T0 + 10, None).unwrap();
    an.commit();
    sync_pair(&mut office, &mut an);
    sync_pair(&mut binh, &mut an);

    // The secretariat accepts what it has (s1) and claims a far-future time;
    // meanwhile Bình hands in more work, seen by no one yet.
    model::review_decide(
        &mut office,
        "d1",
        ReviewState::Accepted,
        "u-thu",
        YEAR_9999,
        None,
    )
    .unwrap();
    office.commit();
    model::submit(&mut binh, "s2", "u-binh", T0 + 15, Some("Bổ sung")).unwrap();
    binh.commit();
    sync_pair(&mut office, &mut binh);
    sync_pair(&mut an, &mut office);
    for doc in [&office, &binh, &an] {
        assert_eq!(inspection_status(doc), InspectionStatus::Submitted);
    }
    let read = model::read_inspection(&office, &registry()).unwrap();
    assert_eq!(
        read.pending_submissions()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        ["s2"]
    );
    assert_eq!(read.seen.claims["d1"], BTreeSet::from(["s1".to_owned()]));

    // A decision made after seeing s2 decides it.
    model::review_decide(
        &mut office,
        "d2",
        ReviewState::Accepted,
        "u-thu",
        T0 + 30,
        None,
    )
    .unwrap();
    office.commit();
    sync_pair(&mut office, &mut binh);
    assert_eq!(inspection_status(&binh), InspectionStatus::Accepted);
    let read = model::read_inspection(&binh, &registry()).unwrap();
    assert_eq!(
        read.seen.claims["d2"],
        BTreeSet::from(["s1".to_owned(), "s2".to_owned()])
    );
    assert_eq!(read.seen.verdicts["d2"], BTreeSet::from(["d1".to_owned()]));
    assert_eq!(
        read.latest_decision().map(|(id, _)| id.as_str()),
        Some("d2")
    );
}

#[test]
fn returned_then_resubmitted_then_accepted_whatever_the_clocks() {
    let mut office = new_inspection();
    let mut tablet = fork_as(&mut office, b"tablet-an");
    model::submit(&mut tablet, "s1", "u-an", T0 + 100, None).unwrap();
    tablet.commit();
    sync_pair(&mut office, &mut tablet);
    model::review_decide(
        &mut office,
        "d1",
        ReviewState::Returned,
        "u-thu",
        T0 + 200,
        Some("Thiếu ảnh"),
    )
    .unwrap();
    office.commit();
    sync_pair(&mut office, &mut tablet);
    assert_eq!(inspection_status(&tablet), InspectionStatus::Returned);

    // The tablet's clock is behind the office's: the resubmission carries an
    // `at` older than the decision it answers, and still counts.
    model::submit(&mut tablet, "s2", "u-an", T0 + 150, None).unwrap();
    tablet.commit();
    assert_eq!(inspection_status(&tablet), InspectionStatus::Submitted);
    sync_pair(&mut office, &mut tablet);
    assert_eq!(inspection_status(&office), InspectionStatus::Submitted);

    model::review_decide(
        &mut office,
        "d2",
        ReviewState::Accepted,
        "u-thu",
        T0 + 140,
        None,
    )
    .unwrap();
    office.commit();
    sync_pair(&mut office, &mut tablet);
    assert_eq!(inspection_status(&tablet), InspectionStatus::Accepted);
    assert_eq!(inspection_status(&office), InspectionStatus::Accepted);
}

#[test]
fn concurrent_decisions_that_disagree_return_the_inspection() {
    let mut office = new_inspection();
    model::submit(&mut office, "s1", "u-an", T0 + 10, None).unwrap();
    let mut thu = fork_as(&mut office, b"secretariat-thu");
    let mut lan = fork_as(&mut office, b"secretariat-lan");
    model::review_decide(
        &mut thu,
        "d-thu",
        ReviewState::Accepted,
        "u-thu",
        YEAR_9999,
        None,
    )
    .unwrap();
    thu.commit();
    model::review_decide(
        &mut lan,
        "d-lan",
        ReviewState::Returned,
        "u-lan",
        T0 + 20,
        Some("Thiếu chữ ký"),
    )
    .unwrap();
    lan.commit();
    sync_pair(&mut thu, &mut lan);
    for doc in [&thu, &lan] {
        assert_eq!(inspection_status(doc), InspectionStatus::Returned);
        let read = model::read_inspection(doc, &registry()).unwrap();
        assert_eq!(
            read.latest_decision().map(|(id, _)| id.as_str()),
            Some("d-lan")
        );
    }

    // Concurrent agreement is just that state.
    let mut a = fork_as(&mut thu, b"secretariat-a");
    let mut b = fork_as(&mut thu, b"secretariat-b");
    model::review_decide(&mut a, "d-a", ReviewState::Accepted, "u-thu", T0 + 30, None).unwrap();
    a.commit();
    model::review_decide(&mut b, "d-b", ReviewState::Accepted, "u-lan", T0 + 31, None).unwrap();
    b.commit();
    sync_pair(&mut a, &mut b);
    assert_eq!(inspection_status(&a), InspectionStatus::Accepted);

    // A decision that has seen both settles it.
    model::review_decide(&mut thu, "d3", ReviewState::Accepted, "u-thu", T0, None).unwrap();
    thu.commit();
    assert_eq!(inspection_status(&thu), InspectionStatus::Accepted);
}

#[test]
fn records_of_one_change_count_in_the_order_they_were_written() {
    let reg = registry();
    // A decision written before a submission in the same (still open)
    // transaction has not seen it, committed or not.
    let mut doc = new_inspection();
    model::review_decide(&mut doc, "d1", ReviewState::Returned, "u-thu", T0 + 9, None).unwrap();
    model::submit(&mut doc, "s1", "u-an", T0 + 1, None).unwrap();
    assert_eq!(inspection_status(&doc), InspectionStatus::Submitted);
    doc.commit();
    assert_eq!(inspection_status(&doc), InspectionStatus::Submitted);
    let loaded = Automerge::load(&doc.save()).unwrap();
    let read = model::read_inspection(&loaded, &reg).unwrap();
    assert_eq!(read.status(), InspectionStatus::Submitted);
    assert_eq!(read.seen.claims["d1"], BTreeSet::new());

    // A submission pending on top of a committed decision at the current
    // heads is not in that decision's history.
    let mut doc = new_inspection();
    model::submit(&mut doc, "s1", "u-an", T0 + 1, None).unwrap();
    doc.commit();
    model::review_decide(&mut doc, "d1", ReviewState::Accepted, "u-thu", T0 + 2, None).unwrap();
    doc.commit();
    model::submit(&mut doc, "s2", "u-an", T0 + 3, None).unwrap();
    assert_eq!(inspection_status(&doc), InspectionStatus::Submitted);

    // Inside an explicit transaction: submit, then decide.
    let mut am = Automerge::load(&doc.save()).unwrap();
    let mut tx = am.transaction();
    model::submit(&mut tx, "s3", "u-an", YEAR_9999, None).unwrap();
    model::review_decide(&mut tx, "d2", ReviewState::Accepted, "u-thu", T0, None).unwrap();
    let read = model::read_inspection(&tx, &reg).unwrap();
    assert_eq!(read.status(), InspectionStatus::Accepted);
    assert_eq!(
        read.seen.claims["d2"],
        BTreeSet::from(["s1".to_owned(), "s2".to_owned(), "s3".to_owned()])
    );
    tx.commit();
    let after = model::read_inspection(&am, &reg).unwrap();
    assert_eq!(after.status(), InspectionStatus::Accepted);
    assert_eq!(after.seen, read.seen);
}

#[test]
fn a_verification_that_had_not_seen_a_later_done_response_leaves_it_responded() {
    let mut office = new_action();
    let mut unit = fork_as(&mut office, b"unit-00004");
    model::respond_action(&mut unit, "r1", &response(true, T0 + 10)).unwrap();
    unit.commit();
    sync_pair(&mut office, &mut unit);

    model::verify_action(
        &mut office,
        "v1",
        &verification(VerificationDecision::Closed, YEAR_9999),
    )
    .unwrap();
    office.commit();
    // The unit adds more evidence before hearing of the closure.
    model::respond_action(&mut unit, "r2", &response(true, T0 + 15)).unwrap();
    unit.commit();
    sync_pair(&mut office, &mut unit);
    for doc in [&office, &unit] {
        assert_eq!(action_status(doc), ActionStatus::Responded);
    }
    let read = model::read_action(&office).unwrap();
    assert_eq!(read.seen.claims["v1"], BTreeSet::from(["r1".to_owned()]));
    assert_eq!(
        read.uncovered_responses()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        ["r2"]
    );

    // A progress note (done: false) the verifier has not seen changes nothing.
    model::verify_action(
        &mut office,
        "v2",
        &verification(VerificationDecision::Closed, T0 + 30),
    )
    .unwrap();
    office.commit();
    model::respond_action(&mut unit, "r3", &response(false, YEAR_9999)).unwrap();
    unit.commit();
    sync_pair(&mut office, &mut unit);
    assert_eq!(action_status(&office), ActionStatus::Closed);
}

#[test]
fn reopened_then_a_new_done_response_is_responded() {
    let mut office = new_action();
    let mut unit = fork_as(&mut office, b"unit-00004");
    model::respond_action(&mut unit, "r1", &response(true, T0 + 10)).unwrap();
    unit.commit();
    sync_pair(&mut office, &mut unit);
    model::verify_action(
        &mut office,
        "v1",
        &verification(VerificationDecision::Reopened, T0 + 20),
    )
    .unwrap();
    office.commit();
    sync_pair(&mut office, &mut unit);
    assert_eq!(action_status(&unit), ActionStatus::Reopened);

    // The unit's clock is behind: its answer to the reopening is dated before it.
    model::respond_action(&mut unit, "r2", &response(true, T0 + 15)).unwrap();
    unit.commit();
    sync_pair(&mut office, &mut unit);
    assert_eq!(action_status(&office), ActionStatus::Responded);

    model::verify_action(
        &mut office,
        "v2",
        &verification(VerificationDecision::Closed, T0 + 12),
    )
    .unwrap();
    office.commit();
    assert_eq!(action_status(&office), ActionStatus::Closed);
    let read = model::read_action(&office).unwrap();
    assert_eq!(
        read.latest_verification().map(|(id, _)| id.as_str()),
        Some("v2")
    );
}

#[test]
fn concurrent_verifications_that_disagree_reopen_the_action() {
    let mut office = new_action();
    model::respond_action(&mut office, "r1", &response(true, T0 + 10)).unwrap();
    let mut secretariat = fork_as(&mut office, b"secretariat-thu");
    let mut inspector = fork_as(&mut office, b"inspector-an");
    model::verify_action(
        &mut secretariat,
        "v-closed",
        &verification(VerificationDecision::Closed, YEAR_9999),
    )
    .unwrap();
    secretariat.commit();
    model::verify_action(
        &mut inspector,
        "v-reopened",
        &verification(VerificationDecision::Reopened, T0 + 20),
    )
    .unwrap();
    inspector.commit();
    sync_pair(&mut secretariat, &mut inspector);
    for doc in [&secretariat, &inspector] {
        assert_eq!(action_status(doc), ActionStatus::Reopened);
    }
}

// ------------------------------------------------------------ tombstones
//
// Entries are never deleted from maps: every "removal" is a write that
// readers interpret, so a concurrent edit is never lost and a peer's delete
// can be refused outright.

/// Whether any operation in the document's history deletes a map key.
fn has_map_delete(doc: &mut AutoCommit) -> bool {
    doc.commit();
    doc.get_changes(&[]).iter().any(|c| {
        automerge::ExpandedChange::from(c)
            .operations
            .iter()
            .any(|op| {
                matches!(op.action, automerge::legacy::OpType::Delete)
                    && matches!(op.key, automerge::legacy::Key::Map(_))
            })
    })
}

#[test]
fn clearing_an_answer_writes_a_cleared_answer() {
    let reg = registry();
    let mut doc = new_inspection();
    model::set_answer(
        &mut doc,
        "A1",
        &answer(AnswerValue::YesNo(true), "u-an", T0 + 1),
    )
    .unwrap();
    model::set_answer(
        &mut doc,
        "A4",
        &answer(AnswerValue::Number(7), "u-an", T0 + 2),
    )
    .unwrap();
    assert_eq!(inspection_status(&doc), InspectionStatus::InProgress);
    model::clear_answer(&mut doc, "A1", "u-binh", T0 + 3).unwrap();
    doc.commit();

    // The key stays, holding a fresh map {cleared, by, at}.
    let (_, a1) = doc.get(answers_obj(&doc), "A1").unwrap().unwrap();
    assert_eq!(doc.keys(&a1).collect::<Vec<_>>(), ["at", "by", "cleared"]);
    let read = model::read_inspection(&doc, &reg).unwrap();
    assert_eq!(
        read.answers.keys().map(String::as_str).collect::<Vec<_>>(),
        ["A4"]
    );
    assert_eq!(model::validate(&doc, &reg), Ok(()));
    assert!(!has_map_delete(&mut doc));

    // Clearing the last answer makes the inspection untouched again.
    model::clear_answer(&mut doc, "A4", "u-an", T0 + 4).unwrap();
    assert_eq!(inspection_status(&doc), InspectionStatus::Scheduled);
    // Answering again replaces the cleared answer.
    model::set_answer(
        &mut doc,
        "A1",
        &answer(AnswerValue::YesNo(false), "u-an", T0 + 5),
    )
    .unwrap();
    let read = model::read_inspection(&doc, &reg).unwrap();
    assert_eq!(read.answers["A1"].value, AnswerValue::YesNo(false));
    assert_eq!(read.status(), InspectionStatus::InProgress);

    // A cleared answer holds nothing else, and needs its author and time.
    let answers = answers_obj(&doc);
    let bad = doc.put_object(&answers, "A2", ObjType::Map).unwrap();
    doc.put(&bad, "cleared", true).unwrap();
    doc.put(&bad, "value", "yes").unwrap();
    doc.put(&bad, "at", ScalarValue::Timestamp(T0)).unwrap();
    doc.commit();
    let errs = errors(&doc);
    assert_eq!(
        errs.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        ["answers/A2/value", "answers/A2/by"],
        "{errs:?}"
    );
    assert_eq!(errs[1].message, "is missing");
}

#[test]
fn a_clear_concurrent_with_an_answer_is_a_conflict_not_a_loss() {
    let (mut an, mut binh) = two_tablets();
    model::set_answer(
        &mut an,
        "A1",
        &answer(AnswerValue::YesNo(true), "u-an", T0 + 1),
    )
    .unwrap();
    an.commit();
    sync_pair(&mut an, &mut binh);
    model::clear_answer(&mut an, "A1", "u-an", T0 + 2).unwrap();
    an.commit();
    model::set_answer(
        &mut binh,
        "A1",
        &answer(AnswerValue::YesNo(false), "u-binh", T0 + 3),
    )
    .unwrap();
    binh.commit();
    sync_pair(&mut an, &mut binh);
    let conflicts = model::conflicts(&an);
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let mut values: Vec<_> = conflicts[0]
        .values
        .iter()
        .map(|v| (v.author.clone().unwrap(), v.value.clone()))
        .collect();
    values.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        values,
        [
            (
                "u-an".to_owned(),
                serde_json::json!({"cleared": true, "by": "u-an", "at": T0 + 2})
            ),
            (
                "u-binh".to_owned(),
                serde_json::json!({"value": "no", "by": "u-binh", "at": T0 + 3})
            ),
        ]
    );
    assert_eq!(model::validate(&an, &registry()), Ok(()));
}

fn photo(c: char) -> PhotoRef {
    PhotoRef {
        sha256: sha(c),
        mime: PhotoMime::Jpeg,
        bytes: 1000,
        width: None,
        height: None,
        taken_at: None,
        item_id: Some("A1".into()),
        finding_id: None,
        caption: Some("Bảng niêm yết".into()),
        by: "u-an".into(),
        at: T0 + 5,
        deleted: false,
    }
}

#[test]
fn photos_are_tombstoned_and_never_replaced() {
    let reg = registry();
    let mut doc = new_inspection();
    model::add_photo(&mut doc, &photo('a')).unwrap();
    model::add_photo(&mut doc, &photo('b')).unwrap();
    assert_eq!(inspection_status(&doc), InspectionStatus::InProgress);

    // Adding the same content again keeps the first record.
    let again = PhotoRef {
        caption: Some("Chụp lại".into()),
        by: "u-binh".into(),
        ..photo('a')
    };
    let photos = doc.get(ROOT, "photos").unwrap().unwrap().1;
    let first = doc.get(&photos, sha('a')).unwrap().unwrap().1;
    model::add_photo(&mut doc, &again).unwrap();
    assert_eq!(doc.get(&photos, sha('a')).unwrap().unwrap().1, first);
    assert_eq!(
        model::read_inspection(&doc, &reg).unwrap().photos[&sha('a')],
        photo('a')
    );

    model::delete_photo(&mut doc, &sha('a')).unwrap();
    let read = model::read_inspection(&doc, &reg).unwrap();
    assert!(read.photos[&sha('a')].deleted);
    assert_eq!(
        read.live_photos()
            .map(|(sha, _)| sha.clone())
            .collect::<Vec<_>>(),
        [sha('b')]
    );
    model::delete_photo(&mut doc, &sha('b')).unwrap();
    assert_eq!(
        inspection_status(&doc),
        InspectionStatus::Scheduled,
        "deleted photos are no work"
    );

    model::restore_photo(&mut doc, &sha('b')).unwrap();
    // Re-adding a deleted photo brings the first record back.
    model::add_photo(&mut doc, &again).unwrap();
    let read = model::read_inspection(&doc, &reg).unwrap();
    assert_eq!(read.photos[&sha('a')], photo('a'));
    assert_eq!(read.photos[&sha('b')], photo('b'));
    assert_eq!(read.live_photos().count(), 2);
    assert!(matches!(
        model::delete_photo(&mut doc, &sha('c')),
        Err(ModelError::NotFound { path }) if path == format!("photos/{}", sha('c'))
    ));
    assert_eq!(model::validate(&doc, &reg), Ok(()));
    assert!(!has_map_delete(&mut doc));

    // `deleted` must be a boolean.
    let p = doc.get(&photos, sha('a')).unwrap().unwrap().1;
    doc.put(&p, "deleted", "yes").unwrap();
    assert_eq!(
        errors(&doc),
        [ValidationError {
            path: format!("photos/{}/deleted", sha('a')),
            message: "must be a boolean, found a string".into(),
        }]
    );
}

#[test]
fn review_comments_are_tombstoned() {
    let reg = registry();
    let mut doc = new_inspection();
    for (id, text) in [("c1", "Bổ sung ảnh"), ("c2", "Sai số liệu")] {
        model::review_comment(&mut doc, id, &CommentTarget::General, text, "u-thu", T0).unwrap();
    }
    model::delete_comment(&mut doc, "c1").unwrap();
    let read = model::read_inspection(&doc, &reg).unwrap();
    assert!(read.comments["c1"].deleted);
    assert_eq!(read.comments["c1"].text, "Bổ sung ảnh");
    assert!(!read.comments["c2"].deleted);
    assert_eq!(
        read.live_comments()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        ["c2"]
    );
    model::restore_comment(&mut doc, "c1").unwrap();
    let read = model::read_inspection(&doc, &reg).unwrap();
    assert_eq!(read.live_comments().count(), 2);
    assert!(matches!(
        model::delete_comment(&mut doc, "c9"),
        Err(ModelError::NotFound { path }) if path == "review/comments/c9"
    ));
    assert_eq!(model::validate(&doc, &reg), Ok(()));
    assert!(!has_map_delete(&mut doc));
}

#[test]
fn no_inspection_writer_deletes_a_key() {
    let reg = registry();
    let mut doc = new_inspection();
    model::set_member(&mut doc, "u-binh", None).unwrap();
    model::add_finding(&mut doc, "f1", &finding("Thiếu biển")).unwrap();
    model::add_finding_photo(&mut doc, "f1", &sha('c')).unwrap();
    model::remove_finding_photo(&mut doc, "f1", &sha('a')).unwrap();
    model::update_finding_item(&mut doc, "f1", None).unwrap();
    model::delete_finding(&mut doc, "f1").unwrap();
    model::restore_finding(&mut doc, "f1").unwrap();
    doc.commit();
    assert!(!has_map_delete(&mut doc));
    assert_eq!(model::validate(&doc, &reg), Ok(()));

    let read = model::read_inspection(&doc, &reg).unwrap();
    assert_eq!(
        read.header.members,
        BTreeMap::from([("u-an".to_owned(), MemberRole::Lead)])
    );
    let f1 = &read.findings["f1"];
    assert_eq!(f1.photos, BTreeSet::from([sha('c')]));
    assert_eq!(f1.item_id, None);
    assert!(!f1.deleted);
    // The tombstones are what is stored.
    let h = doc.get(ROOT, "header").unwrap().unwrap().1;
    let m = doc.get(&h, "members").unwrap().unwrap().1;
    assert_eq!(
        doc.get(&m, "u-binh").unwrap().unwrap().0,
        automerge::Value::from(model::MEMBER_REMOVED)
    );
    let f = doc.get(findings_obj(&doc), "f1").unwrap().unwrap().1;
    let photos = doc.get(&f, "photos").unwrap().unwrap().1;
    assert_eq!(
        doc.get(&photos, sha('a')).unwrap().unwrap().0,
        automerge::Value::from(false)
    );
    assert_eq!(
        doc.get(&f, "deleted").unwrap().unwrap().0,
        automerge::Value::from(false)
    );
    assert_eq!(
        doc.get(&f, "item_id").unwrap().unwrap().0,
        automerge::Value::from(ScalarValue::Null)
    );

    // Re-adding a member and re-linking an item overwrite the tombstones.
    model::set_member(&mut doc, "u-binh", Some(MemberRole::Member)).unwrap();
    model::update_finding_item(&mut doc, "f1", Some("B8")).unwrap();
    let read = model::read_inspection(&doc, &reg).unwrap();
    assert_eq!(read.header.members["u-binh"], MemberRole::Member);
    assert_eq!(read.findings["f1"].item_id.as_deref(), Some("B8"));
}

// ------------------------------------------------------------ conflicts

/// Two inspectors on their own tablets, both starting from the same inspection.
fn two_tablets() -> (AutoCommit, AutoCommit) {
    let mut base = new_inspection();
    model::add_finding(&mut base, "f1", &finding("Thiếu đầu đọc chip")).unwrap();
    base.commit();
    let mut an = base.fork().with_actor(ActorId::from(b"tablet-an".to_vec()));
    let binh = base
        .fork()
        .with_actor(ActorId::from(b"tablet-binh".to_vec()));
    an.commit();
    (an, binh)
}

#[test]
fn concurrent_answers_are_listed_with_their_authors() {
    let (mut an, mut binh) = two_tablets();
    model::set_answer(
        &mut an,
        "A2",
        &answer(AnswerValue::YesNoPartial(Tri::Yes), "u-an", T0 + 1),
    )
    .unwrap();
    an.commit();
    model::set_answer(
        &mut binh,
        "A2",
        &answer(AnswerValue::YesNoPartial(Tri::Partial), "u-binh", T0 + 2),
    )
    .unwrap();
    binh.commit();
    an.merge(&mut binh).unwrap();

    let conflicts = model::conflicts(&an);
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let c = &conflicts[0];
    assert_eq!(c.path, "answers/A2");
    assert_eq!(c.item_id.as_deref(), Some("A2"));
    assert_eq!(c.finding_id, None);
    let mut seen: Vec<_> = c
        .values
        .iter()
        .map(|v| {
            (
                v.author.clone().unwrap(),
                v.at.unwrap(),
                v.value["value"].clone(),
                v.actor.clone(),
            )
        })
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        [
            (
                "u-an".to_owned(),
                T0 + 1,
                serde_json::json!("yes"),
                hex::encode(b"tablet-an")
            ),
            (
                "u-binh".to_owned(),
                T0 + 2,
                serde_json::json!("partial"),
                hex::encode(b"tablet-binh")
            ),
        ]
    );
    // The reader shows the winner, which is the last listed value.
    let read = model::read_inspection(&an, &registry()).unwrap();
    assert_eq!(Some(read.answers["A2"].by.clone()), c.values[1].author);
    // The same conflict is seen on the other replica, in the same order.
    binh.merge(&mut an).unwrap();
    assert_eq!(model::conflicts(&binh), conflicts);
    // A conflict is not a validation error: both values are valid answers.
    assert_eq!(model::validate(&an, &registry()), Ok(()));
}

#[test]
fn concurrent_finding_title_is_listed() {
    let (mut an, mut binh) = two_tablets();
    model::update_finding_title(&mut an, "f1", "Thiếu đầu đọc chip CCCD").unwrap();
    an.commit();
    model::update_finding_title(&mut binh, "f1", "Không có đầu đọc").unwrap();
    binh.commit();
    an.merge(&mut binh).unwrap();
    let conflicts = model::conflicts(&an);
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].path, "findings/f1/title");
    assert_eq!(conflicts[0].finding_id.as_deref(), Some("f1"));
    let mut titles: Vec<_> = conflicts[0]
        .values
        .iter()
        .map(|v| v.value.clone())
        .collect();
    titles.sort_by_key(|v| v.to_string());
    assert_eq!(
        titles,
        [
            serde_json::json!("Không có đầu đọc"),
            serde_json::json!("Thiếu đầu đọc chip CCCD")
        ]
    );
    assert!(conflicts[0].values.iter().all(|v| v.author.is_none()));
}

#[test]
fn conflicts_with_names_the_registered_user_behind_each_actor() {
    let (mut an, mut binh) = two_tablets();
    model::update_finding_title(&mut an, "f1", "Thiếu đầu đọc chip CCCD").unwrap();
    // Bình's tablet claims to be An inside the answer it writes.
    model::set_answer(
        &mut an,
        "A2",
        &answer(AnswerValue::YesNoPartial(Tri::Yes), "u-an", T0 + 1),
    )
    .unwrap();
    an.commit();
    model::update_finding_title(&mut binh, "f1", "Không có đầu đọc").unwrap();
    model::set_answer(
        &mut binh,
        "A2",
        &answer(AnswerValue::YesNoPartial(Tri::No), "u-an", T0 + 2),
    )
    .unwrap();
    binh.commit();
    an.merge(&mut binh).unwrap();

    // Only Bình's tablet is registered.
    let resolve =
        |actor: &ActorId| (actor.to_bytes() == b"tablet-binh").then(|| "u-binh".to_owned());
    let conflicts = model::conflicts_with(&an, &resolve);
    assert_eq!(
        conflicts
            .iter()
            .map(|c| c.path.as_str())
            .collect::<Vec<_>>(),
        ["answers/A2", "findings/f1/title"]
    );
    let by_actor = |c: &model::Conflict| {
        let mut v: Vec<_> = c
            .values
            .iter()
            .map(|v| (v.actor.clone(), v.author.clone(), v.by.clone()))
            .collect();
        v.sort();
        v
    };
    let (an_hex, binh_hex) = (hex::encode(b"tablet-an"), hex::encode(b"tablet-binh"));
    assert_eq!(
        by_actor(&conflicts[0]),
        [
            // Unknown actor: the `by` inside the value stands.
            (
                an_hex.clone(),
                Some("u-an".to_owned()),
                Some("u-an".to_owned())
            ),
            // Known actor: the registered user, whatever the value claims.
            (
                binh_hex.clone(),
                Some("u-binh".to_owned()),
                Some("u-an".to_owned())
            ),
        ]
    );
    assert_eq!(
        by_actor(&conflicts[1]),
        [
            (an_hex, None, None),
            (binh_hex, Some("u-binh".to_owned()), None),
        ]
    );
    // Without a resolver the values are the same, authored by their `by`.
    let plain = model::conflicts(&an);
    assert_eq!(plain.len(), 2);
    assert_eq!(
        plain[0]
            .values
            .iter()
            .map(|v| v.author.clone())
            .collect::<Vec<_>>(),
        [Some("u-an".to_owned()), Some("u-an".to_owned())]
    );
    for (p, r) in plain.iter().zip(&conflicts) {
        let values =
            |c: &model::Conflict| c.values.iter().map(|v| v.value.clone()).collect::<Vec<_>>();
        assert_eq!(values(p), values(r));
    }
}

#[test]
fn concurrent_edits_of_different_things_do_not_conflict() {
    let (mut an, mut binh) = two_tablets();
    model::set_answer(
        &mut an,
        "A1",
        &answer(AnswerValue::YesNo(true), "u-an", T0 + 1),
    )
    .unwrap();
    model::update_finding_title(&mut an, "f1", "Tiêu đề mới").unwrap();
    model::splice_finding_note(&mut an, "f1", 0, 0, "An: ").unwrap();
    an.commit();
    model::set_answer(
        &mut binh,
        "A2",
        &answer(AnswerValue::YesNoPartial(Tri::No), "u-binh", T0 + 2),
    )
    .unwrap();
    model::update_finding_severity(&mut binh, "f1", Severity::High).unwrap();
    model::splice_finding_note(&mut binh, "f1", 23, 0, " (Bình)").unwrap();
    model::add_finding(&mut binh, "f2", &finding("Phát hiện khác")).unwrap();
    binh.commit();
    an.merge(&mut binh).unwrap();
    assert_eq!(model::conflicts(&an), []);
    let read = model::read_inspection(&an, &registry()).unwrap();
    assert_eq!(
        read.answers.keys().map(String::as_str).collect::<Vec<_>>(),
        ["A1", "A2"]
    );
    let f1 = &read.findings["f1"];
    assert_eq!(f1.title, "Tiêu đề mới");
    assert_eq!(f1.severity, Severity::High);
    assert_eq!(f1.note, "An: Cán bộ yêu cầu bản giấy (Bình)");
    assert_eq!(read.findings.len(), 2);
}

#[test]
fn settling_removes_the_conflict_and_history_keeps_both_values() {
    let (mut an, mut binh) = two_tablets();
    model::set_answer(
        &mut an,
        "A4",
        &answer(AnswerValue::Number(3), "u-an", T0 + 1),
    )
    .unwrap();
    an.commit();
    model::set_answer(
        &mut binh,
        "A4",
        &answer(AnswerValue::Number(5), "u-binh", T0 + 2),
    )
    .unwrap();
    binh.commit();
    an.merge(&mut binh).unwrap();
    let conflicted_heads = an.get_heads();
    assert_eq!(model::conflicts(&an).len(), 1);

    model::settle_answer(
        &mut an,
        "A4",
        &answer(AnswerValue::Number(4), "u-an", T0 + 3),
    )
    .unwrap();
    an.commit();
    assert_eq!(model::conflicts(&an), []);
    let read = model::read_inspection(&an, &registry()).unwrap();
    assert_eq!(read.answers["A4"].value, AnswerValue::Number(4));

    // History still holds both settled values.
    let answers = answers_obj(&an);
    let old = an.get_all_at(&answers, "A4", &conflicted_heads).unwrap();
    let mut numbers: Vec<i64> = old
        .iter()
        .map(|(_, id)| {
            match an
                .get_at(id, "value", &conflicted_heads)
                .unwrap()
                .unwrap()
                .0
            {
                automerge::Value::Scalar(s) => match s.as_ref() {
                    ScalarValue::Int(n) => *n,
                    other => panic!("unexpected {other:?}"),
                },
                other => panic!("unexpected {other:?}"),
            }
        })
        .collect();
    numbers.sort();
    assert_eq!(numbers, [3, 5]);
    // And a replica that merges the settlement sees no conflict either.
    binh.merge(&mut an).unwrap();
    assert_eq!(model::conflicts(&binh), []);
}

#[test]
fn validation_survives_hostile_shapes() {
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "kind", "inspection").unwrap();
    doc.put(ROOT, "schema", 1_i64).unwrap(); // an int schema is accepted, like any uint
    doc.put_object(ROOT, "header", ObjType::List).unwrap();
    doc.put(ROOT, "answers", "x").unwrap();
    let findings = doc.put_object(ROOT, "findings", ObjType::Map).unwrap();
    doc.put(&findings, "bad/id", true).unwrap();
    let photos = doc.put_object(ROOT, "photos", ObjType::Map).unwrap();
    doc.put_object(&photos, sha('e'), ObjType::Text).unwrap();
    let review = doc.put_object(ROOT, "review", ObjType::Map).unwrap();
    doc.put(&review, "decisions", ScalarValue::F64(1.5))
        .unwrap();
    doc.put_object(&review, "comments", ObjType::Map).unwrap();
    doc.commit();
    assert_eq!(
        errors(&doc),
        [
            ValidationError {
                path: "header".into(),
                message: "must be a map, found a list".into()
            },
            ValidationError {
                path: "answers".into(),
                message: "must be a map, found a string".into()
            },
            ValidationError {
                path: "findings/bad/id".into(),
                message: "key is not an id".into()
            },
            ValidationError {
                path: format!("photos/{}", sha('e')),
                message: "must be a map, found a string".into()
            },
            ValidationError {
                path: "submissions".into(),
                message: "is missing".into()
            },
            ValidationError {
                path: "review/decisions".into(),
                message: "must be a map, found a float".into()
            },
        ]
    );
    let err = model::read_inspection(&doc, &registry()).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "document is not valid: header: must be a map, found a list (and 5 more problems)"
        ),
        "{err}"
    );
    // No conflicts to show, and no panic on the odd shapes.
    assert_eq!(model::conflicts(&doc), []);
}
