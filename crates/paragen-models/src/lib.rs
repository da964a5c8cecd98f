//! The Transformer models of paragen and the ways to decode them.
//!
//! - [`config`]: serde model configs with presets (`quick`, `base`), saved beside every
//!   checkpoint so a model can always be rebuilt;
//! - [`dense`]: the linear layer of every model, float or quantized (int8, int4);
//! - [`embedding`]: the token table every model shares between its inputs and its
//!   output projection, float or quantized;
//! - [`attention`]: multi-head attention, its projections reusable by a KV cache;
//! - [`layers`]: feed-forward blocks, positional encodings, pre-norm encoder and
//!   decoder layers with a real KV cache;
//! - [`prune`]: structured pruning (heads, neurons, layers) and the gate gradients
//!   that rank them;
//! - [`teacher`]: the autoregressive encoder-decoder (Vaswani et al. 2017, pre-norm,
//!   shared embeddings), with full-sequence and cached step-by-step decoding;
//! - [`decoding`]: batched greedy and beam search on the KV cache;
//! - [`nat`]: the non-autoregressive student (CMLM with a length classifier, or CTC),
//!   its training losses (`nat::loss`, `nat::ctc`) and parallel decoding (`nat::decode`);
//! - [`loss`]: label-smoothed cross-entropy that ignores padding;
//! - [`shortlist`]: the lexical shortlist decoding projects onto instead of the whole
//!   vocabulary;
//! - [`error`]: [`ModelError`], what a model reports about bad input or config.
//!
//! **Depends on:** paragen-data (special-token ids, padding), paragen-backend (the
//! int8 kernel of quantized layers), burn. **Invariant:** never reads or writes files and never prints; models are generic
//! over `B: Backend`.

pub mod attention;
pub mod config;
pub mod decoding;
pub mod dense;
pub mod embedding;
pub mod error;
pub mod layers;
pub mod loss;
pub mod nat;
pub mod prune;
pub mod shortlist;
pub mod teacher;

pub use config::{PositionKind, TransformerConfig};
pub use decoding::{BeamOptions, LengthLimit, beam_search, greedy};
pub use error::ModelError;
pub use layers::EncoderOutput;
pub use shortlist::Shortlist;
pub use teacher::Transformer;
