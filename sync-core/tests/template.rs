//! Tests for the checklist template format against the real Đề án 06 checklist and
//! against small hand-written templates, one per loading error.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sync_core::template::{
    AnswerError, AnswerType, AnswerValue, Assessment, DateError, EvidenceType, FieldError,
    FieldFormat, FieldProblem, TargetOp, TargetValue, Template, TemplateError, TemplateRegistry,
    Tri, parse_dd_mm_yyyy,
};

const DA06: &str = include_str!("data/checklist_de_an_06.json");

fn da06() -> Template {
    Template::from_json(DA06).unwrap()
}

fn no_fields() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn check(t: &Template, item: &str, v: AnswerValue) -> Result<Assessment, AnswerError> {
    t.check_answer(item, &v, &no_fields())
}

fn met(target_met: Option<bool>, percent: Option<f64>) -> Assessment {
    Assessment {
        target_met,
        percent,
    }
}

fn pct(numerator: u64, denominator: u64) -> AnswerValue {
    AnswerValue::Percentage {
        numerator,
        denominator,
    }
}

/// A one-section template around the given items.
fn with_items(items: Value) -> Value {
    json!({
        "template_id": "T1",
        "title_vi": "Phiếu thử",
        "sections": [{ "id": "A", "title_vi": "Mục A", "items": items }]
    })
}

fn item(id: &str, ty: &str) -> Value {
    json!({ "id": id, "text_vi": "Câu hỏi", "type": ty, "target": null })
}

fn load(v: &Value) -> Result<Template, TemplateError> {
    Template::from_json(&v.to_string())
}

fn load_err(v: &Value) -> TemplateError {
    load(v).unwrap_err()
}

/// The real checklist as a JSON value, for targeted edits.
fn da06_value() -> Value {
    serde_json::from_str(DA06).unwrap()
}

fn da06_item_mut<'a>(v: &'a mut Value, id: &str) -> &'a mut Value {
    v["sections"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .flat_map(|s| s["items"].as_array_mut().unwrap().iter_mut())
        .find(|i| i["id"] == id)
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// The real checklist
// ---------------------------------------------------------------------------------------

#[test]
fn da06_checklist_loads_with_every_answer_type() {
    let t = da06();
    assert_eq!(t.template_id, "DA06-HN-2025-v1");
    assert_eq!(t.version, 1);
    assert_eq!(t.key(), "DA06-HN-2025-v1@1");
    assert_eq!(t.locale.as_deref(), Some("vi-VN"));
    assert_eq!(
        t.title_en.as_deref(),
        Some("Inspection checklist: implementation of Project 06 (2025)")
    );
    assert_eq!(t.sections.len(), 7);
    let section_ids: Vec<&str> = t.sections.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(section_ids, ["A", "B", "C", "D", "E", "F", "G"]);
    assert_eq!(t.items().count(), 30);
    for ty in AnswerType::ALL {
        assert!(
            t.items().any(|i| i.answer_type == ty),
            "no item of type {ty}"
        );
    }
    // Keys the loader does not interpret are kept, not dropped.
    assert!(t.extra.contains_key("status"));
    assert!(t.extra.contains_key("reporting"));
    assert_eq!(t.extra["item_count"], json!(30));
}

#[test]
fn da06_items_carry_their_details() {
    let t = da06();
    let a1 = t.item("A1").unwrap();
    assert_eq!(a1.answer_type, AnswerType::YesNo);
    assert!(a1.evidence_required);
    assert_eq!(a1.evidence_types, [EvidenceType::Document]);
    assert_eq!(a1.applies_to, ["so_nganh", "xa_phuong"]);
    assert_eq!(a1.fields.len(), 2);
    assert_eq!(a1.fields[0].key, "so_ky_hieu");
    assert!(
        a1.fields[0]
            .pattern
            .as_deref()
            .unwrap()
            .starts_with("^\\d+")
    );
    assert_eq!(a1.fields[1].format, Some(FieldFormat::DdMmYyyy));
    let target = a1.target.as_ref().unwrap();
    assert_eq!(target.op, TargetOp::Eq);
    assert_eq!(target.value, Some(TargetValue::Choice(Tri::Yes)));

    let a3 = t.item("A3").unwrap();
    assert_eq!(
        a3.numerator_label_vi.as_deref(),
        Some("Số kỳ báo cáo đúng hạn")
    );
    assert_eq!(
        a3.target.as_ref().unwrap().value,
        Some(TargetValue::Number(100.0))
    );
    assert_eq!(a3.target.as_ref().unwrap().unit.as_deref(), Some("%"));

    assert_eq!(t.item("A4").unwrap().min_photos, 1);
    assert_eq!(t.item("B8").unwrap().sample_size, Some(10));
    assert_eq!(t.item("B8").unwrap().min_photos, 2);
    assert!(t.item("F5").unwrap().comment_required_if_nonzero);
    assert_eq!(t.item("D2").unwrap().target.as_ref().unwrap().value, None);
    assert_eq!(t.item("G1").unwrap().target, None);
    let g2 = t.item("G2").unwrap();
    assert_eq!(g2.fields.len(), 4);
    assert_eq!(g2.fields[3].options.len(), 4);
    let g3 = t.item("G3").unwrap();
    let values: Vec<&str> = g3.options.iter().map(|o| o.value.as_str()).collect();
    assert_eq!(values, ["tot", "kha", "trung_binh", "yeu"]);
    assert_eq!(g3.options[0].label_en.as_deref(), Some("Good"));
    assert!(t.item("Z9").is_none());
}

#[test]
fn content_hash_ignores_formatting_but_not_content() {
    let t = da06();
    let sha = t.content_sha256();
    assert_eq!(sha.len(), 64);
    assert!(
        sha.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    // Compact re-serialisation (different whitespace) hashes the same.
    let compact = serde_json::to_string(&da06_value()).unwrap();
    assert_eq!(Template::from_json(&compact).unwrap().content_sha256(), sha);
    // The canonical form loads back to the same hash and the same template.
    let again = Template::from_json(t.canonical_json()).unwrap();
    assert_eq!(again.content_sha256(), sha);
    assert_eq!(again, t);
    // Keys are sorted in the canonical form.
    assert!(t.canonical_json().starts_with("{\"answer_types\":"));
    // Any change of content, even outside the items, changes the hash.
    let mut v = da06_value();
    v["status"] = json!("OFFICIAL");
    assert_ne!(load(&v).unwrap().content_sha256(), sha);
}

#[test]
fn version_defaults_to_1_and_is_read_when_present() {
    let mut v = with_items(json!([item("A1", "yes_no")]));
    assert_eq!(load(&v).unwrap().key(), "T1@1");
    v["version"] = json!(3);
    assert_eq!(load(&v).unwrap().key(), "T1@3");
    for bad in [
        json!(0),
        json!(-1),
        json!(1.5),
        json!("2"),
        json!(4_294_967_296_u64),
    ] {
        v["version"] = bad;
        assert!(
            matches!(load_err(&v), TemplateError::InvalidVersion { .. }),
            "{v}"
        );
    }
}

#[test]
fn serde_deserialize_validates_like_from_json() {
    let t: Template = serde_json::from_str(DA06).unwrap();
    assert_eq!(t, da06());
    let bad = with_items(json!([item("A1", "yes_maybe")]));
    let err = serde_json::from_str::<Template>(&bad.to_string()).unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown answer type \"yes_maybe\""),
        "{err}"
    );
    // Serialising keeps the template's own key names.
    let out = serde_json::to_value(&t).unwrap();
    assert_eq!(out["sections"][0]["items"][0]["type"], json!("yes_no"));
    assert_eq!(out["sections"][0]["items"][0]["target"]["op"], json!("="));
    assert_eq!(
        out["sections"][0]["items"][0]["target"]["value"],
        json!("yes")
    );
    assert_eq!(out["template_id"], json!("DA06-HN-2025-v1"));
    assert_eq!(out["status"], t.extra["status"]);
}

