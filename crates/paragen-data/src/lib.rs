//! Text in, token ids out: corpus reading, deterministic splits, the BPE tokenizer and
//! token-budget batching for paragen.
//!
//! - [`corpus`] reads parallel text (a TSV with an optional id column, or two
//!   line-aligned files, optionally gzipped) and reports malformed lines by file and line;
//! - [`split`] assigns every pair to train / valid / test from a hash of its id, so the
//!   test split never changes when the corpus grows or is shuffled;
//! - [`tokenizer`] trains and loads a joint BPE (the `tokenizers` crate, saved as the
//!   standard `tokenizer.json`);
//! - [`batch`] groups encoded pairs into batches under a padded-token budget, with length
//!   bucketing and a seeded shuffle, and turns a batch into burn tensors;
//! - [`prepared`] makes and reads a prepared data directory (splits + tokenizer);
//! - [`fsio`] writes files atomically (temp file + rename), for every crate above this one;
//! - [`guard`] turns panics of third-party parsers on corrupt files into errors.
//!
//! **Depends on:** burn (tensors); paragen-backend only in tests. **Invariant:** knows
//! nothing about models or training; never prints (it logs through `tracing`).

pub mod batch;
pub mod corpus;
pub mod fsio;
pub mod guard;
pub mod prepared;
pub mod split;
pub mod tokenizer;

pub use batch::{Seq2SeqBatch, TokenBudgetBatcher};
pub use corpus::{CorpusSource, MalformedLines, Pair, read_corpus, read_tsv, write_tsv};
pub use prepared::{PrepareReport, PreparedData, encode_pairs, prepare};
pub use split::{Split, SplitConfig};
pub use tokenizer::{SpecialTokens, Tokenizer, TokenizerError};

/// Errors from reading or writing data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write `{path}`: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Malformed {
        path: String,
        line: usize,
        reason: String,
    },
    #[error(
        "`{src_path}` has {src_lines} lines but `{tgt_path}` has {tgt_lines}; parallel files must be line-aligned"
    )]
    Misaligned {
        src_path: String,
        tgt_path: String,
        src_lines: usize,
        tgt_lines: usize,
    },
    #[error("`{path}` holds no usable sentence pairs")]
    Empty { path: String },
    #[error(
        "`{path}`: its {split} split would be empty ({pairs} pairs, {per_mille} per mille to \
         {split}); give it a larger share (`--{split}-per-mille` of `paragen prepare`) or use \
         a larger corpus"
    )]
    EmptySplit {
        path: String,
        split: &'static str,
        pairs: usize,
        per_mille: u32,
    },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

impl DataError {
    /// A failed read of `path`.
    pub fn read(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Read {
            path: path.display().to_string(),
            source,
        }
    }

    /// A failed write of `path`.
    pub fn write(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Write {
            path: path.display().to_string(),
            source,
        }
    }
}
