//! `paragen tune`: sweep a CTC student's blank penalty on the valid split and store the
//! best in the run (`decoding.json`), where every later command finds it.

use burn::tensor::backend::AutodiffBackend;
use paragen_backend::BackendTask;
use paragen_data::{PreparedData, Split};
use paragen_infer::{RunConfig, RunDir, tune_blank_penalty};

use crate::args::TuneArgs;

pub struct Tune(pub TuneArgs);

impl BackendTask for Tune {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = self.0;
        let run = RunDir::new(&args.model);
        let _lock = run.lock()?;
        let config: RunConfig = run.load_config()?;
        let (_, model) = run.load_model::<B::InnerBackend>(&device)?;
        let tokenizer = run.load_tokenizer()?;
        let data = PreparedData::new(args.data.clone().unwrap_or(config.data_dir));
        let mut pairs = data.pairs(Split::Valid)?;
        if let Some(limit) = args.limit {
            pairs.truncate(limit);
        }
        let tuned = tune_blank_penalty(&model, &tokenizer, &pairs, "valid", args.batch_size)?;
        run.save_tuned_decoding(&tuned)?;
        run.append_history(&std::env::args().collect::<Vec<_>>())?;
        if args.json {
            return outln!(
                "{}",
                serde_json::to_string(&tuned).expect("tuned decoding serializes")
            );
        }
        outln!("blank penalty | valid BLEU | chrF")?;
        for p in &tuned.sweep {
            let mark = if p.blank_penalty == tuned.blank_penalty {
                "  <- best"
            } else {
                ""
            };
            outln!(
                "{:>13} | {:>10.2} | {:>5.2}{mark}",
                p.blank_penalty,
                p.bleu,
                p.chrf
            )?;
        }
        outln!(
            "wrote {}: translate, eval, profile, release and demo now decode {} with blank \
             penalty {} unless --blank-penalty says otherwise",
            run.path(paragen_infer::tune::DECODING_FILE).display(),
            args.model.display(),
            tuned.blank_penalty
        )
    }
}
