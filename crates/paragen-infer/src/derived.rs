//! Runs made from another run: a copy that decodes onto a shortlist
//! ([`crate::shortlist`]), a quantized copy ([`crate::quantized`]). Each is a normal run
//! directory that every command reads.

use std::path::Path;

use crate::quantized::QUANTIZATION_FILE;
use crate::run_dir::{CheckpointError, RunConfig, RunDir};
use crate::shortlist::SHORTLIST_FILE;
use crate::tune::DECODING_FILE;

/// Files of a run that a derived run keeps as they are, beside its weights (run.json
/// is rewritten, so that its data path stays right from the new directory).
pub(crate) const SIDE_FILES: [&str; 7] = [
    "tokenizer.json",
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
