//! Runs made from another run: a copy that decodes onto a shortlist
//! ([`crate::shortlist`]), a quantized copy ([`crate::quantized`]), a pruned copy
//! ([`write_pruned_run`]). Each is a normal run directory that every command reads.

use std::path::Path;

use burn::prelude::Backend;

use crate::model::Model;
use crate::quantized::QUANTIZATION_FILE;
use crate::run_dir::{CheckpointError, RunConfig, RunDir};
use crate::shortlist::SHORTLIST_FILE;
use crate::tune::DECODING_FILE;

/// What `paragen prune` records in a pruned run: its source, what was asked, what went.
pub const PRUNE_FILE: &str = "prune.json";

/// Files of a run that a derived run keeps as they are, beside its weights (run.json
/// is rewritten, so that its data path stays right from the new directory).
pub(crate) const SIDE_FILES: [&str; 8] = [
    "tokenizer.json",
    PRUNE_FILE,
    QUANTIZATION_FILE,
    DECODING_FILE,
    SHORTLIST_FILE,
    "history.jsonl",
    "metrics.jsonl",
    "trainer.json",
];

/// Creates the run directory `out` with `from`'s config and `files`; `out` must not
/// hold a run yet.
pub(crate) fn derive_run(
    from: &RunDir,
    out: &Path,
    files: &[&str],
) -> Result<RunDir, CheckpointError> {
    let config: RunConfig = from.load_config()?;
    let run = RunDir::new(out);
    if run.path("run.json").exists() {
        return Err(CheckpointError::Mismatch {
            path: run.path("run.json").display().to_string(),
            reason: "the output directory already holds a run; choose another --out".into(),
        });
    }
    std::fs::create_dir_all(out).map_err(|e| paragen_data::DataError::write(out, e))?;
    run.copy_from(from, files)?;
    run.save_config(&config)?;
    Ok(run)
}

/// Writes to `out` a copy of the float run `from` holding `model`, a pruned version of
/// its model (other layer widths, fewer layers): its config describes the new shapes,
/// with `from`'s dropout. The copy keeps the tokenizer, tuned decoding, shortlist and
/// command history, not the training logs (its training starts anew). `out` must not
/// hold a run yet.
pub fn write_pruned_run<B: Backend>(
    from: &RunDir,
    out: &Path,
    model: &Model<B>,
) -> Result<RunDir, CheckpointError> {
    assert!(
        model.quantized_bits().is_none(),
        "pruned models are float (prune, then quantize)"
    );
    let run = derive_run(
        from,
        out,
        &[
            "tokenizer.json",
            DECODING_FILE,
            SHORTLIST_FILE,
            "history.jsonl",
        ],
    )?;
    let mut config: RunConfig = run.load_config()?;
    // Its weights come from `from`: a release of it names `from` as its parent.
    config
        .training
        .insert("init_from".into(), from.root().display().to_string().into());
    let dropout = config.transformer().dropout;
    *config.model.transformer_mut() = model.config().clone();
    config.model.transformer_mut().dropout = dropout;
    run.save_config(&config)?;
    match model {
        Model::Ar(m) => run.save_module::<B, _>("model.mpk", m)?,
        Model::Nat(m) => run.save_module::<B, _>("model.mpk", m)?,
    }
    Ok(run)
}
