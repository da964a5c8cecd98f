//! Checkpoint sets: what `--resume` needs (the trainer's progress, the last weights, the
//! optimizer state), committed together.
//!
//! A set is written into `checkpoints/.partial-<pid>-step-<n>/`, flushed to disk, then
//! renamed to `checkpoints/step-<n>/` in one step, and only then are older sets removed.
//! A kill at any moment therefore leaves the previous complete set or the new one, never
//! weights of one epoch beside the state of another. Partial sets and temp files of dead
//! writers are removed by the next writer once it holds the run's lock
//! ([`RunDir::remove_stale_files`]).
//!
//! Runs of paragen before sets kept `trainer.json`, `last.mpk` and `optimizer.mpk` in the
//! run directory itself; they are read as a set until the first new one is committed.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;
use burn::record::Record;
use paragen_data::DataError;

use crate::run_dir::{CheckpointError, RunDir, TrainerState};

/// The folder of a run that holds its checkpoint sets.
pub const CHECKPOINTS: &str = "checkpoints";
const SET_PREFIX: &str = "step-";
const PARTIAL_PREFIX: &str = ".partial-";
/// The files of a set, in the order they are written (the state last).
const WEIGHTS: &str = "last.mpk";
const OPTIMIZER: &str = "optimizer.mpk";
const STATE: &str = "trainer.json";

/// A complete checkpoint set.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The set's folder (the run directory itself for a run of the old layout).
    pub files: RunDir,
    pub state: TrainerState,
}

impl Checkpoint {
    /// Loads the set's weights into `module`, checking their shapes.
    pub fn load_weights<B: Backend, M: Module<B>>(
        &self,
        module: M,
        device: &B::Device,
    ) -> Result<M, CheckpointError> {
        self.files.load_module(WEIGHTS, module, device)
    }

    /// The set's optimizer state.
    pub fn load_optimizer<B: Backend, R: Record<B>>(
        &self,
        device: &B::Device,
    ) -> Result<R, CheckpointError> {
        self.files.load_record(OPTIMIZER, device)
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
    move |source| DataError::write(path, source).into()
}

/// Flushes a directory's entries (a rename is durable only once its folder is).
fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir))
}

/// The step of a committed set's folder name, `None` for anything else.
fn set_step(name: &str) -> Option<u64> {
    name.strip_prefix(SET_PREFIX)?.parse().ok()
}

impl RunDir {
    fn sets_dir(&self) -> PathBuf {
        self.path(CHECKPOINTS)
    }

