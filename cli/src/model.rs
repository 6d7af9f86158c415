//! `tandem model new | register | upload | list | show | rm`: the model
//! registry.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tandem_shared::clock::now_ms;

use anyhow::Context;
use clap::{Args, Subcommand};
use tandem_shared::Config;
use tandem_shared::model_format::transformer::{
    Pooling, Positions, TransformerModel, TransformerShape,
};
use tandem_shared::model_format::{Activation, Model};
use tandem_shared::store::{
    ModelArch, ModelInfo, ModelPolicy, ModelSource, Store, check_model_name,
};

use super::table;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Create a model with random weights (tests, demos): write it to a file
    /// (and register that path), or upload it.
    New(NewArgs),
    /// Register a model file on a volume every worker mounts at the same path.
    Register { name: String, path: PathBuf },
    /// Store a small model file in Redis (up to max_model_upload_bytes).
    Upload { name: String, path: PathBuf },
    /// Every registered model.
    List,
    /// One model's record.
    Show { name: String },
    /// Unregister a model (an uploaded file goes too; a path's file stays).
    Rm { name: String },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["out", "upload"])))]
pub struct NewArgs {
    pub name: String,
    /// mlp, or transformer (the encoder-only price-prediction transformer).
    #[arg(long, default_value = "mlp", value_parser = ["mlp", "transformer"])]
    pub arch: String,
    /// mlp: layer widths from inputs to outputs, e.g. 16,64,64,1;
    /// transformer: the number of blocks, e.g. 4.
    #[arg(long, value_delimiter = ',', required = true)]
    pub layers: Vec<usize>,
    /// transformer: the model width.
    #[arg(long, default_value_t = 256)]
    pub d_model: usize,
    /// transformer: attention heads (they divide d_model).
    #[arg(long, default_value_t = 8)]
    pub heads: usize,
    /// transformer: time steps per input window.
    #[arg(long, default_value_t = 128)]
    pub window: usize,
    /// transformer: features per time step.
    #[arg(long, default_value_t = 32)]
    pub features: usize,
    /// transformer: the feed-forward width (default 4 x d_model).
    #[arg(long)]
    pub ff: Option<usize>,
    /// transformer: outputs of the regression head.
    #[arg(long, default_value_t = 1)]
    pub outputs: usize,
    /// transformer: each step attends only to itself and earlier steps.
    #[arg(long)]
    pub causal: bool,
    /// transformer: the head reads the last step or the mean of all.
    #[arg(long, default_value = "last")]
    pub pooling: Pooling,
    /// transformer: learned or sinusoidal positions.
    #[arg(long, default_value = "learned")]
    pub positions: Positions,
    /// Between hidden layers: relu (He init) or tanh (Xavier init).
    #[arg(long, default_value = "relu")]
    pub activation: Activation,
    /// The same seed gives the same weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the file here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also register the written file by its path.
    #[arg(long, requires = "out")]
    pub register: bool,
    /// Upload into Redis instead of writing a file.
    #[arg(long)]
    pub upload: bool,
}

