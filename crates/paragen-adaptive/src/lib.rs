//! The dynamic model: several variants of a translation model (a teacher with greedy or
//! beam search, a NAT in one pass or with refinement, their compressed copies), each
//! measured once, and the logic that picks one per request under a budget and groups
//! requests into batches.
//!
//! - [`variant`]: a variant is a run directory plus a way of decoding it; the variants a
//!   models directory offers ([`discover`]);
//! - [`profile`]: a variant's quality on the valid split and its measured latency per
//!   batch size and source length ([`VariantProfile`], [`LatencyTable`]), kept beside the
//!   model in `variants.json` for the machine it was measured on;
//! - [`router`]: given the profiles, a request's [`Budget`] (milliseconds, a BLEU
//!   floor, a named tier or a variant) and the work queued ahead of it, the best-quality
//!   variant predicted to answer in time, falling back to faster ones as load rises, or a
//!   refusal that says why;
//! - [`batcher`]: dynamic batching: requests wait per variant and leave in batches under
//!   a token budget and a maximum wait, grouped by length, with a bound on what may wait;
//! - [`parallel`]: data-parallel translation: a document split into sentences, translated
//!   by several workers, joined in order.
//!
//! Nothing here speaks HTTP: `paragen-serve` puts it behind a server, and `paragen
//! translate --workers` uses [`parallel`].
//!
//! **Depends on:** paragen-infer (models, decoding, timing), paragen-data, burn.
//! **Invariant:** the router and the batcher are plain data structures over profiles and
//! clocks given to them, so that their tests need no model.

pub mod batcher;
pub mod parallel;
pub mod profile;
pub mod router;
pub mod variant;

pub use batcher::{BatchPolicy, Batcher, QueueFull};
pub use profile::{LatencyTable, PROFILE_FILE, ProfileError, ProfileSettings, VariantProfile};
pub use router::{Budget, Decision, RouteError, Router, Tier};
pub use variant::{VariantError, VariantOptions, VariantSpec, discover};