#[test]
fn unknown_keys_are_tolerated_and_kept() {
    let mut it = item("A1", "number");
    it["hint_vi"] = json!("Ghi rõ số");
    it["weight"] = json!(2);
    let mut v = with_items(json!([it]));
    v["sections"][0]["order"] = json!(1);
    let t = load(&v).unwrap();
    let a1 = t.item("A1").unwrap();
    assert_eq!(a1.extra["hint_vi"], json!("Ghi rõ số"));
    assert_eq!(a1.extra["weight"], json!(2));
    assert_eq!(t.sections[0].extra["order"], json!(1));
}

// ---------------------------------------------------------------------------------------
// Answers, per type
// ---------------------------------------------------------------------------------------

#[test]
fn yes_no_answers() {
    let t = da06();
    assert_eq!(
        check(&t, "A1", AnswerValue::YesNo(true)).unwrap(),
        met(Some(true), None)
    );
    assert_eq!(
        check(&t, "A1", AnswerValue::YesNo(false)).unwrap(),
        met(Some(false), None)
    );
    let err = check(&t, "A1", AnswerValue::YesNoPartial(Tri::Yes)).unwrap_err();
    assert_eq!(
        err,
        AnswerError::WrongValueType {
            item: "A1".into(),
            expected: AnswerType::YesNo,
            found: AnswerType::YesNoPartial,
        }
    );
    assert_eq!(
        err.to_string(),
        "item A1 (yes_no) expects yes or no, got a yes_no_partial value"
    );
}

#[test]
fn yes_no_partial_answers() {
    let t = da06();
    assert_eq!(
        check(&t, "A2", AnswerValue::YesNoPartial(Tri::Yes)).unwrap(),
        met(Some(true), None)
    );
    assert_eq!(
        check(&t, "A2", AnswerValue::YesNoPartial(Tri::Partial)).unwrap(),
        met(Some(false), None)
    );
    assert_eq!(
        check(&t, "A2", AnswerValue::YesNoPartial(Tri::No)).unwrap(),
        met(Some(false), None)
    );
    let err = check(&t, "A2", AnswerValue::YesNo(true)).unwrap_err();
    assert!(matches!(
        err,
        AnswerError::WrongValueType {
            expected: AnswerType::YesNoPartial,
            ..
        }
    ));
    assert!(err.to_string().contains("item A2"), "{err}");
    assert!(err.to_string().contains("yes, partial or no"), "{err}");
}

