//! Trains paragen's models: one loop for every kind, and what it needs.
//!
//! - [`run`]: the training half of a run directory (options, a student's recipe),
//!   presets, and opening a run fresh, resumed, or from another run's weights;
//! - [`schedule`]: warmup + inverse-square-root learning rate;
//! - [`clip`]: clipping of the global gradient norm;
//! - [`objective`]: what training optimises per model kind (cross-entropy, CMLM,
//!   glancing, CTC) behind one trait, so one loop trains every model;
//! - [`trainer`]: the training loop (AdamW, token-budget batches, validation loss and
//!   BLEU each epoch, keep-best, resume, progress).
//!
//! Reading run directories, translating and scoring live in `paragen-infer`.
//!
//! **Depends on:** paragen-data, paragen-models, paragen-infer, burn.
//! **Invariant:** never parses command lines; talks to people only through `tracing`
//! and progress bars on a terminal.

pub mod clip;
pub mod objective;
pub mod run;
pub mod schedule;
pub mod trainer;

pub use run::{
    OpenRun, Overrides, Preset, StudentConfig, StudentKind, TrainRunConfig, Training, open_run,
    student_run, teacher_run,
};
pub use trainer::{TrainConfig, TrainError, TrainSummary, train};
