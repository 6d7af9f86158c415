//! Placeholders for a parent's result in a node's parameters.
//!
//! A map that holds exactly the key `$ref` (a parent's node name), and
//! optionally `path` (a JSON Pointer, RFC 6901, into that parent's
//! result), stands for that result or that part of it:
//! `{"$ref": "predict", "path": "/predictions/0"}`. The producer writes the
//! placeholder; the commit of the parent keeps its result for the child
//! (`input:<parent>` in the child's wait hash), and the release puts all
//! of them into the child's entry as the field `inputs`, a MessagePack map
//! by parent name; the worker that claims the child replaces every
//! placeholder before anything reads the parameters ([`substitute`]). The
//! producer never sees the result.
//!
//! Paths project as well as point ([`project`]), so that one kind's result
//! fits the next kind's input without a step of glue:
//!
//! - a segment `*` takes every element of an array (or every value of a
//!   map, in order) and collects what the rest of the path names in each
//!   into an array: `/predictions/*/values/0` is the first value of every
//!   prediction, `[0.1, 0.3, ...]`; two `*` give an array of arrays;
//! - a negative index counts from the end of an array: `-1` is the last
//!   element (`/series/*/values/*/-1`: every line's latest value, per
//!   series).
//!
//! Otherwise a segment is RFC 6901's (`~1` for `/`, `~0` for `~`); a map
//! key that is exactly `*` cannot be named.

use rmpv::Value;

use crate::kind::catalog;

/// The path segment that takes every element.
pub const WILDCARD: &str = "*";

/// The key that makes a map a placeholder.
pub const REF_KEY: &str = "$ref";
/// The optional JSON Pointer beside it.
pub const PATH_KEY: &str = "path";

/// One placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    /// The parent node whose result it takes.
    pub node: String,
    /// A JSON Pointer into the result; `None`: the whole result.
    pub path: Option<String>,
}

impl Ref {
    pub fn new(node: &str, path: Option<String>) -> Self {
        Self {
            node: node.to_owned(),
            path,
        }
    }

    /// The placeholder as a JSON value, for a spec or for
    /// `serde_json::json!` parameters.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        map.insert(REF_KEY.into(), self.node.clone().into());
        if let Some(path) = &self.path {
            map.insert(PATH_KEY.into(), path.clone().into());
        }
        serde_json::Value::Object(map)
    }
}

/// The placeholder a map stands for, if it is one; an error for a map with
/// `$ref` that is not a well-formed placeholder.
fn as_ref(entries: &[(Value, Value)]) -> Result<Option<Ref>, String> {
    let mut node = None;
    let mut path = None;
    for (key, value) in entries {
        match key.as_str() {
            Some(REF_KEY) => node = Some(value),
            Some(PATH_KEY) => path = Some(value),
            _ => {}
        }
    }
    let Some(node) = node else {
        return Ok(None);
    };
    if entries.len() > 1 + usize::from(path.is_some()) {
        return Err(format!(
            "a map with {REF_KEY:?} may hold only {REF_KEY:?} and {PATH_KEY:?}"
        ));
    }
    let Some(node) = node.as_str() else {
        return Err(format!("{REF_KEY:?} must be a node name (a string)"));
    };
    let path = match path {
        None => None,
        Some(value) => {
            let Some(text) = value.as_str() else {
                return Err(format!(
                    "{PATH_KEY:?} must be a JSON Pointer (a string such as \"/levels/0\")"
                ));
            };
            if !text.is_empty() && !text.starts_with('/') {
                return Err(format!(
                    "{PATH_KEY:?} {text:?} must be empty or start with '/' (a JSON Pointer)"
                ));
            }
            Some(text.to_owned())
        }
    };
    Ok(Some(Ref::new(node, path)))
}

/// Every placeholder in MessagePack parameters, in the order met.
pub fn refs_in(params: &[u8]) -> Result<Vec<Ref>, String> {
    if params.is_empty() {
        return Ok(Vec::new());
    }
    let value: Value = crate::msgpack::decode(params).map_err(|e| e.to_string())?;
    let mut found = Vec::new();
    collect(&value, &mut found)?;
    Ok(found)
}

