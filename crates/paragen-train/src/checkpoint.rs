//! The run directory: everything needed to resume training or to use a model.
//!
//! ```text
//! RUN/
//!   run.json        RunConfig: model kind and shapes, training options, data files
//!   tokenizer.json  the tokenizer the model was trained with
//!   model.mpk       weights of the best model so far (by validation BLEU)
//!   last.mpk        weights after the last completed epoch (for --resume)
//!   optimizer.mpk   optimizer state after the last completed epoch
//!   trainer.json    step, epoch, best score, elapsed time of the run
//!   metrics.jsonl   one JSON object per validation
//! ```
//!
//! Every file is written atomically, so an interrupted run leaves the previous version
//! in place. A model is rebuilt from `run.json` alone (shapes included), then its weights
//! are loaded; a missing or corrupt file is an error naming it.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Record, Recorder};
use paragen_data::{DataError, Tokenizer, TokenizerError, fsio};
use paragen_models::nat::{NatConfig, NatStudent};
use paragen_models::{Transformer, TransformerConfig};
use serde::{Deserialize, Serialize};

use crate::trainer::TrainConfig;
use crate::translate::Model;

/// Errors of reading or writing a run directory.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "`{path}` is missing: is `{run}` a paragen run directory (made by `paragen train-teacher`)?"
    )]
    Missing { path: String, run: String },
    #[error("`{path}` is corrupt or truncated: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("`{path}` does not fit the model in `run.json`: {reason}")]
    Mismatch { path: String, reason: String },
    #[error("`{path}` holds a `{found}` model, expected `{expected}`")]
    WrongKind {
        path: String,
        found: String,
        expected: String,
    },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// The kinds of model a run can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Autoregressive encoder-decoder (the teacher).
    Ar,
    /// Autoregressive student with a deep encoder and a one-layer decoder (Kasai et al.
    /// 2021): the strongest cheap AR baseline a NAT must beat.
    ArShallow,
    /// Non-autoregressive student (CMLM decoder with a length classifier).
    Nat,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Ar => "ar",
            ModelKind::ArShallow => "ar-shallow",
            ModelKind::Nat => "nat",
        }
    }
}

/// How a student learns from its teacher (saved in `run.json` so `--resume` continues
/// the same recipe).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudentConfig {
    /// Run directory of the teacher (word-level KD, encoder initialisation, rescoring).
    pub teacher: Option<PathBuf>,
    /// NAT only: range and weight of the length classifier.
    pub max_length_offset: usize,
    pub length_loss_weight: f64,
    /// NAT only: GLAT glancing ratio; `None` trains with plain CMLM masking.
    pub glance_ratio: Option<f64>,
    /// NAT only: a CTC decoder this many times longer than the source instead of the
    /// CMLM decoder with a length classifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctc_upsample: Option<usize>,
    /// AR students only: word-level KD weight (0: none) and temperature.
    pub kd_weight: f64,
    pub kd_temperature: f64,
    /// Whether the student started from the teacher's weights (embedding, encoder, first
    /// decoder layers).
    pub init_from_teacher: bool,
}

/// Everything needed to rebuild and retrain a model, saved as `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub kind: ModelKind,
    /// Name of the preset the run started from (`quick`, `base`, or `custom`).
    pub preset: String,
    pub model: TransformerConfig,
    pub train: TrainConfig,
    /// Students only: how they learn from the teacher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student: Option<StudentConfig>,
    /// The prepared data directory the run trains on.
    pub data_dir: PathBuf,
    /// paragen version that created the run.
    pub paragen_version: String,
}

/// Progress of a run, saved after every epoch as `trainer.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: usize,
    /// Epochs completed.
    pub epoch: usize,
    /// Best validation BLEU so far and the epoch it came from.
    pub best_bleu: Option<f64>,
    pub best_epoch: Option<usize>,
    /// Wall time spent training, summed over invocations.
    pub train_seconds: f64,
}

type Mpk = NamedMpkBytesRecorder<FullPrecisionSettings>;

