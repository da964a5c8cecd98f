//! Uses trained paragen models: open a run directory, rebuild its model whatever its
//! kind, translate text, score it, time it.
//!
//! - [`model`]: [`Model`] (AR or NAT), its [`ModelKind`] and typed [`ModelConfig`];
//! - [`run_dir`]: the run directory (`run.json` with its typed model section, tokenizer,
//!   weights, progress, metrics log), written atomically and read with clear errors;
//! - [`translate`]: [`Model`] (AR or NAT), [`Decoding`] (greedy, beam, NAT options),
//!   [`DecodeRequest`] (user options checked against a model), [`Translator`], batched
//!   translation and [`evaluate`];
//! - [`metrics`]: corpus BLEU and chrF, exactly as sacrebleu computes them;
//! - [`loaded`]: [`LoadedRun`], a run opened for decoding the way a request asks;
//! - [`memory`]: the memory a decode needs, estimated so that an impossible batch is
//!   refused before it starts;
//! - [`timing`]: decoding timings (warm-up, median of runs) and GFLOP/s measurements;
//! - [`profile`]: one model's quality, speed per batch size and roofline, for benches;
//! - [`release`]: release models (half precision, scored after conversion, generated
//!   `TRAINING.md` and `models/README.md`);
//! - [`tune`]: decoding tuned on the valid split and kept in the run (`decoding.json`:
//!   a CTC student's blank penalty), used whenever a command asks for none;
//! - [`quantized`]: quantized runs (`quantization.json`; int8/int4 weights in
//!   `model.mpk`), read like any run and written from a quantized model;
//! - [`shortlist`]: a run's lexical shortlist (`shortlist.json`), given to its model on
//!   load, and runs derived from another with one;
//! - [`progress`]: a progress bar on a terminal, log lines otherwise.
//!
//! A library user translates with a few lines (see `examples/translate.rs`):
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use paragen_infer::{RunDir, Translator, translate_texts};
//! type B = burn::backend::Flex<f32>;
//! let run = RunDir::new("models/teacher");
//! let (_config, model) = run.load_model::<B>(&Default::default())?;
//! let tokenizer = run.load_tokenizer()?;
//! let out = translate_texts(&Translator::new(&model), &tokenizer, &["God is love."], 64, false)?;
//! println!("{}", out[0]);
//! # Ok(()) }
//! ```
//!
//! **Depends on:** paragen-data, paragen-models, burn. **Invariant:** knows nothing about
//! optimizers or training loops; never parses command lines.

pub mod checkpoint;
mod derived;
pub mod loaded;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod profile;
pub mod progress;
pub mod quantized;
pub mod release;
pub mod run_dir;
pub mod shortlist;
pub mod timing;
pub mod translate;
pub mod tune;

pub use checkpoint::Checkpoint;
pub use derived::{PRUNE_FILE, write_pruned_run};
pub use loaded::{LoadedRun, OpenError};
pub use metrics::{Bleu, corpus_bleu, corpus_chrf};
pub use quantized::{QUANTIZATION_FILE, Quantization, write_quantized_run};
pub use run_dir::{
    CheckpointError, ModelConfig, ModelKind, RunConfig, RunDir, RunLock, TrainerState, TrainingJson,
};
pub use shortlist::{SHORTLIST_FILE, write_shortlist_run};
pub use translate::{
    DecodeRequest, Decoding, EvalReport, Model, TranslateError, Translator, check_sources,
    evaluate, translate_ids, translate_lines, translate_lines_with, translate_texts,
    translate_texts_with,
};
pub use tune::{TunedDecoding, tune_blank_penalty};
