//! `tandem kinds`: every kind this build defines, with its class, whether
//! it splits, its parameters (name, type, bounds, default, meaning) and an
//! example; `--json-schema` emits the JSON Schemas of each kind's
//! parameters and result instead (`tandem_shared::kind::catalog`, derived
//! from the Rust types). Needs no Redis.

use std::process::ExitCode;

use serde_json::{Map, Value};
use tandem_shared::exit;
use tandem_shared::kind::catalog::{self, KindInfo};

use super::table;

#[derive(Debug, clap::Args)]
pub struct KindsArgs {
    /// Only this kind.
    pub kind: Option<String>,
    /// One JSON object: per kind, its class, whether it splits, and the
    /// JSON Schemas (draft 2020-12) of its parameters and result.
    #[arg(long)]
    pub json_schema: bool,
}

pub(crate) fn run(args: KindsArgs) -> ExitCode {
    let kinds: Vec<KindInfo> = match &args.kind {
        None => catalog::catalog(),
        Some(name) => match catalog::info(name) {
            Some(info) => vec![info],
            None => {
                let names: Vec<&str> = catalog::catalog().iter().map(|k| k.kind).collect();
                eprintln!(
                    "tandem: no kind {name:?}; the kinds are {}",
                    names.join(", ")
                );
                return ExitCode::from(exit::USAGE);
            }
        },
    };
    if args.json_schema {
        let all: Map<String, Value> = kinds
            .iter()
            .map(|k| (k.kind.to_owned(), k.to_json()))
            .collect();
        match serde_json::to_string_pretty(&Value::Object(all)) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("tandem: {err}");
                return ExitCode::from(exit::ERROR);
            }
        }
        return ExitCode::SUCCESS;
    }
    let mut first = true;
    for info in &kinds {
        if !first {
            println!();
        }
        first = false;
        print!("{}", describe(info));
    }
    ExitCode::SUCCESS
}

/// One kind, for people.
fn describe(info: &KindInfo) -> String {
    let mut out = format!(
        "{}  class {}{}{}\n  {}\n",
        info.kind,
        info.class.as_str(),
        if info.splits { ", splits" } else { "" },
        if info.test_only {
            ", test kind (workers with test_kinds = true)"
        } else {
            ""
        },
        info.summary
    );
    let schema = info.params.as_value();
    let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
    let variants = schema.get("oneOf").and_then(Value::as_array);
    match variants {
        Some(variants) => {
            for variant in variants {
                let variant = merged(variant, &defs);
                out.push_str(&format!("  {}:\n", variant_name(&variant)));
                out.push_str(&indent(&parameters(&variant, &defs)));
            }
        }
        None if schema.get("properties").is_some() => {
            out.push_str(&indent(&parameters(schema, &defs)));
        }
        None => out.push_str(&format!("  parameters: {}\n", describe_type(schema, &defs))),
    }
    out.push_str(&format!("  example: {}\n", info.example));
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// The parameter table of one object schema.
fn parameters(schema: &Value, defs: &Value) -> String {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut rows = vec![vec![
        "parameter".to_owned(),
        "type".to_owned(),
        "bounds".to_owned(),
        "default".to_owned(),
        "meaning".to_owned(),
    ]];
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return String::new();
    };
    for (name, field) in properties {
        let resolved = resolve(field, defs);
        let default = if required.contains(&name.as_str()) {
            "required".to_owned()
        } else {
            field
                .get("default")
                .map_or_else(|| "none".to_owned(), Value::to_string)
        };
        let meaning = field
            .get("description")
            .or_else(|| resolved.get("description"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .replace('\n', " ");
        rows.push(vec![
            name.clone(),
            describe_type(field, defs),
            bounds(field),
            default,
            meaning,
        ]);
    }
    table::render(&rows)
}

/// A `$ref` to its definition; anything else as it is.
fn resolve<'a>(schema: &'a Value, defs: &'a Value) -> &'a Value {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|name| defs.get(name))
        .unwrap_or(schema)
}

/// A variant of an internally tagged enum, whose own schema holds the tag
/// and whose `$ref` the other fields: one object schema of both.
fn merged(variant: &Value, defs: &Value) -> Value {
    let mut whole = resolve(variant, defs).clone();
    if let (Some(Value::Object(all)), Some(Value::Object(own))) =
        (whole.get_mut("properties"), variant.get("properties"))
    {
        for (name, field) in own {
            all.insert(name.clone(), field.clone());
        }
    }
    if let (Some(Value::Array(all)), Some(Value::Array(own))) =
        (whole.get_mut("required"), variant.get("required"))
    {
        all.extend(own.iter().cloned());
    }
    whole
}

/// The tag of a variant of an internally tagged enum: `method = historical`.
fn variant_name(variant: &Value) -> String {
    let Some(properties) = variant.get("properties").and_then(Value::as_object) else {
        return "variant".to_owned();
    };
    for (name, field) in properties {
        if let Some(value) = field.get("const") {
            return format!("{name} = {value}");
        }
    }
    "variant".to_owned()
}

/// A field's type in a few words: `number`, `array of number`, `"sma" |
/// "ema"`, `Optimizer: one of type = "sgd", type = "adam"`.
fn describe_type(schema: &Value, defs: &Value) -> String {
    let name = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"));
    let resolved = resolve(schema, defs);
    if let Some(value) = resolved.get("const") {
        return value.to_string();
    }
    if let Some(values) = resolved.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join(" | ");
    }
    if let Some(variants) = resolved.get("oneOf").and_then(Value::as_array) {
        let names: Vec<String> = variants
            .iter()
            .map(|v| {
                let v = resolve(v, defs);
                if v.get("const").is_some() || v.get("enum").is_some() {
                    describe_type(v, defs)
                } else {
                    variant_name(v)
                }
            })
            .collect();
        let list = names.join(", ");
        return match name {
            Some(name) => format!("{name}: one of {list}"),
            None => format!("one of {list}"),
        };
    }
    if let Some(inner) = resolved.get("anyOf").and_then(Value::as_array) {
        let parts: Vec<String> = inner.iter().map(|v| describe_type(v, defs)).collect();
        return parts.join(" or ");
    }
    let types: Vec<&str> = match resolved.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if types.is_empty() {
        return match resolved.get("description").and_then(Value::as_str) {
            Some(d) if name.is_none() => d.to_owned(),
            _ => "any".to_owned(),
        };
    }
    let described: Vec<String> = types
        .iter()
        .map(|t| match *t {
            "array" => match resolved.get("items") {
                Some(items) => format!("array of {}", describe_type(items, defs)),
                None => "array".to_owned(),
            },
            "object" => name.map_or_else(|| "map".to_owned(), |n| format!("{n} (map)")),
            other => other.to_owned(),
        })
        .collect();
    described.join(" or ")
}

