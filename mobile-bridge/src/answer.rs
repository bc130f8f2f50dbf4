//! Answer values typed as text (the command line's `VALUE`, a form field)
//! turned into [`AnswerValue`]s of the item's type, and back.
//!
//! | item type | accepted text |
//! |---|---|
//! | any | `n/a` (not applicable) |
//! | `yes_no` | `yes`, `no`, `có`, `không` |
//! | `yes_no_partial` | the same, plus `partial`, `một phần` |
//! | `percentage` | `N/D`, e.g. `45/50` |
//! | `number` | a whole number: `12`, `-3`, `1.234` (Vietnamese grouping) |
//! | `text` | any non-empty text |
//! | `select` | an option's value, or its Vietnamese label |
//! | `action_list` | JSON: an array of objects (ids `1`, `2`, …) or an object id → object |
//!
//! The parsed value is then checked by the template itself
//! ([`Template::check_answer`]), so the rules on ranges, options and fields
//! have one implementation.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use sync_core::template::{AnswerType, AnswerValue, Item, Template, Tri};

use crate::error::{FieldError, Result};

/// The text meaning "not applicable", for every item.
pub const NOT_APPLICABLE: &str = "n/a";

/// Parses `text` as an answer to `item_id` of `template` and checks it,
/// with its extra `fields`, against the template.
pub fn parse_and_check(
    template: &Template,
    item_id: &str,
    text: &str,
    fields: &BTreeMap<String, String>,
) -> Result<AnswerValue> {
    let item = template.item(item_id).ok_or_else(|| {
        let known: Vec<&str> = template.items().map(|i| i.id.as_str()).collect();
        FieldError::NotFound(format!(
            "item {item_id:?} is not in template {}; items are: {}",
            template.key(),
            known.join(", ")
        ))
    })?;
    let value = parse_value(item, text)?;
    template
        .check_answer(item_id, &value, fields)
        .map_err(|e| FieldError::InvalidInput(format!("answer to {item_id}: {e}")))?;
    Ok(value)
}

/// Parses `text` as a value of `item`'s answer type (no template checks).
pub fn parse_value(item: &Item, text: &str) -> Result<AnswerValue> {
    let t = text.trim();
    if t.eq_ignore_ascii_case(NOT_APPLICABLE) {
        return Ok(AnswerValue::NotApplicable);
    }
    let bad = |expected: &str| {
        FieldError::InvalidInput(format!(
            "{text:?} is not a valid answer to {} ({}): expected {expected}, or n/a",
            item.id,
            item.answer_type.as_str()
        ))
    };
    match item.answer_type {
        AnswerType::YesNo => match tri(t) {
            Some(Tri::Yes) => Ok(AnswerValue::YesNo(true)),
            Some(Tri::No) => Ok(AnswerValue::YesNo(false)),
            _ => Err(bad("yes or no (có / không)")),
        },
        AnswerType::YesNoPartial => tri(t)
            .map(AnswerValue::YesNoPartial)
            .ok_or_else(|| bad("yes, partial or no (có / một phần / không)")),
        AnswerType::Percentage => {
            let (n, d) = t
                .split_once('/')
                .ok_or_else(|| bad("NUMERATOR/DENOMINATOR, e.g. 45/50"))?;
            let numerator = whole(n.trim())
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| bad("NUMERATOR/DENOMINATOR of whole numbers, e.g. 45/50"))?;
            let denominator = whole(d.trim())
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| bad("NUMERATOR/DENOMINATOR of whole numbers, e.g. 45/50"))?;
            Ok(AnswerValue::Percentage {
                numerator,
                denominator,
            })
        }
        AnswerType::Number => whole(t)
            .map(AnswerValue::Number)
            .ok_or_else(|| bad("a whole number, e.g. 12 or 1.234")),
        AnswerType::Text => {
            if t.is_empty() {
                Err(bad("some text"))
            } else {
                Ok(AnswerValue::Text(text.to_owned()))
            }
        }
        AnswerType::Select => {
            if let Some(o) = item.options.iter().find(|o| o.value == t) {
                return Ok(AnswerValue::Select(o.value.clone()));
            }
            let lower = t.to_lowercase();
            if let Some(o) = item
                .options
                .iter()
                .find(|o| o.label_vi.to_lowercase() == lower)
            {
                return Ok(AnswerValue::Select(o.value.clone()));
            }
            let values: Vec<String> = item
                .options
                .iter()
                .map(|o| format!("{} ({})", o.value, o.label_vi))
                .collect();
            Err(bad(&format!("one of: {}", values.join(", "))))
        }
        AnswerType::ActionList => action_list(t).ok_or_else(|| {
            bad(r#"JSON: [{"noi_dung": "…", "thoi_han": "dd/mm/yyyy"}, …] or {"ID": {…}, …}"#)
        }),
    }
}

