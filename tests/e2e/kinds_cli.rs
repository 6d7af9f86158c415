//! `tandem kinds` and `tandem kinds --json-schema` (no Redis), and
//! `tandem submit` refusing parameters that break a kind's schema, naming
//! the field, before anything reaches Redis.

use std::process::{Command, Output};

use redis::AsyncCommands;
use serde_json::Value;

use crate::support::{RedisServer, bin};

fn tandem(redis: Option<&RedisServer>, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("tandem"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    if let Some(redis) = redis {
        cmd.env("REDIS_URL", redis.url());
    }
    cmd.output().expect("run tandem")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn kinds_lists_every_kind_and_its_schemas() {
    let out = tandem(None, &["kinds", "--json-schema"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let schemas: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let schemas = schemas.as_object().expect("an object of kinds");
    for kind in [
        "noop",
        "sleep",
        "echo",
        "fail",
        "monte_carlo",
        "risk",
        "indicators",
        "patterns",
        "portfolio_opt",
        "infer",
        "predict_batch",
        "train",
    ] {
        let entry = schemas
            .get(kind)
            .unwrap_or_else(|| panic!("{kind} missing"));
        assert!(entry["class"].is_string(), "{kind}: {entry}");
        assert!(entry["splits"].is_boolean(), "{kind}: {entry}");
        assert_eq!(
            entry["params"]["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{kind}"
        );
        assert!(entry["result"].is_object(), "{kind}: {entry}");
    }
    assert_eq!(schemas["monte_carlo"]["splits"], true);
    assert_eq!(schemas["indicators"]["splits"], false);
    assert_eq!(
        schemas["sleep"]["result"]["properties"]["slept_ms"]["type"],
        "integer"
    );

    let out = tandem(None, &["kinds"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    for kind in schemas.keys() {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(&format!("{kind}  class "))),
            "{kind} not listed:\n{listing}"
        );
    }

    let out = tandem(None, &["kinds", "montecarlo"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(r#"no kind "montecarlo"; the kinds are noop, sleep"#),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn submit_names_the_field_that_breaks_the_schema_and_sends_nothing() {
    let redis = RedisServer::start();
    let good = r#"{"s0": 100, "strike": 100, "rate": 0.05, "sigma": 0.2, "maturity": 1,
                   "steps": 4, "paths": 4096, "seed": 1}"#;
    for (params, message) in [
        (
            good.replace("\"sigma\": 0.2", "\"sigma\": \"0.2\""),
            r#"sigma: expected a number, got a string ("0.2")"#,
        ),
        (
            good.replace("\"sigma\": 0.2, ", ""),
            "sigma: required field is missing",
        ),
        (
            good.replace("\"seed\": 1", "\"seed\": 1, \"sigmaa\": 1"),
            "sigmaa: unknown field; the fields are s0, strike",
        ),
        (good.replace("\"steps\": 4", "\"steps\": 0"), "steps"),
    ] {
        let out = tandem(
            Some(&redis),
            &["submit", "monte_carlo", "--params", &params],
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{params}: {stderr}");
        assert!(
            stderr.contains("bad parameters for kind monte_carlo") && stderr.contains(message),
            "{params}: {stderr}"
        );
    }
    let mut conn = redis.conn().await;
    let waiting: u64 = conn
        .xlen("tandem:{parallel}:stream:normal")
        .await
        .expect("XLEN");
    assert_eq!(waiting, 0, "nothing was submitted");
    let out = tandem(Some(&redis), &["submit", "monte_carlo", "--params", good]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