fn collect(value: &Value, found: &mut Vec<Ref>) -> Result<(), String> {
    match value {
        Value::Map(entries) => match as_ref(entries)? {
            Some(r) => found.push(r),
            None => {
                for (_, v) in entries {
                    collect(v, found)?;
                }
            }
        },
        Value::Array(items) => {
            for v in items {
                collect(v, found)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The parameters with every placeholder replaced by its parent's result
/// (or the part its path names). `inputs` is the entry field `inputs`: a
/// MessagePack map from parent node name to that parent's result. The
/// error names the placeholder and the problem (the worker fails the task
/// with `BAD_PARAMS`).
pub fn substitute(params: &[u8], inputs: &[u8]) -> Result<Vec<u8>, String> {
    let inputs: Value = crate::msgpack::decode(inputs)
        .map_err(|e| format!("field inputs is not a MessagePack map: {e}"))?;
    let Value::Map(inputs) = inputs else {
        return Err("field inputs is not a MessagePack map".into());
    };
    let mut value: Value = crate::msgpack::decode(params).map_err(|e| e.to_string())?;
    replace(&mut value, &inputs)?;
    crate::msgpack::encode(&value).map_err(|e| e.to_string())
}

fn replace(value: &mut Value, inputs: &[(Value, Value)]) -> Result<(), String> {
    match value {
        Value::Map(entries) => match as_ref(entries)? {
            Some(r) => {
                let result = inputs
                    .iter()
                    .find(|(name, _)| name.as_str() == Some(r.node.as_str()))
                    .map(|(_, result)| result)
                    .ok_or_else(|| {
                        format!(
                            "{REF_KEY} {:?}: no result of that node came with the task",
                            r.node
                        )
                    })?;
                let part = match &r.path {
                    None => result.clone(),
                    Some(path) => project(result, path).map_err(|problem| {
                        format!(
                            "{REF_KEY} {:?}: its result has nothing at {PATH_KEY} {path:?} ({problem})",
                            r.node
                        )
                    })?,
                };
                *value = part;
            }
            None => {
                for (_, v) in entries.iter_mut() {
                    replace(v, inputs)?;
                }
            }
        },
        Value::Array(items) => {
            for v in items.iter_mut() {
                replace(v, inputs)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// RFC 6901 unescaping of one pointer segment.
fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

/// The value at JSON Pointer `path` in a MessagePack value (no wildcards;
/// a negative index counts from the end).
pub fn pointer<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(value);
    }
    let mut at = value;
    for segment in path.strip_prefix('/')?.split('/') {
        at = step(at, &unescape(segment)).ok()?;
    }
    Some(at)
}

/// One segment into a value: a map's key, or an array's index (negative:
/// from the end).
fn step<'a>(at: &'a Value, segment: &str) -> Result<&'a Value, String> {
    match at {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(segment))
            .map(|(_, v)| v)
            .ok_or_else(|| format!("no key {segment:?}")),
        Value::Array(items) => {
            let index = segment
                .parse::<i64>()
                .map_err(|_| format!("{segment:?} is not an index into an array"))?;
            let resolved = if index < 0 {
                i64::try_from(items.len()).unwrap_or(i64::MAX) + index
            } else {
                index
            };
            usize::try_from(resolved)
                .ok()
                .and_then(|i| items.get(i))
                .ok_or_else(|| format!("index {index} is outside an array of {}", items.len()))
        }
        _ => Err(format!(
            "{segment:?} goes into a value that is no map or array"
        )),
    }
}

/// What `path` names in `value`: [`pointer`], where a segment `*` takes
/// every element of an array (or value of a map) and collects what the
/// rest of the path names in each into an array. The error says what was
/// missing.
pub fn project(value: &Value, path: &str) -> Result<Value, String> {
    if path.is_empty() {
        return Ok(value.clone());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err("a JSON Pointer must be empty or start with '/'".into());
    };
    let segments: Vec<String> = rest.split('/').map(unescape).collect();
    project_segments(value, &segments)
}

fn project_segments(value: &Value, segments: &[String]) -> Result<Value, String> {
    let mut at = value;
    for (i, segment) in segments.iter().enumerate() {
        if segment == WILDCARD {
            let items: Vec<&Value> = match at {
                Value::Array(items) => items.iter().collect(),
                Value::Map(entries) => entries.iter().map(|(_, v)| v).collect(),
                _ => return Err("\"*\" goes into a value that is no array or map".into()),
            };
            let rest = &segments[i + 1..];
            return items
                .into_iter()
                .enumerate()
                .map(|(n, item)| {
                    project_segments(item, rest)
                        .map_err(|problem| format!("element {n}: {problem}"))
                })
                .collect::<Result<Vec<Value>, String>>()
                .map(Value::Array);
        }
        at = step(at, segment)?;
    }
    Ok(at.clone())
}

/// Checks that a result of `kind` can hold something at `path`, from the
/// kind's result schema, for the kinds this crate defines; any path passes
/// for other kinds, and where the schema does not say (an untyped result).
pub fn check_path(kind: &str, path: &str) -> Result<(), String> {
    if !path.is_empty() && !path.starts_with('/') {
        return Err("a JSON Pointer must be empty or start with '/'".into());
    }
    let Some(info) = catalog::info(kind) else {
        return Ok(());
    };
    let root = info.result.to_value();
    let mut at = &root;
    if path.is_empty() {
        return Ok(());
    }
    for segment in path[1..].split('/') {
        let segment = unescape(segment);
        at = resolve(&root, at);
        if let Some(props) = at.get("properties").and_then(|p| p.as_object()) {
            match props.get(&segment) {
                Some(next) => at = next,
                None => {
                    let mut names: Vec<&str> = props.keys().map(String::as_str).collect();
                    names.sort_unstable();
                    return Err(format!(
                        "a {kind} result has no field {segment:?}; its fields are {}",
                        names.join(", ")
                    ));
                }
            }
        } else if let Some(items) = at.get("items") {
            if segment != WILDCARD && segment.parse::<i64>().is_err() {
                return Err(format!(
                    "{segment:?} must be an index or \"*\": that part of a {kind} result is an array"
                ));
            }
            at = items;
        } else if at
            .get("type")
            .and_then(|t| t.as_str())
            .is_some_and(|t| t != "object" && t != "array")
        {
            return Err(format!(
                "{segment:?} goes into a {} of a {kind} result, which has no parts",
                at["type"].as_str().unwrap_or("value")
            ));
        } else {
            // The schema says no more (any value, a choice of shapes):
            // the worker checks the rest against the actual result.
            return Ok(());
        }
    }
    Ok(())
}

/// Follows a local `$ref` (`#/$defs/Name`) of a schema.
fn resolve<'a>(
    root: &'a serde_json::Value,
    schema: &'a serde_json::Value,
) -> &'a serde_json::Value {
    let mut at = schema;
    for _ in 0..16 {
        match at.get("$ref").and_then(|r| r.as_str()) {
            Some(reference) => match reference.strip_prefix('#') {
                Some(pointer) => match root.pointer(pointer) {
                    Some(next) => at = next,
                    None => return at,
                },
                None => return at,
            },
            None => return at,
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pack(value: serde_json::Value) -> Vec<u8> {
        crate::msgpack::encode(&value).expect("encode")
    }

    fn unpack(bytes: &[u8]) -> serde_json::Value {
        crate::msgpack::decode(bytes).expect("decode")
    }

    #[test]
    fn placeholders_are_found_where_they_are() {
        let params = pack(json!({"a": {"$ref": "x"}, "b": [1, {"$ref": "y", "path": "/p/0"}]}));
        assert_eq!(
            refs_in(&params),
            Ok(vec![
                Ref::new("x", None),
                Ref::new("y", Some("/p/0".into()))
            ])
        );
        assert_eq!(refs_in(&pack(json!({"a": 1}))), Ok(vec![]));
    }

    #[test]
    fn malformed_placeholders_are_refused() {
        let cases = [
            (
                json!({"$ref": 3}),
                "\"$ref\" must be a node name (a string)",
            ),
            (
                json!({"$ref": "x", "other": 1}),
                "a map with \"$ref\" may hold only \"$ref\" and \"path\"",
            ),
            (
                json!({"$ref": "x", "path": "a/b"}),
                "\"path\" \"a/b\" must be empty or start with '/' (a JSON Pointer)",
            ),
        ];
        for (params, expect) in cases {
            assert_eq!(refs_in(&pack(params)), Err(expect.to_owned()));
        }
    }

    #[test]
    fn results_and_parts_of_them_replace_the_placeholders() {
        let params = pack(json!({
            "whole": {"$ref": "a"},
            "part": {"$ref": "b", "path": "/levels/1/var"},
            "keep": [1, 2],
        }));
        let inputs = pack(json!({
            "a": [1.5, 2.5],
            "b": {"levels": [{"var": 1.0}, {"var": 7.25}]},
        }));
        let out = substitute(&params, &inputs).expect("substitute");
        assert_eq!(
            unpack(&out),
            json!({"whole": [1.5, 2.5], "part": 7.25, "keep": [1, 2]})
        );
        let missing = pack(json!({"x": {"$ref": "b", "path": "/levels/5"}}));
        assert_eq!(
            substitute(&missing, &inputs),
            Err(
                "$ref \"b\": its result has nothing at path \"/levels/5\" (index 5 is outside an array of 2)"
                    .to_owned()
            )
        );
        let absent = pack(json!({"x": {"$ref": "c"}}));
        assert!(
            substitute(&absent, &inputs)
                .unwrap_err()
                .contains("no result of that node")
        );
    }

    #[test]
    fn wildcards_collect_and_negative_indexes_count_from_the_end() {
        let result = crate::msgpack::encode(&json!({
            "predictions": [
                {"symbol": "A", "values": [0.5, 1.0]},
                {"symbol": "B", "values": [-0.25, 2.0]},
            ],
            "series": [{"values": [[1, 2, 3], [4, 5, 6]]}, {"values": [[7], [8, 9]]}],
            "by_name": {"x": {"v": 1}, "y": {"v": 2}},
        }))
        .expect("encode");
        let result: Value = crate::msgpack::decode(&result).expect("decode");
        let check = |path: &str, expect: Result<serde_json::Value, &str>| {
            let got = project(&result, path).map(|v| {
                crate::msgpack::decode::<serde_json::Value>(
                    &crate::msgpack::encode(&v).expect("encode"),
                )
                .expect("decode")
            });
            assert_eq!(got, expect.map_err(str::to_owned), "{path}");
        };
        check("/predictions/*/values/0", Ok(json!([0.5, -0.25])));
        check("/predictions/*/symbol", Ok(json!(["A", "B"])));
        check("/predictions/-1/symbol", Ok(json!("B")));
        check("/series/*/values/*/-1", Ok(json!([[3, 6], [7, 9]])));
        check("/by_name/*/v", Ok(json!([1, 2])));
        check(
            "/predictions/*",
            Ok(json!([
                {"symbol": "A", "values": [0.5, 1.0]},
                {"symbol": "B", "values": [-0.25, 2.0]},
            ])),
        );
        check(
            "/series/*/values/*/2",
            Err("element 1: element 0: index 2 is outside an array of 1"),
        );
        check("/predictions/*/nope", Err("element 0: no key \"nope\""));
        check("/predictions/-3", Err("index -3 is outside an array of 2"));
        check(
            "/predictions/0/symbol/*",
            Err("\"*\" goes into a value that is no array or map"),
        );
    }

    #[test]
    fn wildcard_paths_are_checked_against_the_result_schema() {
        assert_eq!(
            check_path("predict_batch", "/predictions/*/values/0"),
            Ok(())
        );
        assert_eq!(check_path("predict_batch", "/predictions/*/symbol"), Ok(()));
        assert_eq!(check_path("indicators", "/series/*/values/*/-1"), Ok(()));
        assert_eq!(check_path("portfolio_opt", "/weights"), Ok(()));
        assert!(
            check_path("predict_batch", "/predictions/*/value")
                .unwrap_err()
                .contains("has no field \"value\""),
        );
        assert!(
            check_path("predict_batch", "/model_version/*")
                .unwrap_err()
                .contains("which has no parts"),
        );
    }

    #[test]
    fn paths_are_checked_against_the_result_schema() {
        assert_eq!(check_path("risk", "/levels/0/cvar"), Ok(()));
        assert_eq!(check_path("risk", "/mean_loss"), Ok(()));
        assert!(
            check_path("risk", "/levels/x")
                .unwrap_err()
                .contains("must be an index")
        );
        assert!(
            check_path("risk", "/nope")
                .unwrap_err()
                .contains("has no field \"nope\"")
        );
        assert_eq!(check_path("my_own_kind", "/anything"), Ok(()));
        assert_eq!(check_path("echo", "/anything/0"), Ok(()));
    }
}