/// A run directory on disk.
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.root.join(file)
    }

    fn missing(&self, file: &str) -> CheckpointError {
        CheckpointError::Missing {
            path: self.path(file).display().to_string(),
            run: self.root.display().to_string(),
        }
    }

    fn read(&self, file: &str) -> Result<Vec<u8>, CheckpointError> {
        let path = self.path(file);
        if !path.exists() {
            return Err(self.missing(file));
        }
        Ok(fsio::read_file(&path)?)
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, file: &str) -> Result<T, CheckpointError> {
        let bytes = self.read(file)?;
        serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt {
            path: self.path(file).display().to_string(),
            reason: e.to_string(),
        })
    }

    fn write_json<T: Serialize>(&self, file: &str, value: &T) -> Result<(), CheckpointError> {
        let json = serde_json::to_vec_pretty(value).expect("run files serialize");
        Ok(fsio::write_atomic(&self.path(file), &json)?)
    }

    pub fn save_config(&self, config: &RunConfig) -> Result<(), CheckpointError> {
        self.write_json("run.json", config)
    }

    pub fn load_config(&self) -> Result<RunConfig, CheckpointError> {
        self.read_json("run.json")
    }

    pub fn save_tokenizer(&self, tokenizer: &Tokenizer) -> Result<(), CheckpointError> {
        Ok(tokenizer.save(&self.path("tokenizer.json"))?)
    }

    pub fn load_tokenizer(&self) -> Result<Tokenizer, CheckpointError> {
        let path = self.path("tokenizer.json");
        if !path.exists() {
            return Err(self.missing("tokenizer.json"));
        }
        Ok(Tokenizer::load(&path)?)
    }

    pub fn save_state(&self, state: &TrainerState) -> Result<(), CheckpointError> {
        self.write_json("trainer.json", state)
    }

    pub fn load_state(&self) -> Result<TrainerState, CheckpointError> {
        self.read_json("trainer.json")
    }

    /// Saves any burn record (module weights or optimizer state) as named MessagePack.
    pub fn save_record<B: Backend, R: Record<B>>(
        &self,
        file: &str,
        record: R,
    ) -> Result<(), CheckpointError> {
        let bytes = Recorder::<B>::record(&Mpk::default(), record, ()).map_err(|e| {
            CheckpointError::Corrupt {
                path: self.path(file).display().to_string(),
                reason: e.to_string(),
            }
        })?;
        Ok(fsio::write_atomic(&self.path(file), &bytes)?)
    }

    /// Loads a record saved by [`RunDir::save_record`].
    pub fn load_record<B: Backend, R: Record<B>>(
        &self,
        file: &str,
        device: &B::Device,
    ) -> Result<R, CheckpointError> {
        let bytes = self.read(file)?;
        Recorder::<B>::load(&Mpk::default(), bytes, device).map_err(|e| CheckpointError::Corrupt {
            path: self.path(file).display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Saves module weights.
    pub fn save_module<B: Backend, M: Module<B>>(
        &self,
        file: &str,
        module: &M,
    ) -> Result<(), CheckpointError> {
        self.save_record::<B, _>(file, module.clone().into_record())
    }

    /// Loads weights into `module`, checking that every tensor has the shape the
    /// config gives (burn would otherwise accept mismatched shapes silently).
    pub fn load_module<B: Backend, M: Module<B>>(
        &self,
        file: &str,
        module: M,
        device: &B::Device,
    ) -> Result<M, CheckpointError> {
        let record = self.load_record::<B, M::Record>(file, device)?;
        let expected = shapes(&module);
        let loaded = module.load_record(record);
        let found = shapes(&loaded);
        if expected != found {
            return Err(CheckpointError::Mismatch {
                path: self.path(file).display().to_string(),
                reason: format!("parameter shapes {found:?} differ from {expected:?}"),
            });
        }
        Ok(loaded)
    }

    /// Appends one JSON object to `metrics.jsonl`.
    pub fn append_metrics(&self, value: &serde_json::Value) -> Result<(), CheckpointError> {
        let path = self.path("metrics.jsonl");
        let write_err = |source| DataError::Write {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(write_err)?;
        writeln!(file, "{value}").map_err(write_err)?;
        Ok(())
    }

    /// Rebuilds the best AR model of the run (teacher or AR student), on `device`, for
    /// inference.
    pub fn load_transformer<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<(RunConfig, Transformer<B>), CheckpointError> {
        match self.load_model(device)? {
            (config, Model::Ar(model)) => Ok((config, model)),
            (config, Model::Nat(_)) => Err(CheckpointError::WrongKind {
                path: self.path("run.json").display().to_string(),
                found: config.kind.name().to_string(),
                expected: "ar or ar-shallow".to_string(),
            }),
        }
    }

    /// Rebuilds the best model of the run, whatever its kind, on `device`.
    pub fn load_model<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<(RunConfig, Model<B>), CheckpointError> {
        let config = self.load_config()?;
        let corrupt = |e: paragen_models::ModelError| CheckpointError::Corrupt {
            path: self.path("run.json").display().to_string(),
            reason: e.to_string(),
        };
        let model = match config.kind {
            ModelKind::Ar | ModelKind::ArShallow => {
                let model = Transformer::new(&config.model, device).map_err(corrupt)?;
                Model::Ar(self.load_module("model.mpk", model, device)?)
            }
            ModelKind::Nat => {
                let model = NatStudent::new(&config.nat_config(), device).map_err(corrupt)?;
                Model::Nat(self.load_module("model.mpk", model, device)?)
            }
        };
        Ok((config, model))
    }
}

impl RunConfig {
    /// The NAT shapes of a `nat` run (defaults for the length classifier when the run
    /// has no student section).
    pub fn nat_config(&self) -> NatConfig {
        let mut nat = NatConfig::new(self.model.clone());
        if let Some(student) = &self.student {
            nat.max_length_offset = student.max_length_offset;
            nat.length_loss_weight = student.length_loss_weight;
            nat.ctc_upsample = student.ctc_upsample;
        }
        nat
    }
}

fn shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<Vec<usize>> {
    struct Shapes(Vec<Vec<usize>>);
    impl<B: Backend> burn::module::ModuleVisitor<B> for Shapes {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            self.0.push(param.val().dims().to_vec());
        }
    }
    let mut visitor = Shapes(Vec::new());
    module.visit(&mut visitor);
    visitor.0
}

/// A tiny model config for tests of the run directory.
pub fn test_config(vocab: usize, special: paragen_data::SpecialTokens) -> RunConfig {
    RunConfig {
        kind: ModelKind::Ar,
        preset: "test".into(),
        model: TransformerConfig::tiny(vocab, special),
        train: TrainConfig::tiny(),
        student: None,
        data_dir: PathBuf::from("data"),
        paragen_version: env!("CARGO_PKG_VERSION").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paragen_backend::TestBackend;
    use paragen_data::SpecialTokens;

    type B = TestBackend;

    fn saved_run() -> (tempfile::TempDir, RunDir, Transformer<B>) {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let config = test_config(30, SpecialTokens::trained());
        let model = Transformer::<B>::new(&config.model, &Default::default()).unwrap();
        run.save_config(&config).unwrap();
        run.save_module::<B, _>("model.mpk", &model).unwrap();
        (dir, run, model)
    }

    #[test]
    fn reloaded_model_gives_identical_outputs() {
        let (_dir, run, model) = saved_run();
        let (_, reloaded) = run.load_transformer::<B>(&Default::default()).unwrap();
        let sources = vec![vec![5, 6, 7, 8], vec![9, 10]];
        let limit = paragen_models::LengthLimit::default();
        assert_eq!(
            paragen_models::greedy(&model, &sources, limit).unwrap(),
            paragen_models::greedy(&reloaded, &sources, limit).unwrap()
        );
        let src = paragen_data::batch::pad_to_tensor::<B>(&[&[5, 6, 7]], 0, &Default::default());
        let tgt = paragen_data::batch::pad_to_tensor::<B>(&[&[1, 9]], 0, &Default::default());
        let a: Vec<f32> = model
            .forward(src.clone(), tgt.clone())
            .into_data()
            .iter::<f32>()
            .collect();
        let b: Vec<f32> = reloaded
            .forward(src, tgt)
            .into_data()
            .iter::<f32>()
            .collect();
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert_eq!(a, b, "max difference {diff}");
    }

    #[test]
    fn truncated_checkpoint_is_a_clear_error() {
        let (_dir, run, _) = saved_run();
        let path = run.path("model.mpk");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let msg = run
            .load_transformer::<B>(&Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("model.mpk") && msg.contains("corrupt or truncated"),
            "{msg}"
        );
    }

    #[test]
    fn missing_checkpoint_is_a_clear_error() {
        let (_dir, run, _) = saved_run();
        std::fs::remove_file(run.path("model.mpk")).unwrap();
        let msg = run
            .load_transformer::<B>(&Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("model.mpk") && msg.contains("is missing"),
            "{msg}"
        );
        let empty = RunDir::new("/nonexistent/run");
        let msg = empty
            .load_transformer::<B>(&Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("run.json") && msg.contains("is missing"),
            "{msg}"
        );
    }

    #[test]
    fn weights_of_another_shape_are_rejected() {
        let (_dir, run, _) = saved_run();
        let mut config = run.load_config().unwrap();
        config.model.d_ff *= 2;
        run.save_config(&config).unwrap();
        let err = run.load_transformer::<B>(&Default::default()).unwrap_err();
        assert!(
            matches!(
                err,
                CheckpointError::Mismatch { .. } | CheckpointError::Corrupt { .. }
            ),
            "{err}"
        );
    }
}