/// An answer value written back as the text [`parse_value`] accepts.
pub fn format_value(value: &AnswerValue) -> String {
    match value {
        AnswerValue::YesNo(true) => "yes".into(),
        AnswerValue::YesNo(false) => "no".into(),
        AnswerValue::YesNoPartial(t) => t.as_str().into(),
        AnswerValue::Percentage {
            numerator,
            denominator,
        } => format!("{numerator}/{denominator}"),
        AnswerValue::Number(n) => n.to_string(),
        AnswerValue::Text(s) | AnswerValue::Select(s) => s.clone(),
        AnswerValue::ActionList(entries) => {
            serde_json::to_string(entries).unwrap_or_else(|_| "{}".into())
        }
        AnswerValue::NotApplicable => NOT_APPLICABLE.into(),
    }
}

/// Parses `key=value` pairs (the command line's `--field`).
pub fn parse_fields(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| {
            FieldError::InvalidInput(format!("field {p:?} must be written KEY=VALUE"))
        })?;
        if out.insert(k.trim().to_owned(), v.to_owned()).is_some() {
            return Err(FieldError::InvalidInput(format!(
                "field {:?} is given twice",
                k.trim()
            )));
        }
    }
    Ok(out)
}

fn tri(t: &str) -> Option<Tri> {
    match t.to_lowercase().as_str() {
        "yes" | "y" | "có" | "co" => Some(Tri::Yes),
        "partial" | "một phần" | "mot phan" => Some(Tri::Partial),
        "no" | "n" | "không" | "khong" => Some(Tri::No),
        _ => None,
    }
}

/// A whole number, plain (`-1234`) or with Vietnamese thousands dots (`1.234`).
fn whole(t: &str) -> Option<i64> {
    if let Ok(n) = t.parse::<i64>() {
        return Some(n);
    }
    let (sign, digits) = match t.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, t),
    };
    let groups: Vec<&str> = digits.split('.').collect();
    let grouped = groups.len() > 1
        && (1..=3).contains(&groups[0].len())
        && groups[1..].iter().all(|g| g.len() == 3)
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_digit()));
    if !grouped {
        return None;
    }
    groups.concat().parse::<i64>().ok().map(|n| sign * n)
}

