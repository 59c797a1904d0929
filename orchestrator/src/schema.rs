//! A small JSON Schema (draft 2020-12) validator for the subset
//! `results/schema/summary.schema.json` uses: `type` (a name or a list), `properties`,
//! `required`, `additionalProperties` (boolean or schema), `items`, `minItems`, `maxItems`,
//! `enum`, `const`, `minimum`, and `$ref` to `#/$defs/NAME`. Any other keyword is refused,
//! so the schema cannot silently use more than is checked. (A full validator crate costs
//! minutes of compile time on the 2-core machines; this covers what the schema says.)

use serde_json::Value;

const KNOWN: [&str; 16] = [
    "$schema",
    "$id",
    "$defs",
    "$ref",
    "title",
    "description",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "enum",
    "const",
    "minimum",
];

/// Validate `v` against `schema`; every violation, with its JSON pointer.
pub fn validate(schema: &Value, v: &Value) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    check(schema, schema, v, "", &mut errors);
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

fn check(root: &Value, s: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(obj) = s.as_object() else {
        if s == &Value::Bool(false) {
            errors.push(format!("{at}: not allowed"));
        }
        return;
    };
    for k in obj.keys() {
        if !KNOWN.contains(&k.as_str()) {
            errors.push(format!("schema at {at}: keyword {k} is not supported by this validator"));
        }
    }
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        match r.strip_prefix("#/$defs/").and_then(|name| root["$defs"].get(name)) {
            Some(target) => check(root, target, v, at, errors),
            None => errors.push(format!("schema at {at}: unresolved $ref {r}")),
        }
    }
    if let Some(t) = obj.get("type") {
        let ok = match t {
            Value::String(t) => type_ok(t, v),
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(|t| type_ok(t, v)),
            _ => false,
        };
        if !ok {
            errors.push(format!("{at}: {v} is not of type {t}"));
            return;
        }
    }
    if let Some(e) = obj.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            errors.push(format!("{at}: {v} is not one of {}", Value::Array(e.clone())));
        }
    }
    if let Some(c) = obj.get("const") {
        if c != v {
            errors.push(format!("{at}: {v} is not {c}"));
        }
    }
    if let (Some(m), Some(x)) = (obj.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if x < m {
            errors.push(format!("{at}: {x} < minimum {m}"));
        }
    }
    if let Some(o) = v.as_object() {
        let props = obj.get("properties").and_then(Value::as_object);
        for r in obj.get("required").and_then(Value::as_array).into_iter().flatten() {
            if let Some(r) = r.as_str() {
                if !o.contains_key(r) {
                    errors.push(format!("{at}: missing required key {r:?}"));
                }
            }
        }
        for (k, x) in o {
            let here = format!("{at}/{k}");
            match props.and_then(|p| p.get(k)) {
                Some(ps) => check(root, ps, x, &here, errors),
                None => match obj.get("additionalProperties") {
                    Some(Value::Bool(false)) => errors.push(format!("{here}: key not in the schema")),
                    Some(ap @ Value::Object(_)) => check(root, ap, x, &here, errors),
                    _ => {}
                },
            }
        }
    }
    if let Some(a) = v.as_array() {
        if let Some(n) = obj.get("minItems").and_then(Value::as_u64) {
            if (a.len() as u64) < n {
                errors.push(format!("{at}: fewer than {n} items"));
            }
        }
        if let Some(n) = obj.get("maxItems").and_then(Value::as_u64) {
            if (a.len() as u64) > n {
                errors.push(format!("{at}: more than {n} items"));
            }
        }
        if let Some(items) = obj.get("items") {
            for (i, x) in a.iter().enumerate() {
                check(root, items, x, &format!("{at}/{i}"), errors);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_validator_catches_what_it_claims() {
        let s = json!({
            "type": "object", "required": ["a"], "additionalProperties": false,
            "properties": {"a": {"$ref": "#/$defs/n"}, "b": {"type": ["array", "null"], "items": {"enum": [1, 2]}, "maxItems": 2}},
            "$defs": {"n": {"type": "integer", "minimum": 0}}
        });
        assert!(validate(&s, &json!({"a": 1, "b": [1, 2]})).is_ok());
        assert!(validate(&s, &json!({"a": 1, "b": null})).is_ok());
        let e = validate(&s, &json!({"a": -1, "b": [3, 1, 1], "c": 0})).unwrap_err();
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(validate(&s, &json!({})).unwrap_err()[0].contains("missing required key \"a\""));
        assert!(validate(&json!({"oneOf": []}), &json!(1)).is_err(), "unknown keywords are refused");
    }
}
