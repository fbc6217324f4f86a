//! Random JSON Schemas and a validator written from the JSON Schema specification for the
//! subset they use, to check structured outputs independently of the engine that enforces
//! them (llguidance).
//!
//! The schemas bound every value's size (strings `maxLength`, arrays `maxItems`, integers in
//! a range, objects with fixed properties and `additionalProperties: false`), so an answer
//! that follows one always completes within a known number of tokens.

use serde_json::{Map, Value, json};

use crate::Rng;

const NAMES: [&str; 12] = [
    "id", "name", "path", "line", "ok", "items", "kind", "score", "tags", "note", "city", "days",
];
const WORDS: [&str; 8] = ["red", "green", "blue", "fix", "test", "build", "yes", "no"];

/// A random schema whose top level is an object, nested at most `depth` levels.
pub fn random_schema(rng: &mut Rng, depth: usize) -> Value {
    object(rng, depth)
}

fn object(rng: &mut Rng, depth: usize) -> Value {
    let n = 1 + rng.below(4);
    let mut props = Map::new();
    let mut required = Vec::new();
    let mut names: Vec<&str> = NAMES.to_vec();
    for _ in 0..n {
        let name = names.remove(rng.below(names.len()));
        props.insert(name.into(), value(rng, depth.saturating_sub(1)));
        if rng.below(4) != 0 {
            required.push(json!(name));
        }
    }
    json!({"type": "object", "properties": props, "required": required,
           "additionalProperties": false})
}

fn value(rng: &mut Rng, depth: usize) -> Value {
    let kinds = if depth == 0 { 4 } else { 6 };
    match rng.below(kinds) {
        0 => {
            let min = rng.below(3);
            json!({"type": "string", "minLength": min, "maxLength": min + 1 + rng.below(10)})
        }
        1 => {
            let lo = -(rng.below(100) as i64);
            json!({"type": "integer", "minimum": lo, "maximum": lo + 1 + rng.below(1000) as i64})
        }
        2 => json!({"type": "boolean"}),
        3 => {
            let mut words = WORDS.to_vec();
            let n = 2 + rng.below(3);
            let pick: Vec<&str> = (0..n)
                .map(|_| words.remove(rng.below(words.len())))
                .collect();
            json!({"enum": pick})
        }
        4 => {
            let min = rng.below(2);
            json!({"type": "array", "items": value(rng, depth - 1),
                   "minItems": min, "maxItems": min + 1 + rng.below(3)})
        }
        _ => object(rng, depth - 1),
    }
}

/// Checks `v` against `schema` (the keywords [`random_schema`] uses, plus `const`, `null`,
/// `number`, `anyOf`); the error names the path.
pub fn validate(schema: &Value, v: &Value) -> Result<(), String> {
    check(schema, v, "$")
}

fn check(s: &Value, v: &Value, at: &str) -> Result<(), String> {
    let fail = |why: String| Err(format!("{at}: {why} (value {v})"));
    if let Some(options) = s.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        return fail(format!("not one of {options:?}"));
    }
    if let Some(c) = s.get("const")
        && c != v
    {
        return fail(format!("not {c}"));
    }
    if let Some(any) = s.get("anyOf").and_then(Value::as_array)
        && !any.iter().any(|sub| check(sub, v, at).is_ok())
    {
        return fail("matches none of anyOf".into());
    }
    let Some(ty) = s.get("type").and_then(Value::as_str) else {
        return Ok(());
    };
    match (ty, v) {
        ("null", Value::Null) | ("boolean", Value::Bool(_)) => Ok(()),
        ("number", Value::Number(_)) => Ok(()),
        ("integer", Value::Number(n)) => {
            // An integer is a number without a fractional part (`-0` and `1.0` included).
            let i = match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => i,
                (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9e15 => f as i64,
                _ => return fail("not an integer".into()),
            };
            if s.get("minimum")
                .and_then(Value::as_i64)
                .is_some_and(|m| i < m)
            {
                return fail("below minimum".into());
            }
            if s.get("maximum")
                .and_then(Value::as_i64)
                .is_some_and(|m| i > m)
            {
                return fail("above maximum".into());
            }
            Ok(())
        }
        ("string", Value::String(t)) => {
            let n = t.chars().count() as u64;
            if s.get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| n < m)
            {
                return fail("shorter than minLength".into());
            }
            if s.get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
            {
                return fail("longer than maxLength".into());
            }
            Ok(())
        }
        ("array", Value::Array(a)) => {
            let n = a.len() as u64;
            if s.get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| n < m)
            {
                return fail("fewer than minItems".into());
            }
            if s.get("maxItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
            {
                return fail("more than maxItems".into());
            }
            match s.get("items") {
                Some(items) => a
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, x)| check(items, x, &format!("{at}[{i}]"))),
                None => Ok(()),
            }
        }
        ("object", Value::Object(o)) => {
            let props = s.get("properties").and_then(Value::as_object);
            for r in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let r = r.as_str().unwrap_or_default();
                if !o.contains_key(r) {
                    return fail(format!("no required `{r}`"));
                }
            }
            for (k, x) in o {
                match props.and_then(|p| p.get(k)) {
                    Some(sub) => check(sub, x, &format!("{at}.{k}"))?,
                    None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        return fail(format!("`{k}` is not allowed"));
                    }
                    None => {}
                }
            }
            Ok(())
        }
        _ => fail(format!("not of type {ty}")),
    }
}

/// Most tokens an answer valid against a [`random_schema`] can take, with one token per
/// character as the worst case.
pub fn max_chars(s: &Value) -> usize {
    if s.get("enum").is_some() {
        return 2 + WORDS.iter().map(|w| w.len()).max().unwrap_or(0);
    }
    match s.get("type").and_then(Value::as_str) {
        Some("string") => 2 + 6 * s["maxLength"].as_u64().unwrap_or(0) as usize,
        Some("integer") => 21,
        Some("boolean") => 5,
        Some("array") => {
            let n = s["maxItems"].as_u64().unwrap_or(0) as usize;
            2 + n * (1 + max_chars(&s["items"]))
        }
        Some("object") => {
            let props = s["properties"].as_object().map_or(0, |p| {
                p.iter().map(|(k, v)| k.len() + 4 + max_chars(v)).sum()
            });
            2 + props
        }
        _ => 64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_validator_accepts_and_rejects() {
        let s = json!({"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 3},
            "b": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 2},
            "c": {"type": "string", "maxLength": 2}}, "required": ["a"], "additionalProperties": false});
        assert!(validate(&s, &json!({"a": 1, "b": ["x"], "c": "hé"})).is_ok());
        for bad in [
            json!({"b": []}),
            json!({"a": 4}),
            json!({"a": 1.5}),
            json!({"a": 1, "b": ["z"]}),
            json!({"a": 1, "b": ["x", "x", "y"]}),
            json!({"a": 1, "c": "abc"}),
            json!({"a": 1, "d": 0}),
            json!([1]),
        ] {
            assert!(validate(&s, &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn random_schemas_are_objects_with_bounded_values() {
        let mut rng = Rng(7);
        for _ in 0..50 {
            let s = random_schema(&mut rng, 3);
            assert_eq!(s["type"], "object");
            assert!(max_chars(&s) < 2000, "{s}");
        }
    }
}
