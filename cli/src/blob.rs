//! `tandem blob put | get | stat | sweep`: the blob store by hand, for
//! producers that speak raw Redis (put a file, then reference it in a
//! task's parameters: docs/wire-format.md, "Blob references") and for
//! operators.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use std::io::Write;
use tandem_shared::Config;
use tandem_shared::blob::{BlobRef, BlobStore};
use tandem_shared::exit;
use tandem_shared::store::Store;

#[derive(Debug, Subcommand)]
pub enum BlobCommand {
    /// Store a file (its bytes are a task's MessagePack parameters) and
    /// print the reference to put in the task's `params` field, as JSON. One
    /// reference: the task that uses it gives it back when it ends;
    /// unused, it expires after blob_ttl_s.
    Put { path: PathBuf },
    /// Write a blob's bytes to a file, or to stdout.
    Get {
        sha256: String,
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// A blob's length, references, time to live and backend.
    Stat { sha256: String },
    /// With a directory or S3 blob_store: delete the objects whose
    /// bookkeeping expired (unreleased for blob_ttl_s).
    Sweep,
}

pub(crate) async fn run(config: &Config, command: BlobCommand) -> anyhow::Result<ExitCode> {
    let store = Store::connect_retrying(config).await?;
    let blobs = BlobStore::open(store, config)?;
    match command {
        BlobCommand::Put { path } => {
            let blob = blobs.put_file(&path, blobs.ttl_ms()).await?;
            println!("{}", serde_json::to_string(&blob)?);
        }
        BlobCommand::Get { sha256, out } => {
            let Some(stat) = blobs.stat(&sha256).await? else {
                eprintln!("no blob {sha256} (expired after blob_ttl_s, released, or never stored)");
                return Ok(ExitCode::from(exit::NOT_FOUND));
            };
            let bytes = blobs
                .get(&BlobRef {
                    sha256,
                    len: stat.len,
                })
                .await?;
            match out {
                Some(path) => tokio::fs::write(&path, &bytes)
                    .await
                    .with_context(|| format!("writing {}", path.display()))?,
                None => {
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(&bytes)?;
                    stdout.flush()?;
                }
            }
        }
        BlobCommand::Stat { sha256 } => match blobs.stat(&sha256).await? {
            Some(stat) => {
                println!("sha256   {}", stat.sha256);
                println!("len      {}", stat.len);
                println!("refs     {}", stat.refs);
                println!(
                    "ttl_ms   {}",
                    stat.ttl_ms.map_or("none".to_owned(), |ms| ms.to_string())
                );
                println!("backend  {}", stat.backend);
            }
            None => {
                eprintln!("no blob {sha256} (expired after blob_ttl_s, released, or never stored)");
                return Ok(ExitCode::from(exit::NOT_FOUND));
            }
        },
        BlobCommand::Sweep => {
            let swept = blobs.sweep().await?;
            println!("{swept} objects deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}