fn action_list(t: &str) -> Option<AnswerValue> {
    let v: serde_json::Value = serde_json::from_str(t).ok()?;
    let entry = |v: &serde_json::Value| -> Option<BTreeMap<String, String>> {
        let obj = v.as_object()?;
        obj.iter()
            .map(|(k, v)| {
                let s = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                Some((k.clone(), s))
            })
            .collect()
    };
    let mut entries = BTreeMap::new();
    match &v {
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                entries.insert((i + 1).to_string(), entry(item)?);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, item) in map {
                entries.insert(k.clone(), entry(item)?);
            }
        }
        _ => return None,
    }
    Some(AnswerValue::ActionList(entries))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CHECKLIST: &str = include_str!("../../server/demo-data/checklist_de_an_06.json");

    fn template() -> Template {
        Template::from_json(CHECKLIST).unwrap()
    }

    fn parse(item: &str, text: &str) -> Result<AnswerValue> {
        parse_and_check(&template(), item, text, &BTreeMap::new())
    }

    #[test]
    fn every_answer_type_parses() {
        assert_eq!(parse("A1", "yes").unwrap(), AnswerValue::YesNo(true));
        assert_eq!(parse("A1", "Không").unwrap(), AnswerValue::YesNo(false));
        assert_eq!(
            parse("A2", "một phần").unwrap(),
            AnswerValue::YesNoPartial(Tri::Partial)
        );
        assert_eq!(
            parse("A3", "45/50").unwrap(),
            AnswerValue::Percentage {
                numerator: 45,
                denominator: 50
            }
        );
        assert_eq!(parse("A4", "12").unwrap(), AnswerValue::Number(12));
        assert_eq!(parse("D2", "1.234").unwrap(), AnswerValue::Number(1234));
        assert_eq!(
            parse("G1", "Đơn vị làm tốt").unwrap(),
            AnswerValue::Text("Đơn vị làm tốt".into())
        );
        assert_eq!(
            parse("G3", "kha").unwrap(),
            AnswerValue::Select("kha".into())
        );
        let label = template().item("G3").unwrap().options[0].label_vi.clone();
        assert_eq!(
            parse("G3", &label).unwrap(),
            AnswerValue::Select("tot".into())
        );
        let list = parse(
            "G2",
            r#"[{"noi_dung": "Cập nhật dữ liệu", "thoi_han": "30/06/2026"}]"#,
        )
        .unwrap();
        let AnswerValue::ActionList(entries) = list else {
            panic!("not an action list")
        };
        assert_eq!(entries["1"]["noi_dung"], "Cập nhật dữ liệu");
        assert_eq!(parse("B1", "N/A").unwrap(), AnswerValue::NotApplicable);
    }

    #[test]
    fn wrong_values_are_refused_with_what_was_expected() {
        let e = parse("A1", "partial").unwrap_err();
        assert!(matches!(e, FieldError::InvalidInput(_)));
        assert!(e.to_string().contains("yes or no"), "{e}");
        // Parses, but the template refuses it: numerator over denominator.
        let e = parse("A3", "60/50").unwrap_err();
        assert!(e.to_string().contains("A3"), "{e}");
        assert!(parse("A3", "45").is_err());
        assert!(parse("A4", "1.5").is_err());
        assert!(parse("A4", "12a").is_err());
        assert!(
            parse("G3", "xuat_sac")
                .unwrap_err()
                .to_string()
                .contains("tot")
        );
        assert!(parse("G2", "not json").is_err());
        assert!(parse("G1", "   ").is_err());
        let e = parse("Z9", "yes").unwrap_err();
        assert!(matches!(e, FieldError::NotFound(_)), "{e}");
    }

    #[test]
    fn values_round_trip_through_text() {
        let t = template();
        for (item, text) in [
            ("A1", "no"),
            ("A2", "partial"),
            ("A3", "1/2"),
            ("A4", "-3"),
            ("G1", "ghi chú"),
            ("G3", "yeu"),
            ("A1", "n/a"),
        ] {
            let v = parse_value(t.item(item).unwrap(), text).unwrap();
            assert_eq!(format_value(&v), text);
            assert_eq!(
                parse_value(t.item(item).unwrap(), &format_value(&v)).unwrap(),
                v
            );
        }
    }

    #[test]
    fn fields_are_key_value_pairs() {
        let f = parse_fields(&[
            "so_ky_hieu=12/KH-UBND".into(),
            "ngay_ban_hanh=01/02/2025".into(),
        ])
        .unwrap();
        assert_eq!(f["so_ky_hieu"], "12/KH-UBND");
        assert!(parse_fields(&["novalue".into()]).is_err());
        assert!(parse_fields(&["a=1".into(), "a=2".into()]).is_err());
        let v = parse_and_check(&template(), "A1", "yes", &f).unwrap();
        assert_eq!(v, AnswerValue::YesNo(true));
    }
}