pub(crate) async fn run(config: &Config, command: ModelCommand) -> anyhow::Result<ExitCode> {
    let policy = ModelPolicy::from(config);
    match command {
        ModelCommand::New(args) => new(config, &policy, args).await,
        ModelCommand::Register { name, path } => {
            check_model_name(&name)?;
            let store = Store::connect_retrying(config).await?;
            let info = store.register_model_path(&name, &path, &policy).await?;
            print_registered(&info);
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Upload { name, path } => {
            check_model_name(&name)?;
            let file = read_file(&path)?;
            let store = Store::connect_retrying(config).await?;
            let info = store.upload_model(&name, &file, &policy).await?;
            print_registered(&info);
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::List => {
            let store = Store::connect_retrying(config).await?;
            print_list(&store.models().await?);
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Show { name } => {
            let store = Store::connect_retrying(config).await?;
            match store.model_info(&name).await? {
                Some(info) => {
                    print_info(&info);
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("no model {name}");
                    Ok(ExitCode::from(3))
                }
            }
        }
        ModelCommand::Rm { name } => {
            let store = Store::connect_retrying(config).await?;
            if store.remove_model(&name).await? {
                println!("removed model {name}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no model {name}");
                Ok(ExitCode::from(3))
            }
        }
    }
}

async fn new(config: &Config, policy: &ModelPolicy, args: NewArgs) -> anyhow::Result<ExitCode> {
    check_model_name(&args.name)?;
    if args.arch == "transformer" {
        return new_transformer(config, policy, args).await;
    }
    let model = Model::random(&args.layers, args.activation, args.seed)
        .context("cannot create the model")?;
    let shape = model.shape();
    let file = model.encode();
    let summary = format!(
        "layers {}, {}, {} parameters ({} bytes), {}",
        shape.sizes_text(),
        shape.activation,
        table::thousands(shape.parameter_bytes() / 4),
        table::thousands(shape.parameter_bytes()),
        shape.class(policy.heavy_threshold_bytes),
    );
    if let Some(out) = &args.out {
        std::fs::write(out, &file).with_context(|| format!("cannot write {}", out.display()))?;
        println!("wrote {}: {summary}", out.display());
    }
    register_new(config, policy, &args, &file).await?;
    Ok(ExitCode::SUCCESS)
}

/// `tandem model new --arch transformer`: writes the file (and registers
/// its path) or uploads it, as for an MLP.
async fn new_transformer(
    config: &Config,
    policy: &ModelPolicy,
    args: NewArgs,
) -> anyhow::Result<ExitCode> {
    let &[layers] = args.layers.as_slice() else {
        anyhow::bail!(
            "--layers: a transformer takes one number (its blocks), got {:?}",
            args.layers
        );
    };
    let shape = TransformerShape {
        features: args.features,
        window: args.window,
        d_model: args.d_model,
        heads: args.heads,
        layers,
        ff: args.ff.unwrap_or(4 * args.d_model),
        outputs: args.outputs,
        causal: args.causal,
        pooling: args.pooling,
        positions: args.positions,
    };
    let model = TransformerModel::random(shape, args.seed).context("cannot create the model")?;
    let file = model.encode();
    let summary = format!(
        "{}, {} parameters ({} bytes), {}",
        shape.summary(),
        table::thousands(shape.parameter_count()),
        table::thousands(shape.parameter_bytes()),
        shape.class(policy.heavy_threshold_bytes),
    );
    if let Some(out) = &args.out {
        std::fs::write(out, &file).with_context(|| format!("cannot write {}", out.display()))?;
        println!("wrote {}: {summary}", out.display());
    }
    register_new(config, policy, &args, &file).await?;
    Ok(ExitCode::SUCCESS)
}

/// `--register` (the written file by its path) or `--upload` (the bytes).
async fn register_new(
    config: &Config,
    policy: &ModelPolicy,
    args: &NewArgs,
    file: &[u8],
) -> anyhow::Result<()> {
    if args.register || args.upload {
        let store = Store::connect_retrying(config).await?;
        let info = match &args.out {
            Some(out) if args.register => {
                store.register_model_path(&args.name, out, policy).await?
            }
            _ => store.upload_model(&args.name, file, policy).await?,
        };
        print_registered(&info);
    }
    Ok(())
}

fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn print_registered(info: &ModelInfo) {
    println!(
        "registered model {} version {} ({}, {}, {} {}, {} bytes)",
        info.name,
        info.version,
        where_(info),
        info.class,
        info.arch.name(),
        info.arch.describe(),
        table::thousands(info.bytes),
    );
}

/// Where the file lives: its path, or `redis`.
fn where_(info: &ModelInfo) -> String {
    match &info.source {
        ModelSource::Path(path) => path.display().to_string(),
        ModelSource::Redis => "redis".to_owned(),
    }
}

fn print_list(models: &[ModelInfo]) {
    let now = now_ms();
    let mut rows = vec![
        [
            "model",
            "class",
            "arch",
            "shape",
            "activation",
            "bytes",
            "version",
            "age",
            "source",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for info in models {
        rows.push(vec![
            info.name.clone(),
            info.class.to_string(),
            info.arch.name().to_owned(),
            info.arch.describe(),
            info.arch.activation(),
            table::thousands(info.bytes),
            info.version.to_string(),
            table::age(now.saturating_sub(info.registered_at_ms)),
            where_(info),
        ]);
    }
    print!("{}", table::render(&rows));
    println!("\n{} models", models.len());
}

fn print_info(info: &ModelInfo) {
    let now = now_ms();
    let rows: Vec<Vec<String>> = [
        ("field", "value".to_owned()),
        ("model", info.name.clone()),
        ("class", info.class.to_string()),
        ("arch", info.arch.name().to_owned()),
        (
            "format",
            format!("{} version {}", info.arch.format().0, info.arch.format().1),
        ),
        (
            match info.arch {
                ModelArch::Mlp(_) => "layers",
                ModelArch::Transformer(_) => "config",
            },
            info.arch.describe(),
        ),
        ("activation", info.arch.activation()),
        ("bytes", table::thousands(info.bytes)),
        ("parameter bytes", table::thousands(info.parameter_bytes)),
        ("source", info.source.as_str().to_owned()),
        ("path", where_(info)),
        ("sha256", info.sha256.clone()),
        ("version", info.version.to_string()),
        (
            "registered",
            format!(
                "{} ago",
                table::age(now.saturating_sub(info.registered_at_ms))
            ),
        ),
    ]
    .into_iter()
    .map(|(field, value)| vec![field.to_owned(), value])
    .collect();
    print!("{}", table::render(&rows));
}
