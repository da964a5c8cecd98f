//! `paragen serve`: translation over HTTP with the dynamic model of `paragen-adaptive`.
//!
//! Every variant of a models directory is loaded and profiled (or its stored profile
//! read), the router picks one per request under its budget, requests wait in bounded
//! per-variant queues and are decoded in dynamic batches by the engine threads (one by
//! default) that own the models, and the HTTP side (axum on tokio) answers:
//!
//! - `POST /v1/translate` `{"text"|"texts"|"document", "budget_ms"?, "min_bleu"?, "tier"?,
//!   "variant"?}` (a document is split into sentences, translated, and joined);
//! - `GET /v1/variants` (profiles), `GET /health`, `GET /metrics` (Prometheus), `GET /`
//!   (a page to try it).
//!
//! Overload is refused (503 with `Retry-After`), never queued without bound; request size
//! is bounded (413); bad JSON gets a 400 that says why; SIGTERM or Ctrl-C stops
//! accepting and answers what is in flight before exiting.
//!
//! - [`api`]: routes, bodies, status codes; [`engine`]: admission and the decoding loop;
//!   [`metrics`]: the Prometheus registry.
//!
//! **Depends on:** paragen-adaptive, paragen-infer, paragen-data, burn, axum, tokio.
//! **Invariant:** the models live on the engine thread only; the HTTP side sees their
//! profiles and tokenizers.

pub mod api;
pub mod engine;
pub mod metrics;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use burn::prelude::*;
use paragen_adaptive::profile::{Machine, ensure};
use paragen_adaptive::variant::select;
use paragen_adaptive::{BatchPolicy, ProfileSettings, discover};
use paragen_data::{PreparedData, Split};
use paragen_infer::LoadedRun;

pub use api::{Limits, TranslateRequest, TranslateResponse, VariantsResponse};
use engine::{Shared, VariantInfo};

/// Errors of starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Variant(#[from] paragen_adaptive::VariantError),
    #[error("cannot open `{run}`: {source}")]
    Open {
        run: String,
        #[source]
        source: paragen_infer::OpenError,
    },
    #[error("the valid split that profiles the variants: {0}")]
    Data(#[from] paragen_data::DataError),
    #[error("profiling {variant}: {source}")]
    Profile {
        variant: String,
        #[source]
        source: paragen_adaptive::ProfileError,
    },
    #[error("cannot serve: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything `paragen serve` is told.
pub struct ServeOptions {
    /// A run directory or a folder of them (such as `models/`).
    pub models: PathBuf,
    /// Serve only these variants (all when empty).
    pub variants: Vec<String>,
    /// Prepared data whose valid split profiles the variants.
    pub data: PathBuf,
    pub profile: ProfileSettings,
    /// Measure every variant again instead of reading `variants.json`.
    pub remeasure: bool,
    pub machine: Machine,
    /// The time budget of requests that give none.
    pub default_budget_ms: f64,
    /// Longest a request waits for others to share its batch.
    pub max_wait: Duration,
    /// Most sentences that may wait in all queues.
    pub max_waiting: usize,
    /// Engine threads that decode batches at once (sharing the models' weights).
    pub workers: usize,
    pub limits: Limits,
    /// Where to listen (bound by the caller, so that port 0 works).
    pub listener: std::net::TcpListener,
    /// Notified to stop, as SIGTERM and Ctrl-C do.
    pub stop: Arc<tokio::sync::Notify>,
}

/// Loads and profiles the variants of `options.models` on `device`, then serves until
/// stopped. Runs the engine on the calling thread; the HTTP side gets its own.
pub fn serve<B: Backend>(options: ServeOptions, device: &B::Device) -> Result<(), ServeError> {
    let specs = select(discover(&options.models)?, &options.variants)?;
    let valid = PreparedData::new(&options.data).pairs(Split::Valid)?;
    let mut runs = Vec::new();
    let mut infos = Vec::new();
    let mut first_tokenizer: Option<Vec<u8>> = None;
    for spec in &specs {
        let open_error = |source| ServeError::Open {
            run: spec.run.display().to_string(),
            source,
        };
        let loaded = LoadedRun::<B>::open(&spec.run, &spec.options.request(), None, device)
            .map_err(open_error)?;
        let profile = ensure(
            spec,
            &loaded,
            &valid,
            &options.profile,
            &options.machine,
            options.remeasure,
        )
        .map_err(|source| ServeError::Profile {
            variant: spec.name.clone(),
            source,
        })?;
        let policy = BatchPolicy::sized(profile.latency.efficient_batch(), 30, options.max_wait);
        let tokenizer_file = std::fs::read(loaded.run.path("tokenizer.json"))?;
        let first_tokenizer = first_tokenizer.get_or_insert_with(|| tokenizer_file.clone());
        infos.push(VariantInfo {
            tokenizer: loaded.tokenizer.clone(),
            shares_first_tokenizer: *first_tokenizer == tokenizer_file,
            max_source_tokens: loaded.model.config().max_positions,
            profile,
            policy,
        });
        runs.push(loaded);
    }
    let shared = Arc::new(Shared::new(
        infos,
        options.default_budget_ms,
        options.max_waiting,
        options.workers,
    ));
    let app = api::app(shared.clone(), options.limits);
    options.listener.set_nonblocking(true)?;
    let address = options.listener.local_addr()?;
    let server_shared = shared.clone();
    let stop = options.stop.clone();
    let listener = options.listener;
    let server = std::thread::Builder::new()
        .name("paragen-http".into())
        .spawn(move || -> std::io::Result<()> {
            let served = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .and_then(|runtime| {
                    runtime.block_on(async move {
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        tracing::info!("listening on http://{address}");
                        axum::serve(listener, app)
                            .with_graceful_shutdown(shutdown_signal(stop))
                            .await
                    })
                });
            // Whatever ended the server, the engine finishes what waits and returns.
            server_shared.close();
            served
        })?;
    std::thread::scope(|scope| {
        for _ in 1..options.workers {
            scope.spawn(|| engine::run_engine(&shared, &runs));
        }
        engine::run_engine(&shared, &runs);
    });
    let served = server
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the HTTP thread panicked")));
    tracing::info!("stopped");
    Ok(served?)
}

/// Resolves on SIGTERM, Ctrl-C or `stop`.
async fn shutdown_signal(stop: Arc<tokio::sync::Notify>) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
        _ = stop.notified() => {},
    }
    tracing::info!("stopping: answering the requests in flight");
}
