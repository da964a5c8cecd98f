//! `paragen quantize`: write an int8 or int4 copy of a run.

use burn::tensor::backend::AutodiffBackend;
use paragen_backend::BackendTask;
use paragen_backend::int8::Int8Kernel;
use paragen_compress::quantize_run;
use paragen_infer::RunDir;

use crate::args::QuantizeArgs;

pub struct Quantize(pub QuantizeArgs);

impl BackendTask for Quantize {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = self.0;
        let from = RunDir::new(&args.model);
        let (run, report) = quantize_run::<B::InnerBackend>(&from, &args.out, args.bits, &device)?;
        run.append_history(&std::env::args().collect::<Vec<_>>())?;
        let mb = |bytes: u64| bytes as f64 / 1e6;
        outln!(
            "int{} weights: model.mpk {:.1} MB (the source's: {:.1} MB); on this CPU the \
             integer products run on the `{}` kernel",
            report.bits,
            mb(report.quantized_bytes),
            mb(report.source_bytes),
            Int8Kernel::detect().name()
        )?;
        outln!(
            "wrote {}: `paragen eval --model {}` scores it",
            run.root().display(),
            run.root().display()
        )
    }
}