#[test]
fn yes_no_partial_target_uses_rank_for_ordering_ops() {
    let mut it = item("Q", "yes_no_partial");
    it["target"] = json!({ "op": ">=", "value": "partial" });
    let t = load(&with_items(json!([it]))).unwrap();
    let got = |v| {
        check(&t, "Q", AnswerValue::YesNoPartial(v))
            .unwrap()
            .target_met
    };
    assert_eq!(got(Tri::Yes), Some(true));
    assert_eq!(got(Tri::Partial), Some(true));
    assert_eq!(got(Tri::No), Some(false));
}

#[test]
fn percentage_answers() {
    let t = da06();
    assert_eq!(
        check(&t, "A3", pct(10, 10)).unwrap(),
        met(Some(true), Some(100.0))
    );
    assert_eq!(
        check(&t, "A3", pct(9, 10)).unwrap(),
        met(Some(false), Some(90.0))
    );
    assert_eq!(
        check(&t, "A3", pct(0, 12)).unwrap(),
        met(Some(false), Some(0.0))
    );
    // B2 targets ≥ 80 %: exactly 80 % meets it, without rounding surprises.
    assert_eq!(
        check(&t, "B2", pct(8, 10)).unwrap(),
        met(Some(true), Some(80.0))
    );
    assert_eq!(
        check(&t, "B2", pct(799, 1000)).unwrap().target_met,
        Some(false)
    );
    let third = check(&t, "B5", pct(1, 3)).unwrap();
    assert_eq!(third.target_met, Some(false));
    assert!((third.percent.unwrap() - 33.333_333).abs() < 1e-4);
}

#[test]
fn percentage_rejections() {
    let t = da06();
    let err = check(&t, "A3", pct(12, 10)).unwrap_err();
    assert_eq!(
        err,
        AnswerError::NumeratorExceedsDenominator {
            item: "A3".into(),
            numerator: 12,
            denominator: 10
        }
    );
    assert_eq!(
        err.to_string(),
        "item A3 (percentage): numerator 12 is greater than denominator 10"
    );
    let err = check(&t, "A3", pct(0, 0)).unwrap_err();
    assert_eq!(err, AnswerError::ZeroDenominator { item: "A3".into() });
    assert!(err.to_string().contains("n/a"), "{err}");
    let err = check(&t, "B1", pct(1, 2_000_000_000_000)).unwrap_err();
    assert!(
        matches!(err, AnswerError::NumberTooLarge { ref item, value: 2_000_000_000_000, .. } if item == "B1")
    );
    let err = check(&t, "A3", AnswerValue::Number(10)).unwrap_err();
    assert!(matches!(
        err,
        AnswerError::WrongValueType {
            expected: AnswerType::Percentage,
            found: AnswerType::Number,
            ..
        }
    ));
}

#[test]
fn percentage_without_target_still_reports_percent() {
    let t = load(&with_items(json!([item("P", "percentage")]))).unwrap();
    assert_eq!(check(&t, "P", pct(1, 4)).unwrap(), met(None, Some(25.0)));
}

#[test]
fn number_answers() {
    let t = da06();
    // A4: at least 1 session.
    assert_eq!(
        check(&t, "A4", AnswerValue::Number(1)).unwrap(),
        met(Some(true), None)
    );
    assert_eq!(
        check(&t, "A4", AnswerValue::Number(0)).unwrap(),
        met(Some(false), None)
    );
    // F5: exactly 0 incidents.
    assert_eq!(
        check(&t, "F5", AnswerValue::Number(0)).unwrap(),
        met(Some(true), None)
    );
    assert_eq!(
        check(&t, "F5", AnswerValue::Number(2)).unwrap(),
        met(Some(false), None)
    );
    // D2: target set per unit, not in the template.
    assert_eq!(
        check(&t, "D2", AnswerValue::Number(250)).unwrap(),
        met(None, None)
    );
    assert_eq!(
        check(&t, "D2", AnswerValue::Number(1_000_000_000_000)).unwrap(),
        met(None, None)
    );
}

#[test]
fn number_rejections() {
    let t = da06();
    let err = check(&t, "A4", AnswerValue::Number(-1)).unwrap_err();
    assert_eq!(
        err,
        AnswerError::NegativeNumber {
            item: "A4".into(),
            value: -1
        }
    );
    assert!(err.to_string().contains("item A4"), "{err}");
    let err = check(&t, "D2", AnswerValue::Number(1_000_000_000_001)).unwrap_err();
    assert!(matches!(err, AnswerError::NumberTooLarge { ref item, .. } if item == "D2"));
    let err = check(&t, "A4", AnswerValue::Number(i64::MIN)).unwrap_err();
    assert!(matches!(err, AnswerError::NegativeNumber { .. }));
    let err = check(&t, "A4", AnswerValue::Text("3".into())).unwrap_err();
    assert!(matches!(
        err,
        AnswerError::WrongValueType {
            expected: AnswerType::Number,
            found: AnswerType::Text,
            ..
        }
    ));
}

