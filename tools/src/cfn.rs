//! Reading CloudFormation YAML as SAM templates write it: short-form tags (`!GetAtt`, `!Sub`, `!Ref`) and
//! scalars that may be numbers or strings. The typed model of the template ([`crate::template`]) is read
//! through these.

use serde_norway::Value;

/// The value under a short-form tag (`!Ref X`, `!GetAtt X.Arn`, `!Sub "..."`).
pub fn tagged<'a>(value: &'a Value, tag: &str) -> Option<&'a Value> {
    match value {
        Value::Tagged(t) if t.tag == tag => Some(&t.value),
        _ => None,
    }
}

/// `!GetAtt X.Attr` (either form) → `X`.
pub fn get_att_target(value: &Value) -> Option<String> {
    match tagged(value, "GetAtt")? {
        Value::String(s) => s.split('.').next().map(str::to_owned),
        Value::Sequence(seq) => seq.first().and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// A number written as a number or as a string (`"30"`).
pub fn number(value: Option<&Value>) -> Option<f64> {
    match value? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A scalar as the string CloudFormation would pass on.
pub fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A list, or a single value read as a list of one (IAM's `Action: x` and `Action: [x, y]`).
pub fn list(value: Option<&Value>) -> Vec<Value> {
    match value {
        Some(Value::Sequence(seq)) => seq.clone(),
        Some(v) => vec![v.clone()],
        None => vec![],
    }
}

/// `Globals.Function.Timeout`: a function's timeout unless it sets its own (3 s, Lambda's default, if
/// neither does).
pub fn global_function_timeout(doc: &Value) -> f64 {
    number(
        doc.get("Globals")
            .and_then(|g| g.get("Function"))
            .and_then(|f| f.get("Timeout")),
    )
    .unwrap_or(3.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_forms_and_loose_scalars() {
        let doc: Value = serde_norway::from_str(
            "a: !GetAtt Queue.Arn\nb: !GetAtt [Table, Arn]\nc: '30'\nd: 12\ne: x\nf: [x, y]\nGlobals: {Function: {Timeout: 60}}",
        )
        .unwrap();
        assert_eq!(get_att_target(&doc["a"]).as_deref(), Some("Queue"));
        assert_eq!(get_att_target(&doc["b"]).as_deref(), Some("Table"));
        assert_eq!(get_att_target(&doc["e"]), None);
        assert_eq!(
            (number(doc.get("c")), number(doc.get("d"))),
            (Some(30.0), Some(12.0))
        );
        assert_eq!(scalar(&doc["d"]).as_deref(), Some("12"));
        assert_eq!(
            (
                list(doc.get("e")).len(),
                list(doc.get("f")).len(),
                list(None).len()
            ),
            (1, 2, 0)
        );
        assert_eq!(global_function_timeout(&doc), 60.0);
        assert_eq!(global_function_timeout(&Value::Null), 3.0);
    }
}
