//! The price-prediction transformer (issue 17) from the command line:
//! `tandem model new --arch transformer` writes the seeded model the file
//! format's `TransformerModel::random` makes, and names what is wrong with
//! bad arguments.

use std::process::{Command, Output};

use tandem_shared::model_format::transformer::{
    Pooling, Positions, TransformerModel, TransformerShape,
};

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

#[test]
fn model_new_writes_a_seeded_transformer() {
    let redis = RedisServer::start();
    let dir = ScratchDir::new("transformer");
    let path = dir.path().join("xf.safetensors");
    let path_text = path.to_str().unwrap();
    let args = [
        "model",
        "new",
        "xf",
        "--arch",
        "transformer",
        "--layers",
        "2",
        "--d-model",
        "32",
        "--heads",
        "4",
        "--window",
        "16",
        "--features",
        "8",
        "--causal",
        "--seed",
        "5",
        "--out",
        path_text,
    ];
    // 2 blocks of d_model 32 and ff 128: 16 (normalisation) + 288 (input
    // projection) + 512 (positions) + 2 x 12,704 + 64 + 33 (final norm,
    // head) = 26,321 floats, 105,284 bytes.
    let out = tandem(
        &redis,
        &[("TANDEM_MODEL_HEAVY_THRESHOLD_BYTES", "105283")],
        &args,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("26,321 parameters (105,284 bytes), heavy"),
        "{text}"
    );
    let file = std::fs::read(&path).unwrap();
    let shape = TransformerShape {
        features: 8,
        window: 16,
        d_model: 32,
        heads: 4,
        layers: 2,
        ff: 128,
        outputs: 1,
        causal: true,
        pooling: Pooling::Last,
        positions: Positions::Learned,
    };
    let expected = TransformerModel::random(shape, 5).unwrap();
    assert_eq!(file, expected.encode());
    assert_eq!(TransformerModel::decode(&file).unwrap(), expected);
    // One byte under the threshold's line, light.
    let out = tandem(
        &redis,
        &[("TANDEM_MODEL_HEAVY_THRESHOLD_BYTES", "105284")],
        &args,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("bytes), light"));

    for (change, expect) in [
        (
            ("--layers", "2,3"),
            "--layers: a transformer takes one number",
        ),
        (("--heads", "5"), "5 heads do not divide d_model 32"),
        (("--window", "0"), "window: 0 is not within"),
    ] {
        let mut bad: Vec<&str> = args.to_vec();
        let at = bad.iter().position(|a| *a == change.0).unwrap();
        bad[at + 1] = change.1;
        let out = tandem(&redis, &[], &bad);
        let error = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && error.contains(expect),
            "{change:?}: {error}"
        );
    }
    let mut register = args.to_vec();
    register.push("--register");
    let out = tandem(&redis, &[], &register);
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && error.contains("the model registry serves MLPs only"),
        "{error}"
    );
}