#[test]
fn text_answers() {
    let t = da06();
    let ok = check(
        &t,
        "G1",
        AnswerValue::Text("Chưa số hóa hồ sơ hộ tịch".into()),
    )
    .unwrap();
    assert_eq!(ok, met(None, None));
    // The limit counts characters, not bytes: 20 000 Vietnamese letters pass.
    assert_eq!(
        check(&t, "G1", AnswerValue::Text("ệ".repeat(20_000))).unwrap(),
        met(None, None)
    );
    let err = check(&t, "G1", AnswerValue::Text("ệ".repeat(20_001))).unwrap_err();
    assert_eq!(
        err,
        AnswerError::TextTooLong {
            item: "G1".into(),
            chars: 20_001,
            limit: 20_000
        }
    );
    let err = check(&t, "G1", AnswerValue::Text(" \n\t".into())).unwrap_err();
    assert_eq!(err, AnswerError::EmptyText { item: "G1".into() });
    assert!(err.to_string().contains("item G1"));
    let err = check(&t, "G1", AnswerValue::Select("tot".into())).unwrap_err();
    assert!(matches!(
        err,
        AnswerError::WrongValueType {
            expected: AnswerType::Text,
            ..
        }
    ));
}

#[test]
fn select_answers() {
    let t = da06();
    for v in ["tot", "kha", "trung_binh", "yeu"] {
        assert_eq!(
            check(&t, "G3", AnswerValue::Select(v.into())).unwrap(),
            met(None, None)
        );
    }
    let err = check(&t, "G3", AnswerValue::Select("xuat_sac".into())).unwrap_err();
    assert!(
        matches!(err, AnswerError::UnknownOption { ref item, ref value, .. } if item == "G3" && value == "xuat_sac")
    );
    assert_eq!(
        err.to_string(),
        "item G3 (select): \"xuat_sac\" is not an option; accepted: \"tot\", \"kha\", \"trung_binh\", \"yeu\""
    );
    // Labels are not values.
    assert!(check(&t, "G3", AnswerValue::Select("Tốt".into())).is_err());
}

fn actions(entries: &[(&str, &[(&str, &str)])]) -> AnswerValue {
    AnswerValue::ActionList(
        entries
            .iter()
            .map(|(id, kv)| ((*id).to_owned(), fields(kv)))
            .collect(),
    )
}

#[test]
fn action_list_answers() {
    let t = da06();
    let good = actions(&[
        (
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            &[
                ("noi_dung", "Ban hành kế hoạch số hóa hồ sơ"),
                ("chiu_trach_nhiem", "Văn phòng UBND phường"),
                ("thoi_han", "31/12/2025"),
                ("trang_thai", "Chưa thực hiện"),
            ],
        ),
        (
            "e2",
            &[("noi_dung", "Cập nhật dữ liệu"), ("thoi_han", "29/02/2028")],
        ),
    ]);
    assert_eq!(check(&t, "G2", good).unwrap(), met(None, None));
    // No corrective actions at all is a valid answer.
    assert_eq!(check(&t, "G2", actions(&[])).unwrap(), met(None, None));
}

#[test]
fn action_list_rejections() {
    let t = da06();
    let err = check(&t, "G2", actions(&[("e1", &[("noi_dung", "Khắc phục")])])).unwrap_err();
    assert_eq!(
        err,
        AnswerError::Field(Box::new(FieldError {
            item: "G2".into(),
            entry: Some("e1".into()),
            field: "thoi_han".into(),
            problem: FieldProblem::Missing,
        }))
    );
    assert_eq!(
        err.to_string(),
        "item G2, entry e1: field thoi_han is required and is missing or empty"
    );

    let err = check(
        &t,
        "G2",
        actions(&[("e1", &[("noi_dung", "  "), ("thoi_han", "01/01/2026")])]),
    )
    .unwrap_err();
    let f = err.field().unwrap();
    assert_eq!(
        (f.field.as_str(), &f.problem),
        ("noi_dung", &FieldProblem::Missing)
    );

    let err = check(
        &t,
        "G2",
        actions(&[("e1", &[("noi_dung", "x"), ("thoi_han", "31/02/2025")])]),
    )
    .unwrap_err();
    let f = err.field().unwrap();
    assert_eq!(
        (f.item.as_str(), f.entry.as_deref(), f.field.as_str()),
        ("G2", Some("e1"), "thoi_han")
    );
    assert_eq!(
        f.problem,
        FieldProblem::InvalidDate {
            value: "31/02/2025".into(),
            reason: DateError::NoSuchDay {
                day: 31,
                month: 2,
                year: 2025,
                days_in_month: 28
            },
        }
    );
    assert!(
        err.to_string()
            .starts_with("item G2, entry e1: field thoi_han value \"31/02/2025\""),
        "{err}"
    );

    let err = check(
        &t,
        "G2",
        actions(&[(
            "e1",
            &[
                ("noi_dung", "x"),
                ("thoi_han", "01/01/2026"),
                ("trang_thai", "Xong"),
            ],
        )]),
    )
    .unwrap_err();
    let f = err.field().unwrap();
    assert_eq!(f.field, "trang_thai");
    assert!(matches!(f.problem, FieldProblem::NotAnOption { ref value, .. } if value == "Xong"));
    assert!(err.to_string().contains("\"Đã hoàn thành\""), "{err}");

    let err = check(
        &t,
        "G2",
        actions(&[(
            "e1",
            &[
                ("noi_dung", "x"),
                ("thoi_han", "01/01/2026"),
                ("ghi_chu", "y"),
            ],
        )]),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "item G2, entry e1: field ghi_chu is not declared by the item; declared fields: noi_dung, chiu_trach_nhiem, thoi_han, trang_thai"
    );

    let err = check(
        &t,
        "G2",
        actions(&[("bad id", &[("noi_dung", "x"), ("thoi_han", "01/01/2026")])]),
    )
    .unwrap_err();
    assert!(matches!(err, AnswerError::InvalidEntryId { ref item, .. } if item == "G2"));
    let err = check(&t, "G2", actions(&[("", &[])])).unwrap_err();
    assert!(matches!(err, AnswerError::InvalidEntryId { .. }));

    let many: BTreeMap<String, BTreeMap<String, String>> = (0..501)
        .map(|i| {
            (
                format!("e{i}"),
                fields(&[("noi_dung", "x"), ("thoi_han", "01/01/2026")]),
            )
        })
        .collect();
    let err = check(&t, "G2", AnswerValue::ActionList(many)).unwrap_err();
    assert_eq!(
        err,
        AnswerError::TooManyEntries {
            item: "G2".into(),
            count: 501,
            limit: 500
        }
    );

    let err = check(&t, "G2", AnswerValue::Text("x".into())).unwrap_err();
    assert!(matches!(
        err,
        AnswerError::WrongValueType {
            expected: AnswerType::ActionList,
            ..
        }
    ));
}