/// A field's bounds in mathematical notation: `>= 1, <= 10000`, `> 0`,
/// `1..=16 items`.
fn bounds(schema: &Value) -> String {
    let mut parts = Vec::new();
    let number = |key: &str| schema.get(key).filter(|v| v.is_number());
    if let Some(v) = number("exclusiveMinimum") {
        parts.push(format!("> {v}"));
    } else if let Some(v) = number("minimum") {
        parts.push(format!(">= {v}"));
    }
    if let Some(v) = number("exclusiveMaximum") {
        parts.push(format!("< {v}"));
    } else if let Some(v) = number("maximum") {
        parts.push(format!("<= {v}"));
    }
    match (number("minItems"), number("maxItems")) {
        (Some(min), Some(max)) => parts.push(format!("{min} to {max} items")),
        (Some(min), None) => parts.push(format!("at least {min} items")),
        (None, Some(max)) => parts.push(format!("at most {max} items")),
        (None, None) => {}
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monte_carlo_lists_its_parameters_with_bounds_defaults_and_meanings() {
        let info = catalog::info("monte_carlo").expect("monte_carlo");
        let text = describe(&info);
        assert!(
            text.starts_with("monte_carlo  class parallel, splits\n"),
            "{text}"
        );
        let steps = text
            .lines()
            .find(|l| l.trim_start().starts_with("steps "))
            .unwrap_or_else(|| panic!("no steps row:\n{text}"));
        assert!(steps.contains("integer"), "{steps}");
        assert!(steps.contains(">= 1, <= 10000"), "{steps}");
        assert!(steps.contains("required"), "{steps}");
        let dividend = text
            .lines()
            .find(|l| l.trim_start().starts_with("dividend "))
            .unwrap_or_else(|| panic!("no dividend row:\n{text}"));
        assert!(dividend.contains("0.0"), "default 0: {dividend}");
        assert!(dividend.contains("Dividend yield"), "{dividend}");
        assert!(text.contains("  example: {"), "{text}");
    }

    #[test]
    fn risk_lists_each_method_with_its_own_parameters() {
        let text = describe(&catalog::info("risk").expect("risk"));
        assert!(text.contains("  method = \"monte_carlo\":\n"), "{text}");
        assert!(text.contains("  method = \"historical\":\n"), "{text}");
        assert!(text.contains("returns"), "{text}");
    }

    #[test]
    fn untyped_kinds_say_what_they_take() {
        let text = describe(&catalog::info("echo").expect("echo"));
        assert!(text.contains("parameters: any MessagePack value"), "{text}");
    }
}
