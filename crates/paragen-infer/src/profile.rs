//! One model measured for `cargo xtask bench`: what it is, its quality on the test
//! split, its decoding speed at several batch sizes, and optionally the roofline.

use std::collections::BTreeMap;

use burn::prelude::*;
use paragen_data::{PreparedData, Split};
use serde::{Deserialize, Serialize};

use crate::loaded::LoadedRun;
use crate::timing::{Timing, forward_gflops, matmul_peak_gflops, time_decoding};
use crate::translate::{Model, TranslateError, evaluate};

/// What to measure.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileOptions {
    /// Test pairs scored for BLEU/chrF (`None`: all; 0 skips scoring).
    pub quality_sentences: Option<usize>,
    /// Test sentences decoded in each timed run.
    pub time_sentences: usize,
    pub batch_sizes: Vec<usize>,
    /// Timed runs per batch size, after one warm-up.
    pub runs: usize,
    /// Also measure the fp32 matmul peak and the forward pass's achieved GFLOP/s.
    pub roofline: bool,
}

/// The achieved GFLOP/s of a forward pass against the measured matmul peak.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Roofline {
    pub peak_gflops: f64,
    pub peak_how: String,
    pub forward_gflops: f64,
    pub forward_seconds: f64,
    pub forward_shape: String,
}

/// One model's profile, the JSON line `paragen profile` prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Profile {
    pub model: String,
    pub kind: String,
    pub preset: String,
    pub decoding: String,
    pub params: usize,
    pub file_bytes: u64,
    pub backend: String,
    pub threads: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub data_dir: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_steps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_minutes: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bleu: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chrf: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_sentences: Option<usize>,
    /// Per batch size (as a string key, for JSON).
    pub timings: BTreeMap<String, Timing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roofline: Option<Roofline>,
}

/// Errors of profiling.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Translate(#[from] TranslateError),
    #[error(transparent)]
    Data(#[from] paragen_data::DataError),
    #[error(transparent)]
    Tokenizer(#[from] paragen_data::TokenizerError),
}

/// Measures `loaded` on the test split of `data` (default: the run's own data);
/// `backend` and `threads` are recorded as given.
pub fn profile<B: Backend>(
    loaded: &LoadedRun<B>,
    data: Option<&std::path::Path>,
    options: &ProfileOptions,
    backend: &str,
    threads: usize,
) -> Result<Profile, ProfileError> {
    let (translator, tokenizer) = (loaded.translator(), &loaded.tokenizer);
    let (run, config, model) = (&loaded.run, &loaded.config, &loaded.model);
    let data = PreparedData::new(data.unwrap_or(&config.data_dir));
    let pairs = data.pairs(Split::Test)?;
    let shapes = config.transformer();
    let state = run.load_state().ok();
    let mut out = Profile {
        model: run.root().display().to_string(),
        kind: config.kind.name().to_string(),
        preset: config.preset.clone(),
        decoding: translator.name(),
        params: model.param_count(),
        file_bytes: std::fs::metadata(run.path("model.mpk")).map_or(0, |m| m.len()),
        backend: backend.to_string(),
        threads,
        encoder_layers: shapes.encoder_layers,
        decoder_layers: shapes.decoder_layers,
        data_dir: config.data_dir.display().to_string(),
        train_steps: state.as_ref().map(|s| s.step),
        train_minutes: state.as_ref().map(|s| s.train_seconds / 60.0),
        bleu: None,
        chrf: None,
        quality_sentences: None,
        timings: BTreeMap::new(),
        roofline: None,
    };
    let quality_n = options
        .quality_sentences
        .unwrap_or(pairs.len())
        .min(pairs.len());
    if quality_n > 0 {
        let report = evaluate(&translator, tokenizer, &pairs[..quality_n], 64, false)?;
        out.bleu = Some(report.bleu);
        out.chrf = Some(report.chrf);
        out.quality_sentences = Some(report.sentences);
    }
    let texts: Vec<&str> = pairs
        .iter()
        .take(options.time_sentences)
        .map(|p| p.src.as_str())
        .collect();
    let sources = tokenizer.encode_batch(&texts)?;
    for &batch in &options.batch_sizes {
        let timing = time_decoding(&translator, &sources, batch, options.runs)?;
        tracing::info!(
            "{}: batch {batch}: {:.2} ms/sentence",
            out.decoding,
            timing.ms_per_sentence
        );
        out.timings.insert(batch.to_string(), timing);
    }
    if options.roofline {
        let device = model.device();
        let peak = matmul_peak_gflops::<B>(1024, 5, &device);
        let mean_len = sources.iter().map(|s| s.len()).sum::<usize>() / sources.len().max(1);
        let mean_len = mean_len.max(1);
        let (achieved, seconds) = forward_gflops(model, 64, mean_len, 3);
        out.roofline = Some(Roofline {
            peak_gflops: peak,
            peak_how: "best of 5 fp32 1024x1024x1024 matrix products".into(),
            forward_gflops: achieved,
            forward_seconds: seconds,
            forward_shape: match model {
                Model::Ar(_) => format!(
                    "teacher-forced forward of an AR model, batch 64, {mean_len} source and target tokens"
                ),
                Model::Nat(_) => {
                    format!("one all-mask NAT pass, batch 64, {mean_len} source and target tokens")
                }
            },
        });
    }
    Ok(out)
}