#[test]
fn not_applicable_is_accepted_for_every_item() {
    let t = da06();
    for item in t.items() {
        assert_eq!(
            t.check_answer(&item.id, &AnswerValue::NotApplicable, &no_fields())
                .unwrap(),
            met(None, None),
            "item {}",
            item.id
        );
    }
}

#[test]
fn unknown_item_is_refused() {
    let t = da06();
    let err = check(&t, "A9", AnswerValue::YesNo(true)).unwrap_err();
    assert_eq!(err, AnswerError::UnknownItem { item: "A9".into() });
    assert!(err.to_string().contains("item A9"));
}

// ---------------------------------------------------------------------------------------
// Item fields (A1)
// ---------------------------------------------------------------------------------------

fn a1_with(f: &[(&str, &str)]) -> Result<Assessment, AnswerError> {
    da06().check_answer("A1", &AnswerValue::YesNo(true), &fields(f))
}

#[test]
fn a1_document_number_pattern() {
    for ok in ["45/KH-UBND", "123/UBND-VP", "12/2025/QĐ-UBND", "7/BC-SNV"] {
        assert_eq!(
            a1_with(&[("so_ky_hieu", ok)]).unwrap(),
            met(Some(true), None),
            "{ok}"
        );
    }
    for bad in ["KH-UBND", "45 KH-UBND", "45/KH UBND", "", "45/"] {
        let err = a1_with(&[("so_ky_hieu", bad)]).unwrap_err();
        let f = err.field().unwrap();
        let FieldProblem::PatternMismatch {
            ref value,
            ref pattern,
        } = f.problem
        else {
            panic!("{bad}: {err:?}");
        };
        assert_eq!(
            (
                f.item.as_str(),
                f.entry.as_deref(),
                f.field.as_str(),
                value.as_str()
            ),
            ("A1", None, "so_ky_hieu", bad)
        );
        assert!(pattern.starts_with("^\\d+"));
        assert!(err.to_string().contains(pattern.as_str()), "{err}");
        assert!(
            err.to_string().starts_with("item A1: field so_ky_hieu"),
            "{err}"
        );
    }
}

#[test]
fn a1_issue_date_is_a_real_date() {
    for ok in [
        "05/02/2025",
        "29/02/2024",
        "29/02/2000",
        "31/12/2025",
        "30/04/2025",
    ] {
        assert!(a1_with(&[("ngay_ban_hanh", ok)]).is_ok(), "{ok}");
    }
    for bad in [
        "31/02/2025",
        "29/02/2025",
        "29/02/1900",
        "31/04/2025",
        "00/01/2025",
        "01/13/2025",
        "01/00/2025",
        "5/2/2025",
        "2025-02-05",
        "05-02-2025",
        "05/02/25",
        "١٢/02/2025",
        "05/02/2025 ",
        "",
    ] {
        let err = a1_with(&[("ngay_ban_hanh", bad)]).unwrap_err();
        let f = err.field().unwrap();
        assert_eq!(
            (f.item.as_str(), f.entry.as_deref(), f.field.as_str()),
            ("A1", None, "ngay_ban_hanh")
        );
        assert!(
            matches!(f.problem, FieldProblem::InvalidDate { ref value, .. } if value == bad),
            "{bad}: {err:?}"
        );
    }
}

