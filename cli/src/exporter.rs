//! `tandem exporter`: the queue metrics (waiting, running, oldest waiting
//! age, delayed, retrying, dead letters) on `GET /metrics` for a host that
//! runs no fleet (a fleet's own `/metrics` serves them too).

use std::net::SocketAddr;
use std::process::ExitCode;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Args;
use tandem_shared::Config;
use tandem_shared::store::Store;

/// The `Content-Type` of the Prometheus text format.
pub(crate) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Args)]
pub struct ExporterArgs {
    /// Where to listen: loopback by default; 0.0.0.0:9465 for a Prometheus
    /// on another host.
    #[arg(long, default_value = "127.0.0.1:9465")]
    pub listen: SocketAddr,
}

pub(crate) async fn run(config: &Config, args: ExporterArgs) -> anyhow::Result<ExitCode> {
    let store = Store::connect_retrying(config).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (--listen): {e}", args.listen))?;
    eprintln!(
        "tandem exporter: queue metrics on http://{}/metrics",
        listener.local_addr()?
    );
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(store);
    axum::serve(listener, app).await?;
    Ok(ExitCode::SUCCESS)
}

async fn metrics(State(store): State<Store>) -> impl IntoResponse {
    match render(&store).await {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            text,
        ),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("{why}\n"),
        ),
    }
}

/// The queue metrics, `tandem_build_info` and how long the read took.
pub(crate) async fn render(store: &Store) -> Result<String, String> {
    let started = std::time::Instant::now();
    let snapshot = store
        .queue_snapshot()
        .await
        .map_err(|e| format!("cannot read the queues: {e}"))?;
    let mut text = snapshot.render();
    text.push_str(&format!(
        "# HELP tandem_build_info The Tandem version serving these metrics.\n\
         # TYPE tandem_build_info gauge\n\
         tandem_build_info{{version=\"{}\",component=\"exporter\"}} 1\n\
         # HELP tandem_queue_read_seconds How long reading the queues from Redis took.\n\
         # TYPE tandem_queue_read_seconds gauge\n\
         tandem_queue_read_seconds {}\n",
        env!("CARGO_PKG_VERSION"),
        started.elapsed().as_secs_f64()
    ));
    Ok(text)
}
