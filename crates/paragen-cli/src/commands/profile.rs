//! `paragen profile`: one JSON line of quality and speed for `cargo xtask bench`.

use burn::tensor::backend::AutodiffBackend;
use paragen_backend::{BackendTask, DeviceSpec};
use paragen_infer::profile::{ProfileOptions, profile};

use crate::args::ProfileArgs;

pub struct Profile {
    pub args: ProfileArgs,
    pub spec: DeviceSpec,
    pub threads: Option<usize>,
}

impl BackendTask for Profile {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = &self.args;
        let loaded = super::translate::open::<B::InnerBackend>(&args.model, &args.decode, &device)?;
        let options = ProfileOptions {
            quality_sentences: args.quality_sentences,
            time_sentences: args.time_sentences,
            batch_sizes: args.batch_sizes.clone(),
            runs: args.runs,
            roofline: args.roofline,
        };
        let threads = super::threads_in_use(self.threads);
        let report = profile(
            &loaded,
            args.data.as_deref(),
            &options,
            self.spec.backend.name(),
            threads,
        )?;
        outln!("{}", serde_json::to_string(&report)?)?;
        Ok(())
    }
}
