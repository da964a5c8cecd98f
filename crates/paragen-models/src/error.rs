//! The one error type of the models crate.

/// Errors a model reports about its inputs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("sentence {index} has {len} tokens, more than the model's limit of {max}")]
    TooLong {
        index: usize,
        len: usize,
        max: usize,
    },
    #[error("sentence {index} is empty")]
    Empty { index: usize },
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("{0}")]
    Unsupported(String),
}
