//! Training and evaluation machinery shared by every paragen model.
//!
//! - [`metrics`]: corpus BLEU and chrF, exactly as sacrebleu computes them;
//! - [`schedule`]: warmup + inverse-square-root learning rate;
//! - [`clip`]: clipping of the global gradient norm;
//! - [`checkpoint`]: the run directory (config, tokenizer, weights, optimizer state,
//!   metrics log), written atomically and reloaded with clear errors;
//! - [`objective`]: what training optimises per model kind (cross-entropy, CMLM,
//!   glancing) behind one trait, so one loop trains every model;
//! - [`trainer`]: the training loop (AdamW, token-budget batches, validation loss and
//!   BLEU each epoch, keep-best, resume, progress);
//! - [`translate`]: batched translation of text with any trained model;
//! - [`bench`]: decoding timings (warm-up, median of runs) and GFLOP/s measurements.
//!
//! **Depends on:** paragen-backend, paragen-data, paragen-models, burn.
//! **Invariant:** never parses command lines; talks to people only through `tracing`
//! and progress bars on a terminal.

pub mod bench;
pub mod checkpoint;
pub mod clip;
pub mod metrics;
pub mod objective;
pub mod progress;
pub mod schedule;
pub mod trainer;
pub mod translate;

pub use checkpoint::{CheckpointError, RunConfig, RunDir};
pub use metrics::{Bleu, corpus_bleu, corpus_chrf};
pub use trainer::{TrainConfig, TrainError, TrainSummary, train};
pub use translate::{
    Decoding, EvalReport, Model, TranslateError, Translator, evaluate, translate_texts,
};
