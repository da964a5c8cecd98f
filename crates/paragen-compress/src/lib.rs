//! Making paragen models cheaper to run while keeping what they know.
//!
//! - [`distill`]: knowledge distillation from an autoregressive teacher. Sequence-level
//!   KD (Kim & Rush 2016) decodes the training split with the teacher into a new
//!   prepared-data directory that students train on; word-level KD mixes cross-entropy
//!   with the KL divergence to the teacher's temperature-softened distribution, for any
//!   student whose outputs align with the teacher's (AR students).
//!
//! - [`shortlist`]: a lexical shortlist learned from training pairs, so that decoding
//!   projects onto the target tokens a batch's sources translate to instead of the
//!   whole vocabulary.
//!
//! - [`quantize`]: post-training int8 / int4 weight quantization of a run, written as a
//!   new run that every command reads and that multiplies in integers on the CPU.
//!
//! - [`prune`]: structured pruning (attention heads, feed-forward neurons, layers) by
//!   gate-gradient importance, written as a new run with smaller matrices, then
//!   recovery fine-tuning (word-level KD from the unpruned model for AR models).
//!
//! **Depends on:** paragen-data, paragen-models, paragen-infer (models, translation,
//! progress), paragen-train (the training objective trait), burn; paragen-backend in
//! tests only.
//! **Invariant:** never parses command lines; reports progress only through `tracing`
//! and progress bars.

pub mod distill;
pub mod prune;
pub mod quantize;
pub mod shortlist;

pub use distill::{
    DistillError, DistillOptions, DistillReport, WordKd, distill_corpus, word_kd_loss,
};
pub use prune::{LayerRef, PruneError, PruneRecord, PruneSpec, RecoverOptions, prune_run, recover};
pub use quantize::{QuantizeError, QuantizeReport, quantize_run};
pub use shortlist::{
    ShortlistConfig, ShortlistError, ShortlistReport, learn_shortlist, shortlist_run,
};
