//! A run's lexical shortlist (`shortlist.json`, a [`Shortlist`]): when a run directory
//! holds one, [`RunDir::load_model`] gives it to the model, and every command decodes
//! onto it (see `paragen_models::shortlist`). `paragen shortlist` makes such a run from
//! another with [`write_shortlist_run`]: the same weights, tokenizer and tuned decoding,
//! plus the shortlist.

use std::path::Path;
use std::sync::Arc;

use burn::prelude::Backend;
use paragen_models::Shortlist;

use crate::derived::{SIDE_FILES, derive_run};
use crate::run_dir::{CheckpointError, Model, RunConfig, RunDir};

/// The file in a run directory that holds its [`Shortlist`].
pub const SHORTLIST_FILE: &str = "shortlist.json";

impl RunDir {
    /// The run's shortlist, `None` when it has none; checked against `vocab_size`.
    pub fn load_shortlist(&self, vocab_size: usize) -> Result<Option<Shortlist>, CheckpointError> {
        if !self.path(SHORTLIST_FILE).exists() {
            return Ok(None);
        }
        let shortlist: Shortlist = self.read_json(SHORTLIST_FILE)?;
        shortlist
            .validate(vocab_size)
            .map_err(|reason| CheckpointError::Mismatch {
                path: self.path(SHORTLIST_FILE).display().to_string(),
                reason,
            })?;
        Ok(Some(shortlist))
    }

    /// `model` decoding onto the run's shortlist, when the run has one.
    pub(crate) fn attach_shortlist<B: Backend>(
        &self,
        model: Model<B>,
        vocab_size: usize,
    ) -> Result<Model<B>, CheckpointError> {
        let Some(shortlist) = self.load_shortlist(vocab_size)? else {
            return Ok(model);
        };
        match model {
            Model::Ar(_) => Err(CheckpointError::Mismatch {
                path: self.path(SHORTLIST_FILE).display().to_string(),
                reason: "a shortlist decodes NAT students only, and this is an AR model".into(),
            }),
            Model::Nat(mut nat) => {
                nat.set_shortlist(Some(Arc::new(shortlist)))
                    .expect("the shortlist was checked against this vocabulary");
                Ok(Model::Nat(nat))
            }
        }
    }
}

/// Writes to `out` a copy of the run `from` (weights, tokenizer, tuned decoding, logs,
/// config) that decodes onto `shortlist`. `out` must not hold a run yet.
pub fn write_shortlist_run(
    from: &RunDir,
    out: &Path,
    shortlist: &Shortlist,
) -> Result<RunDir, CheckpointError> {
    let config: RunConfig = from.load_config()?;
    shortlist
        .validate(config.transformer().vocab_size)
        .map_err(|reason| CheckpointError::Mismatch {
            path: out.join(SHORTLIST_FILE).display().to_string(),
            reason,
        })?;
    let mut files = vec!["model.mpk"];
    files.extend(SIDE_FILES.iter().filter(|&&f| f != SHORTLIST_FILE));
    let run = derive_run(from, out, &files)?;
    // Compact JSON: pretty-printed, its 8k short lists take a line per id.
    let json = serde_json::to_vec(shortlist).expect("a shortlist serializes");
    paragen_data::fsio::write_atomic(&run.path(SHORTLIST_FILE), &json)?;
    Ok(run)
}