#[test]
fn a1_both_fields_together_and_unknown_fields() {
    assert!(
        a1_with(&[
            ("so_ky_hieu", "45/KH-UBND"),
            ("ngay_ban_hanh", "17/01/2025")
        ])
        .is_ok()
    );
    let err = a1_with(&[("ghi_chu", "x")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "item A1: field ghi_chu is not declared by the item; declared fields: so_ky_hieu, ngay_ban_hanh"
    );
    // Items that declare no fields take none.
    let err = da06()
        .check_answer(
            "A2",
            &AnswerValue::YesNoPartial(Tri::Yes),
            &fields(&[("x", "y")]),
        )
        .unwrap_err();
    assert_eq!(
        err.field().unwrap().problem,
        FieldProblem::Unknown {
            accepted: "none".into()
        }
    );
    // Field values are limited like text answers.
    let long = "1".repeat(20_001);
    let err = a1_with(&[("so_ky_hieu", &long)]).unwrap_err();
    assert_eq!(
        err.field().unwrap().problem,
        FieldProblem::TooLong {
            chars: 20_001,
            limit: 20_000
        }
    );
}

#[test]
fn date_parser_values() {
    assert_eq!(parse_dd_mm_yyyy("05/02/2025"), Ok((2025, 2, 5)));
    assert_eq!(parse_dd_mm_yyyy("29/02/2024"), Ok((2024, 2, 29)));
    assert!(parse_dd_mm_yyyy("29/02/2100").is_err());
    assert_eq!(
        parse_dd_mm_yyyy("01/01/1899"),
        Err(DateError::YearOutOfRange(1899))
    );
    assert_eq!(
        parse_dd_mm_yyyy("01/13/2025"),
        Err(DateError::NoSuchMonth(13))
    );
    assert_eq!(parse_dd_mm_yyyy("5/2/2025"), Err(DateError::Shape));
    let err = parse_dd_mm_yyyy("31/02/2025").unwrap_err();
    assert_eq!(
        err,
        DateError::NoSuchDay {
            day: 31,
            month: 2,
            year: 2025,
            days_in_month: 28
        }
    );
    assert_eq!(
        err.to_string(),
        "day 31 does not exist in 02/2025, which has 28 days"
    );
}

// ---------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------

#[test]
fn registry_publishes_versions_immutably() {
    let mut reg = TemplateRegistry::default();
    reg.publish(da06()).unwrap();
    // Same content again, even reformatted: accepted, nothing changes.
    reg.publish(da06()).unwrap();
    let compact = serde_json::to_string(&da06_value()).unwrap();
    reg.publish(Template::from_json(&compact).unwrap()).unwrap();
    assert_eq!(reg.iter().count(), 1);

    // Changed content under the same version: refused, the published one stays.
    let mut changed = da06_value();
    da06_item_mut(&mut changed, "B2")["target"]["value"] = json!(70);
    let changed_t = load(&changed).unwrap();
    let err = reg.publish(changed_t.clone()).unwrap_err();
    assert!(
        matches!(err, TemplateError::VersionAlreadyPublished { ref template_id, version: 1, ref published_sha256, ref offered_sha256 }
            if template_id == "DA06-HN-2025-v1" && *published_sha256 == da06().content_sha256() && *offered_sha256 == changed_t.content_sha256()),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("publish the change as version 2"),
        "{err}"
    );
    assert_eq!(reg.get("DA06-HN-2025-v1", 1).unwrap(), &da06());

    // The same change as a new version is accepted.
    changed["version"] = json!(2);
    reg.publish(load(&changed).unwrap()).unwrap();
    let v2 = reg.get("DA06-HN-2025-v1", 2).unwrap();
    assert_eq!(
        v2.item("B2").unwrap().target.as_ref().unwrap().value,
        Some(TargetValue::Number(70.0))
    );
    assert_eq!(
        reg.get("DA06-HN-2025-v1", 1)
            .unwrap()
            .item("B2")
            .unwrap()
            .target
            .as_ref()
            .unwrap()
            .value,
        Some(TargetValue::Number(80.0))
    );
    assert!(reg.get("DA06-HN-2025-v1", 3).is_none());
    assert!(reg.get("other", 1).is_none());
    assert_eq!(reg.latest("DA06-HN-2025-v1").unwrap().version, 2);
    let keys: Vec<String> = reg.iter().map(Template::key).collect();
    assert_eq!(keys, ["DA06-HN-2025-v1@1", "DA06-HN-2025-v1@2"]);
}

// ---------------------------------------------------------------------------------------
// Loading errors
// ---------------------------------------------------------------------------------------

#[test]
fn bad_json_reports_line_and_column() {
    let err = Template::from_json("{\n  \"template_id\": \"x\",\n  oops\n}").unwrap_err();
    let TemplateError::BadJson { line, column, .. } = err else {
        panic!("{err:?}");
    };
    assert_eq!((line, column), (3, 3));
    assert!(err.to_string().contains("line 3, column 3"), "{err}");
    assert!(matches!(
        Template::from_json("[1, 2]").unwrap_err(),
        TemplateError::NotAnObject { .. }
    ));
    assert!(matches!(
        Template::from_json("").unwrap_err(),
        TemplateError::BadJson { line: 1, .. }
    ));
}

#[test]
fn missing_template_id_and_sections() {
    let mut v = with_items(json!([item("A1", "yes_no")]));
    v.as_object_mut().unwrap().remove("template_id");
    assert_eq!(
        load_err(&v),
        TemplateError::MissingField {
            at: "template".into(),
            field: "template_id".into()
        }
    );
    let mut v = with_items(json!([item("A1", "yes_no")]));
    v.as_object_mut().unwrap().remove("sections");
    let err = load_err(&v);
    assert_eq!(
        err,
        TemplateError::MissingField {
            at: "template".into(),
            field: "sections".into()
        }
    );
    assert_eq!(err.to_string(), "template is missing `sections`: add it");
    v["sections"] = json!([]);
    assert_eq!(load_err(&v), TemplateError::NoSections);
    v["sections"] = json!({});
    assert!(
        matches!(load_err(&v), TemplateError::WrongFieldType { ref field, .. } if field == "sections")
    );
    let v = with_items(json!([]));
    assert_eq!(
        load_err(&v),
        TemplateError::EmptySection {
            section: "A".into()
        }
    );
    let mut v = with_items(json!([item("A1", "yes_no")]));
    v["sections"][0]["items"][0]
        .as_object_mut()
        .unwrap()
        .remove("text_vi");
    assert_eq!(
        load_err(&v),
        TemplateError::MissingField {
            at: "item A1".into(),
            field: "text_vi".into()
        }
    );
    let mut v = with_items(json!([item("A1", "yes_no")]));
    v["sections"][0]["items"][0]["evidence_required"] = json!("yes");
    assert!(
        matches!(load_err(&v), TemplateError::WrongFieldType { ref at, ref field, .. } if at == "item A1" && field == "evidence_required")
    );
}

#[test]
fn duplicate_ids() {
    let mut v = da06_value();
    v["sections"][1]["id"] = json!("A");
    assert_eq!(
        load_err(&v),
        TemplateError::DuplicateSectionId { id: "A".into() }
    );
    // Item ids are unique across sections, not only within one.
    let mut v = da06_value();
    da06_item_mut(&mut v, "G1")["id"] = json!("A1");
    let err = load_err(&v);
    assert_eq!(err, TemplateError::DuplicateItemId { id: "A1".into() });
    assert!(err.to_string().contains("item id A1"));
}

#[test]
fn unknown_answer_type_names_it_and_lists_the_accepted() {
    let mut v = da06_value();
    da06_item_mut(&mut v, "A2")["type"] = json!("yes_no_maybe");
    let err = load_err(&v);
    assert_eq!(
        err,
        TemplateError::UnknownAnswerType {
            item: "A2".into(),
            found: "yes_no_maybe".into(),
            accepted: "yes_no, yes_no_partial, percentage, number, text, select, action_list"
                .into(),
        }
    );
    assert_eq!(
        err.to_string(),
        "item A2: unknown answer type \"yes_no_maybe\"; accepted types: yes_no, yes_no_partial, percentage, number, text, select, action_list"
    );
}

#[test]
fn select_options_errors() {
    let mut v = da06_value();
    da06_item_mut(&mut v, "G3")
        .as_object_mut()
        .unwrap()
        .remove("options");
    assert_eq!(
        load_err(&v),
        TemplateError::SelectWithoutOptions { item: "G3".into() }
    );
    let mut v = da06_value();
    da06_item_mut(&mut v, "G3")["options"] = json!([]);
    assert_eq!(
        load_err(&v),
        TemplateError::SelectWithoutOptions { item: "G3".into() }
    );
    let mut v = da06_value();
    da06_item_mut(&mut v, "G3")["options"][1]["value"] = json!("tot");
    assert_eq!(
        load_err(&v),
        TemplateError::DuplicateOption {
            item: "G3".into(),
            value: "tot".into()
        }
    );
    let mut v = da06_value();
    da06_item_mut(&mut v, "A2")["options"] = json!([{ "value": "a", "label_vi": "A" }]);
    assert_eq!(
        load_err(&v),
        TemplateError::OptionsNotAllowed {
            item: "A2".into(),
            answer_type: AnswerType::YesNoPartial
        }
    );
}

#[test]
fn field_spec_errors() {
    let mut v = da06_value();
    da06_item_mut(&mut v, "A1")["fields"][0]["pattern"] = json!("^(\\d+$");
    let err = load_err(&v);
    assert!(
        matches!(err, TemplateError::InvalidPattern { ref item, ref field, ref pattern, .. } if item == "A1" && field == "so_ky_hieu" && pattern == "^(\\d+$"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("item A1: field so_ky_hieu has an invalid pattern"),
        "{err}"
    );

    let mut v = da06_value();
    da06_item_mut(&mut v, "A1")["fields"][1]["format"] = json!("yyyy-mm-dd");
    assert!(
        matches!(load_err(&v), TemplateError::UnknownFieldFormat { ref found, ref accepted, .. } if found == "yyyy-mm-dd" && accepted == "dd/mm/yyyy")
    );

    let mut v = da06_value();
    da06_item_mut(&mut v, "A1")["fields"][1]["key"] = json!("so_ky_hieu");
    assert_eq!(
        load_err(&v),
        TemplateError::DuplicateFieldKey {
            item: "A1".into(),
            key: "so_ky_hieu".into()
        }
    );

    let mut v = da06_value();
    da06_item_mut(&mut v, "G2")["fields"][3]["options"][1] = json!("Chưa thực hiện");
    assert!(
        matches!(load_err(&v), TemplateError::DuplicateFieldOption { ref field, .. } if field == "trang_thai")
    );

    let mut v = da06_value();
    da06_item_mut(&mut v, "G2")
        .as_object_mut()
        .unwrap()
        .remove("fields");
    assert_eq!(
        load_err(&v),
        TemplateError::ActionListWithoutFields { item: "G2".into() }
    );
}

#[test]
fn target_errors() {
    let mut v = da06_value();
    da06_item_mut(&mut v, "A3")["target"]["op"] = json!("==");
    let err = load_err(&v);
    assert_eq!(
        err,
        TemplateError::UnknownTargetOp {
            item: "A3".into(),
            found: "==".into()
        }
    );
    assert!(
        err.to_string()
            .contains("accepted ops: =, !=, >=, <=, >, <")
    );

    let cases: [(&str, Value, &str); 7] = [
        ("A1", json!("partial"), "\"yes\" or \"no\""),
        ("A1", json!(true), "\"yes\" or \"no\""),
        ("A2", json!("maybe"), "\"yes\", \"partial\" or \"no\""),
        ("A3", json!("100"), "a number from 0 to 100"),
        ("A3", json!(150), "a number from 0 to 100"),
        ("A4", json!("many"), "a count from 0 to 1000000000000"),
        ("F5", json!(-1), "a count from 0 to 1000000000000"),
    ];
    for (id, value, expected_text) in cases {
        let shown = value.to_string();
        let mut v = da06_value();
        da06_item_mut(&mut v, id)["target"]["value"] = value.clone();
        let err = load_err(&v);
        assert!(
            matches!(err, TemplateError::TargetValueMismatch { ref item, ref found, expected, .. }
                if item == id && *found == shown && expected == expected_text),
            "{id} {value}: {err:?}"
        );
        assert!(
            err.to_string().starts_with(&format!("item {id} (")),
            "{err}"
        );
    }

    let mut v = da06_value();
    da06_item_mut(&mut v, "G1")["target"] = json!({ "op": "=", "value": "x" });
    assert_eq!(
        load_err(&v),
        TemplateError::TargetNotSupported {
            item: "G1".into(),
            answer_type: AnswerType::Text
        }
    );
}

#[test]
fn id_errors() {
    let mut v = da06_value();
    da06_item_mut(&mut v, "A1")["id"] = json!("");
    assert_eq!(
        load_err(&v),
        TemplateError::EmptyId {
            at: "item #1 of section A".into()
        }
    );
    let mut v = da06_value();
    v["template_id"] = json!("");
    assert_eq!(
        load_err(&v),
        TemplateError::EmptyId {
            at: "template".into()
        }
    );
    let mut v = da06_value();
    da06_item_mut(&mut v, "A1")["id"] = json!("A 1");
    let err = load_err(&v);
    assert!(
        matches!(err, TemplateError::InvalidId { ref id, .. } if id == "A 1"),
        "{err:?}"
    );
    assert!(err.to_string().contains("contains ' '"), "{err}");
    let mut v = da06_value();
    v["sections"][0]["id"] = json!("Mục-Á");
    assert!(matches!(load_err(&v), TemplateError::InvalidId { ref at, .. } if at == "section #1"));
    let mut v = da06_value();
    da06_item_mut(&mut v, "A1")["id"] = json!("x".repeat(65));
    let err = load_err(&v);
    assert!(err.to_string().contains("is 65 characters long"), "{err}");
    // 64 characters is still fine.
    let mut v = da06_value();
    da06_item_mut(&mut v, "A1")["id"] = json!("x".repeat(64));
    assert!(load(&v).unwrap().item(&"x".repeat(64)).is_some());
    let mut v = da06_value();
    da06_item_mut(&mut v, "G2")["fields"][0]["key"] = json!("nội_dung");
    assert!(
        matches!(load_err(&v), TemplateError::InvalidId { ref at, .. } if at == "field #1 of item G2")
    );
}

#[test]
fn oversized_templates() {
    let mut v = with_items(json!([item("A1", "text")]));
    v["padding"] = json!("x".repeat(2 * 1024 * 1024));
    let err = load_err(&v);
    assert!(
        matches!(
            err,
            TemplateError::TooLarge {
                limit: 2_097_152,
                ..
            }
        ),
        "{err:?}"
    );
    // The same limit holds for a value deserialized without going through text.
    let err = Template::try_from(v).unwrap_err();
    assert!(matches!(err, TemplateError::TooLarge { .. }));

    let items: Vec<Value> = (0..2001)
        .map(|i| item(&format!("Q{i}"), "number"))
        .collect();
    let v = with_items(Value::Array(items));
    assert_eq!(
        load_err(&v),
        TemplateError::TooManyItems {
            count: 2001,
            limit: 2000
        }
    );
    let items: Vec<Value> = (0..2000)
        .map(|i| item(&format!("Q{i}"), "number"))
        .collect();
    assert_eq!(
        load(&with_items(Value::Array(items)))
            .unwrap()
            .items()
            .count(),
        2000
    );
}

#[test]
fn consistency_errors() {
    let mut v = da06_value();
    v["item_count"] = json!(31);
    assert_eq!(
        load_err(&v),
        TemplateError::ItemCountMismatch {
            declared: 31,
            actual: 30
        }
    );

    let mut v = da06_value();
    da06_item_mut(&mut v, "A1")["evidence_types"] = json!(["video"]);
    let err = load_err(&v);
    assert!(
        matches!(err, TemplateError::UnknownEvidenceType { ref item, ref found, .. } if item == "A1" && found == "video")
    );
    assert!(
        err.to_string()
            .contains("document, photo, screenshot, text"),
        "{err}"
    );
    // Declaring the kind at the top level makes it acceptable.
    v["evidence_types"]["video"] = json!("video clip");
    let t = load(&v).unwrap();
    assert_eq!(
        t.item("A1").unwrap().evidence_types,
        [EvidenceType::Other("video".into())]
    );

    let mut v = da06_value();
    da06_item_mut(&mut v, "A4")["evidence_types"] = json!(["document"]);
    assert_eq!(
        load_err(&v),
        TemplateError::MinPhotosWithoutPhotoEvidence {
            item: "A4".into(),
            min_photos: 1
        }
    );
}
