//! A run directory opened for decoding: its model, tokenizer and decoding, plus the AR
//! model that rescores a NAT's length-beam candidates when one is asked for.

use std::path::Path;

use burn::prelude::*;
use paragen_data::Tokenizer;
use paragen_models::Transformer;

use crate::run_dir::{CheckpointError, RunConfig, RunDir};
use crate::translate::{DecodeRequest, Decoding, Model, TranslateError, Translator};

/// Errors of opening a run for decoding.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("the model in `{run}` cannot decode that way")]
    Decoding {
        run: String,
        #[source]
        source: TranslateError,
    },
}

/// A run ready to translate the way a [`DecodeRequest`] asks.
pub struct LoadedRun<B: Backend> {
    pub run: RunDir,
    pub config: RunConfig,
    pub model: Model<B>,
    pub tokenizer: Tokenizer,
    pub decoding: Decoding,
    pub rescorer: Option<Transformer<B>>,
}

impl<B: Backend> LoadedRun<B> {
    /// Opens the run in `dir` on `device`; `request.rescore` needs `rescore_with`, the run
    /// directory of the AR model that rescores. What the request leaves open and the run
    /// has tuned (its `decoding.json`) decodes the tuned way.
    pub fn open(
        dir: &Path,
        request: &DecodeRequest,
        rescore_with: Option<&Path>,
        device: &B::Device,
    ) -> Result<Self, OpenError> {
        let run = RunDir::new(dir);
        let (config, model) = run.load_model::<B>(device)?;
        // The run's decoding.json is read only when the request leaves the penalty open.
        let blank_penalty = match request.blank_penalty {
            None if model.is_ctc() => run.load_tuned_decoding()?.map(|t| t.blank_penalty),
            given => given,
        };
        let request = DecodeRequest {
            rescore: rescore_with.is_some(),
            blank_penalty,
            ..*request
        };
        let decoding = request
            .decoding_for(&model)
            .map_err(|source| OpenError::Decoding {
                run: dir.display().to_string(),
                source,
            })?;
        let rescorer = match rescore_with {
            Some(other) => Some(RunDir::new(other).load_transformer::<B>(device)?.1),
            None => None,
        };
        let tokenizer = run.load_tokenizer()?;
        let vocab = config.transformer().vocab_size;
        if tokenizer.vocab_size() != vocab {
            return Err(CheckpointError::Mismatch {
                path: run.path("tokenizer.json").display().to_string(),
                reason: format!(
                    "a vocabulary of {} tokens, the model's of {vocab}: it is the tokenizer \
                     of another model",
                    tokenizer.vocab_size()
                ),
            }
            .into());
        }
        if let (Some(rescorer), Some(other)) = (&rescorer, rescore_with)
            && rescorer.config().vocab_size != vocab
        {
            return Err(OpenError::Decoding {
                run: dir.display().to_string(),
                source: TranslateError::Options(format!(
                    "the rescorer in {} has a vocabulary of {}, this model one of {vocab}: \
                     rescoring needs the model's own teacher",
                    other.display(),
                    rescorer.config().vocab_size
                )),
            });
        }
        Ok(Self {
            run,
            config,
            model,
            tokenizer,
            decoding,
            rescorer,
        })
    }

    pub fn translator(&self) -> Translator<'_, B> {
        Translator {
            model: &self.model,
            decoding: self.decoding,
            rescorer: self.rescorer.as_ref(),
        }
    }
}
