//! `paragen serve`: the HTTP server of `paragen-serve` on the chosen backend.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use paragen_adaptive::ProfileSettings;
use paragen_adaptive::profile::Machine;
use paragen_backend::{BackendTask, DeviceSpec};
use paragen_serve::{Limits, ServeOptions, serve};

use crate::args::ServeArgs;

pub struct Serve {
    pub args: ServeArgs,
    pub spec: DeviceSpec,
    pub threads: Option<usize>,
}

impl BackendTask for Serve {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = self.args;
        let listener = std::net::TcpListener::bind(args.addr)
            .with_context(|| format!("cannot listen on {}", args.addr))?;
        let threads = super::threads_in_use(self.threads);
        let options = ServeOptions {
            models: args.models,
            variants: args.variants,
            data: args.data,
            profile: ProfileSettings {
                quality_sentences: args.profile_sentences,
                ..ProfileSettings::default()
            },
            remeasure: args.remeasure,
            machine: Machine {
                cpu: paragen_infer::timing::machine_description(),
                backend: self.spec.backend.name().to_string(),
                threads,
            },
            default_budget_ms: args.budget_ms,
            max_wait: Duration::from_millis(args.max_wait_ms as u64),
            max_waiting: args.max_queue,
            workers: args.workers,
            limits: Limits {
                max_body_bytes: args.max_body_kib * 1024,
                max_texts: args.max_texts,
                max_text_chars: args.max_text_chars,
                timeout: Duration::from_secs(args.timeout_s as u64),
            },
            listener,
            stop: Arc::new(tokio::sync::Notify::new()),
        };
        serve::<B::InnerBackend>(options, &device)?;
        Ok(())
    }
}