    /// Committed sets, by step.
    fn committed_sets(&self) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
        let dir = self.sets_dir();
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut sets = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| DataError::read(&dir, e))? {
            let entry = entry.map_err(|e| DataError::read(&dir, e))?;
            if let Some(step) = set_step(&entry.file_name().to_string_lossy()) {
                sets.push((step, entry.path()));
            }
        }
        sets.sort();
        Ok(sets)
    }

    /// Writes a checkpoint set and makes it the run's current one (see the module doc).
    pub fn commit_checkpoint<B: Backend, M: Module<B>, R: Record<B>>(
        &self,
        state: &TrainerState,
        model: &M,
        optimizer: R,
    ) -> Result<Checkpoint, CheckpointError> {
        let sets = self.sets_dir();
        let name = format!("{SET_PREFIX}{:09}", state.step);
        let partial =
            RunDir::new(sets.join(format!("{PARTIAL_PREFIX}{}-{name}", std::process::id())));
        if partial.root().exists() {
            std::fs::remove_dir_all(partial.root()).map_err(io(partial.root()))?;
        }
        partial.save_module::<B, M>(WEIGHTS, model)?;
        partial.save_record::<B, R>(OPTIMIZER, optimizer)?;
        partial.write_json(STATE, state)?;
        sync_dir(partial.root())?;
        let target = sets.join(&name);
        if target.exists() {
            // The same step committed again: a resumed run that repeated an epoch.
            std::fs::remove_dir_all(&target).map_err(io(&target))?;
        }
        std::fs::rename(partial.root(), &target).map_err(io(&target))?;
        sync_dir(&sets)?;
        for (step, old) in self.committed_sets()? {
            if step != state.step as u64 {
                std::fs::remove_dir_all(&old).map_err(io(&old))?;
            }
        }
        for legacy in [WEIGHTS, OPTIMIZER, STATE] {
            let path = self.path(legacy);
            if path.exists() {
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        Ok(Checkpoint {
            files: RunDir::new(target),
            state: state.clone(),
        })
    }

    /// The newest complete checkpoint set, or `None` when the run has none yet (killed
    /// before its first epoch ended).
    pub fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let files = match self.committed_sets()?.pop() {
            Some((_, dir)) => RunDir::new(dir),
            None if self.path(STATE).exists() => self.clone(),
            None => return Ok(None),
        };
        let state = files.read_json(STATE)?;
        Ok(Some(Checkpoint { files, state }))
    }

    /// Removes what dead writers left: partial checkpoint sets and the temp files of
    /// interrupted atomic writes. Call it only while holding the run's lock, which proves
    /// that no other writer is alive. Returns how many entries went.
    pub fn remove_stale_files(&self) -> Result<usize, CheckpointError> {
        let mut removed = 0;
        for dir in [self.root().to_path_buf(), self.sets_dir()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                if name.starts_with(PARTIAL_PREFIX) && path.is_dir() {
                    std::fs::remove_dir_all(&path).map_err(io(&path))?;
                } else if name.starts_with('.') && name.ends_with(".tmp") && path.is_file() {
                    std::fs::remove_file(&path).map_err(io(&path))?;
                } else {
                    continue;
                }
                tracing::info!("removed {}, left by an interrupted run", path.display());
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paragen_models::{Transformer, TransformerConfig};

    type B = paragen_backend::TestBackend;

    fn model(seed: u64) -> Transformer<B> {
        let device = Default::default();
        B::seed(&device, seed);
        let config = TransformerConfig::tiny(40, paragen_data::SpecialTokens::trained());
        Transformer::new(&config, &device).unwrap()
    }

    fn state(step: usize) -> TrainerState {
        TrainerState {
            step,
            epoch: step / 10,
            ..Default::default()
        }
    }

    fn outputs(m: &Transformer<B>) -> Vec<f32> {
        let device = Default::default();
        let src = paragen_data::batch::pad_to_tensor::<B>(&[&[5, 6, 7]], 0, &device);
        let tgt = paragen_data::batch::pad_to_tensor::<B>(&[&[1, 9]], 0, &device);
        m.forward(src, tgt).into_data().iter::<f32>().collect()
    }

    #[test]
    fn the_newest_set_is_read_back_whole_and_older_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        assert!(run.latest_checkpoint().unwrap().is_none());
        let (a, b) = (model(1), model(2));
        run.commit_checkpoint::<B, _, _>(&state(10), &a, a.clone().into_record())
            .unwrap();
        run.commit_checkpoint::<B, _, _>(&state(20), &b, b.clone().into_record())
            .unwrap();
        let latest = run.latest_checkpoint().unwrap().unwrap();
        assert_eq!(latest.state, state(20));
        let loaded = latest.load_weights(model(3), &Default::default()).unwrap();
        assert_eq!(outputs(&loaded), outputs(&b));
        assert_ne!(outputs(&loaded), outputs(&a));
        assert_eq!(run.committed_sets().unwrap().len(), 1);
    }

    #[test]
    fn a_partial_set_of_a_killed_writer_is_ignored_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let a = model(1);
        run.commit_checkpoint::<B, _, _>(&state(10), &a, a.clone().into_record())
            .unwrap();
        // What a kill between the weights and the state of the next set leaves.
        let partial = dir.path().join("checkpoints/.partial-99999-step-000000020");
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join("last.mpk"), b"half a file").unwrap();
        std::fs::write(dir.path().join(".run.json.99999.tmp"), b"{").unwrap();
        assert_eq!(run.latest_checkpoint().unwrap().unwrap().state, state(10));
        assert_eq!(run.remove_stale_files().unwrap(), 2);
        assert!(!partial.exists());
        assert_eq!(run.latest_checkpoint().unwrap().unwrap().state, state(10));
    }

    #[test]
    fn a_run_of_the_old_layout_is_read_as_a_set_until_the_first_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let a = model(1);
        run.save_module::<B, _>(WEIGHTS, &a).unwrap();
        run.save_record::<B, _>(OPTIMIZER, a.clone().into_record())
            .unwrap();
        run.write_json(STATE, &state(7)).unwrap();
        let legacy = run.latest_checkpoint().unwrap().unwrap();
        assert_eq!(legacy.state, state(7));
        assert_eq!(legacy.files.root(), dir.path());
        run.commit_checkpoint::<B, _, _>(&state(8), &a, a.clone().into_record())
            .unwrap();
        assert!(!dir.path().join(STATE).exists());
        assert_eq!(run.latest_checkpoint().unwrap().unwrap().state, state(8));
    }
}
