//! `tandem model`: creating, registering, uploading, listing and removing
//! models against a real Redis.

use std::process::{Command, Output};

use redis::AsyncCommands;
use tandem_shared::model_format::{Activation, Model, sha256_hex};
use tandem_shared::store::{ModelPolicy, ModelSource, Store};

use crate::support::{RedisServer, ScratchDir, bin};

fn tandem(redis: &RedisServer, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("tandem"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", redis.url())
        .envs(env.iter().copied());
    cmd.output().expect("run tandem")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `tandem model ...` that must succeed; its standard output.
fn ok(redis: &RedisServer, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = tandem(redis, env, args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

/// The cells of the `tandem model list` row of `name`.
fn list_row(redis: &RedisServer, name: &str) -> Vec<String> {
    let text = ok(redis, &[], &["model", "list"]);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name} in\n{text}"));
    line.split_whitespace().map(str::to_owned).collect()
}

/// The value of one field of `tandem model show`.
fn show_field(text: &str, field: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(field).filter(|rest| rest.starts_with("  ")))
        .unwrap_or_else(|| panic!("no {field} in\n{text}"))
        .trim()
        .to_owned()
}

#[tokio::test]
async fn new_register_list_show_upload_and_rm() {
    let redis = RedisServer::start();
    let dir = ScratchDir::new("models");
    let path = dir.path().join("m1.safetensors");
    let path_text = path.to_str().unwrap();

    let text = ok(
        &redis,
        &[],
        &[
            "model",
            "new",
            "m1",
            "--layers",
            "16,64,64,1",
            "--seed",
            "9",
            "--out",
            path_text,
            "--register",
        ],
    );
    assert!(text.contains("registered model m1 version 1"), "{text}");
    // The file is the model `Model::random` makes for those arguments.
    let file = std::fs::read(&path).unwrap();
    let expected = Model::random(&[16, 64, 64, 1], Activation::Relu, 9).unwrap();
    assert_eq!(file, expected.encode());

    // (17*64 + 65*64 + 65) + 2*16 floats = 5345 * 4 bytes of parameters.
    let row = list_row(&redis, "m1");
    assert_eq!(
        row[1..7],
        [
            "light",
            "mlp",
            "16,64,64,1",
            "relu",
            &thousands(file.len()),
            "1"
        ]
    );
    let text = ok(&redis, &[], &["model", "show", "m1"]);
    assert_eq!(show_field(&text, "class"), "light");
    assert_eq!(show_field(&text, "layers"), "16,64,64,1");
    assert_eq!(show_field(&text, "arch"), "mlp");
    assert_eq!(show_field(&text, "format"), "tandem-mlp version 1");
    assert_eq!(show_field(&text, "parameter bytes"), "21,380");
    assert_eq!(show_field(&text, "source"), "path");
    assert_eq!(show_field(&text, "sha256"), sha256_hex(&file));
    let canonical = std::fs::canonicalize(&path).unwrap();
    assert_eq!(show_field(&text, "path"), canonical.to_str().unwrap());

    // Re-registered under a threshold below its 21,380 parameter bytes, it
    // is heavy, and its version goes up.
    let text = ok(
        &redis,
        &[("TANDEM_MODEL_HEAVY_THRESHOLD_BYTES", "21379")],
        &["model", "register", "m1", path_text],
    );
    assert!(
        text.contains("version 2") && text.contains("heavy"),
        "{text}"
    );
    assert_eq!(list_row(&redis, "m1")[1], "heavy");
    assert_eq!(list_row(&redis, "m1")[6], "2");

    // A small one uploaded into Redis: the registry hands back the same
    // bytes, checked against their SHA-256.
    let text = ok(
        &redis,
        &[],
        &[
            "model",
            "new",
            "m2",
            "--layers",
            "4,8,2",
            "--activation",
            "tanh",
            "--seed",
            "3",
            "--upload",
        ],
    );
    assert!(
        text.contains("registered model m2 version 1 (redis"),
        "{text}"
    );
    let row = list_row(&redis, "m2");
    assert_eq!(row[1..5], ["light", "mlp", "4,8,2", "tanh"]);
    assert_eq!(row[8], "redis");
    let store = Store::connect(&redis.config()).await.unwrap();
    let (info, bytes) = store.load_model_file("m2").await.unwrap().unwrap();
    let expected = Model::random(&[4, 8, 2], Activation::Tanh, 3)
        .unwrap()
        .encode();
    assert_eq!(bytes, expected);
    assert_eq!(info.source, ModelSource::Redis);
    assert_eq!(info.sha256, sha256_hex(&expected));
    let (info, bytes) = store.load_model_file("m1").await.unwrap().unwrap();
    assert_eq!(bytes, file);
    assert_eq!(info.version, 2);

    // Over the upload limit: refused, pointing at registering by path.
    let out = tandem(
        &redis,
        &[("TANDEM_MAX_MODEL_UPLOAD_BYTES", "1000")],
        &["model", "upload", "m3", path_text],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("over the upload limit of 1000"),
        "{}",
        stderr(&out)
    );
    // Within it: the same file uploaded replaces nothing else.
    let text = ok(&redis, &[], &["model", "upload", "m3", path_text]);
    assert!(
        text.contains("registered model m3 version 1 (redis"),
        "{text}"
    );

    // Removing an uploaded model deletes its blob; a path model's file stays.
    let mut conn = redis.conn().await;
    assert!(
        conn.exists::<_, bool>("tandem:{models}:model:m2:blob")
            .await
            .unwrap()
    );
    let text = ok(&redis, &[], &["model", "rm", "m2"]);
    assert!(text.contains("removed model m2"), "{text}");
    assert!(
        !conn
            .exists::<_, bool>("tandem:{models}:model:m2:blob")
            .await
            .unwrap()
    );
    ok(&redis, &[], &["model", "rm", "m1"]);
    assert!(path.exists());
    let out = tandem(&redis, &[], &["model", "rm", "m2"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("no model m2"), "{}", stderr(&out));
    let out = tandem(&redis, &[], &["model", "show", "m1"]);
    assert_eq!(out.status.code(), Some(3));
    let text = ok(&redis, &[], &["model", "list"]);
    assert!(text.contains("\n1 models"), "{text}");
    let names: Vec<String> = conn.smembers("tandem:{models}:index").await.unwrap();
    assert_eq!(names, ["m3"]);
}

#[tokio::test]
async fn files_that_are_not_models_are_refused() {
    let redis = RedisServer::start();
    let dir = ScratchDir::new("not-models");
    let text_file = dir.path().join("notes.txt");
    std::fs::write(&text_file, "these are not weights\n").unwrap();
    let text_path = text_file.to_str().unwrap();
    for command in ["register", "upload"] {
        let out = tandem(&redis, &[], &["model", command, "notes", text_path]);
        assert_eq!(out.status.code(), Some(1), "{command}");
        let err = stderr(&out);
        assert!(
            err.contains("is not a valid model: not a safetensors file"),
            "{command}: {err}"
        );
    }

    // A well-formed model file with one NaN weight.
    let mut model = Model::random(&[3, 5, 1], Activation::Relu, 1).unwrap();
    model.layers[1].weight[4] = f32::NAN;
    let nan_file = dir.path().join("nan.safetensors");
    std::fs::write(&nan_file, model.encode()).unwrap();
    let out = tandem(
        &redis,
        &[],
        &["model", "register", "nan", nan_file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "is not a valid model: tensor `layer.1.weight` holds NaN at index 4; every value must be finite"
        ),
        "{}",
        stderr(&out)
    );

    // Bad names and missing files say so.
    let out = tandem(&redis, &[], &["model", "register", "a:b", text_path]);
    assert!(
        stderr(&out).contains("invalid model name \"a:b\""),
        "{}",
        stderr(&out)
    );
    let missing = dir.path().join("missing.safetensors");
    let out = tandem(
        &redis,
        &[],
        &["model", "register", "m", missing.to_str().unwrap()],
    );
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));

    // Nothing was registered.
    let store = Store::connect(&redis.config()).await.unwrap();
    assert!(store.models().await.unwrap().is_empty());
    // The store refuses the same way when called directly.
    let policy = ModelPolicy::from(&redis.config());
    let err = store.upload_model("x", b"junk", &policy).await.unwrap_err();
    assert!(err.to_string().contains("not a safetensors file"), "{err}");
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
