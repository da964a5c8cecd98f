//! The run directory: everything needed to resume training or to use a model.
//!
//! ```text
//! RUN/
//!   run.json        RunConfig: model kind and shapes (typed: AR, or NAT with a CMLM or
//!                   CTC decoder), the data it trained on, and what the trainer adds
//!   tokenizer.json  the tokenizer the model was trained with
//!   model.mpk       weights of the best model so far (by validation BLEU)
//!   checkpoints/step-N/   the newest checkpoint set, what --resume reads:
//!     last.mpk        weights after the last completed epoch
//!     optimizer.mpk   optimizer state then
//!     trainer.json    step, epoch, best score, elapsed time of the run
//!   metrics.jsonl   one JSON object per validation
//!   history.jsonl   the command line of every training invocation
//!   run.lock        held by the one process writing the run
//! ```
//!
//! Every file is written atomically, and a checkpoint set commits as a whole (see
//! [`crate::checkpoint`]), so an interrupted run leaves the previous version in place.
//! A model is rebuilt from `run.json` alone (shapes included), then its weights are
//! loaded; a missing or corrupt file is an error naming it. `run.json` files of
//! paragen before the typed model section (an untyped `model` plus `student.ctc_upsample`)
//! are converted when read.
//!
//! This crate reads the model half of `run.json`; the training half (options, a
//! student's recipe) belongs to `paragen-train`, which names its type as the `T` of
//! [`RunConfig`]. Here it stays JSON, so inference never depends on the trainer.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;
use burn::record::{
    FullPrecisionSettings, HalfPrecisionSettings, NamedMpkBytesRecorder, Record, Recorder,
};
use paragen_data::{DataError, Tokenizer, TokenizerError, fsio};
use paragen_models::{Transformer, TransformerConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::model::{Model, ModelConfig, ModelKind};

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
    #[error("`{path}` is a run of paragen {version}, which this version cannot read: {reason}")]
    OldFormat {
        path: String,
        version: String,
        reason: String,
    },
    #[error(
        "`{run}` is in use by another paragen process ({holder}); wait for it to finish or \
         train into another directory"
    )]
    Locked { run: String, holder: String },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// The training half of `run.json` as this crate sees it: JSON it keeps but does not
/// interpret (`paragen-train` reads it as its `Training`).
pub type TrainingJson = serde_json::Map<String, serde_json::Value>;

/// Everything needed to rebuild (and, with `T` = the trainer's type, retrain) a model,
/// saved as `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig<T = TrainingJson> {
    pub kind: ModelKind,
    /// Name of the preset the run started from (`quick`, `base`, or `custom`).
    pub preset: String,
    pub model: ModelConfig,
    /// The prepared data directory the run trains on. `run.json` stores it as `data`,
    /// relative to the run directory (so that a run and its data move together, as in a
    /// clone of the repository); [`RunDir::load_config`] gives it back as a path that
    /// does not depend on the current directory.
    #[serde(rename = "data")]
    pub data_dir: PathBuf,
    /// paragen version that created the run.
    pub paragen_version: String,
    /// What the trainer saved beside the model: its options, a student's recipe.
    #[serde(flatten)]
    pub training: T,
}

impl<T> RunConfig<T> {
    /// The Transformer shapes of the model (AR, or the layers of a NAT).
    pub fn transformer(&self) -> &TransformerConfig {
        self.model.transformer()
    }
}

/// Rewrites a `run.json` of paragen before the typed model section (up to commit
/// 0f240ec: `kind` ar|ar-shallow|nat, `model` a bare Transformer config, the NAT's
/// length classifier and CTC upsampling under `student`) into today's layout.
/// Returns whether anything changed.
fn upgrade_legacy(value: &mut serde_json::Value) -> Result<bool, String> {
    use serde_json::{Value, json};
    let Some(object) = value.as_object_mut() else {
        return Err("not a JSON object".into());
    };
    let mut upgraded = false;
    if let Some(data_dir) = object.remove("data_dir") {
        // Until `data`, the path was stored as given on the command line: relative to the
        // directory training ran in, which the current directory is the best guess of.
        let data_dir = data_dir.as_str().ok_or("`data_dir` is not a path")?;
        let absolute = std::path::absolute(data_dir).map_err(|e| e.to_string())?;
        object.insert("data".into(), json!(absolute));
        upgraded = true;
    }
    let legacy = object
        .get("model")
        .and_then(Value::as_object)
        .is_some_and(|m| m.contains_key("d_model"));
    if !legacy {
        return Ok(upgraded);
    }
    let transformer = object.remove("model").expect("checked above");
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("no `kind`")?
        .to_string();
    let (model, kind) = match kind.as_str() {
        "ar" | "ar-shallow" => (json!({ "ar": transformer }), kind),
        "nat" => {
            let mut moved = serde_json::Map::new();
            if let Some(student) = object.get_mut("student").and_then(Value::as_object_mut) {
                for key in ["max_length_offset", "length_loss_weight", "ctc_upsample"] {
                    if let Some(v) = student.remove(key) {
                        moved.insert(key.into(), v);
                    }
                }
            }
            let get = |key: &str, default: Value| moved.get(key).cloned().unwrap_or(default);
            let (decoder, kind) = match moved.get("ctc_upsample").filter(|u| !u.is_null()) {
                Some(upsample) => (json!({ "ctc": { "upsample": upsample } }), "nat-ctc"),
                None => (json!("cmlm"), "nat"),
            };
            let nat = json!({ "nat": {
                "transformer": transformer,
                "max_length_offset": get("max_length_offset", json!(32)),
                "length_loss_weight": get("length_loss_weight", json!(0.1)),
                "decoder": decoder,
            }});
            (nat, kind.to_string())
        }
        other => return Err(format!("unknown model kind `{other}`")),
    };
    object.insert("model".into(), model);
    object.insert("kind".into(), json!(kind));
    Ok(true)
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
/// Release models: weights stored as f16, half the size; they load back as f32 through
/// the same [`RunDir::load_module`] (burn converts the element type on load).
type HalfMpk = NamedMpkBytesRecorder<HalfPrecisionSettings>;

/// Holds a run directory's lock until dropped (see [`RunDir::lock`]).
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

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

    /// A JSON file of the run, parsed; a missing or malformed file names its path.
    pub fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        file: &str,
    ) -> Result<T, CheckpointError> {
        let bytes = self.read(file)?;
        serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt {
            path: self.path(file).display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Copies those of `files` that `from` holds into this run, byte for byte.
    pub(crate) fn copy_from(&self, from: &RunDir, files: &[&str]) -> Result<(), CheckpointError> {
        for file in files {
            if from.path(file).exists() {
                fsio::write_atomic(&self.path(file), &fsio::read_file(&from.path(file))?)?;
            }
        }
        Ok(())
    }

    /// Writes a JSON file of the run atomically.
    pub fn write_json<T: Serialize>(&self, file: &str, value: &T) -> Result<(), CheckpointError> {
        let json = serde_json::to_vec_pretty(value).expect("run files serialize");
        Ok(fsio::write_atomic(&self.path(file), &json)?)
    }

    pub fn save_config<T: Serialize>(&self, config: &RunConfig<T>) -> Result<(), CheckpointError> {
        let mut value = serde_json::to_value(config).expect("run files serialize");
        value["data"] = serde_json::json!(self.relative_to_root(&config.data_dir));
        self.write_json("run.json", &value)
    }

    /// `path` relative to the run directory, when both have an absolute form.
    fn relative_to_root(&self, path: &Path) -> PathBuf {
        match (std::path::absolute(path), std::path::absolute(&self.root)) {
            (Ok(path), Ok(root)) => pathdiff::diff_paths(&path, &root).unwrap_or(path),
            _ => path.to_path_buf(),
        }
    }

    /// A path stored relative to the run directory, made independent of the current
    /// directory (`..` resolved lexically, as [`RunDir::relative_to_root`] made it).
    fn resolve_from_root(&self, stored: &Path) -> PathBuf {
        if stored.is_absolute() {
            return stored.to_path_buf();
        }
        let root = std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone());
        let mut resolved = PathBuf::new();
        for part in root.join(stored).components() {
            match part {
                std::path::Component::ParentDir => {
                    resolved.pop();
                }
                std::path::Component::CurDir => {}
                other => resolved.push(other),
            }
        }
        resolved
    }

    /// Reads `run.json` (converting the layout of older paragen versions) and checks
    /// that its kind fits its model; `T` is the type of the training half.
    pub fn load_config<T: DeserializeOwned>(&self) -> Result<RunConfig<T>, CheckpointError> {
        let file = "run.json";
        let path = self.path(file).display().to_string();
        let mut value: serde_json::Value = self.read_json(file)?;
        let version = value["paragen_version"].as_str().unwrap_or("?").to_string();
        let upgraded = upgrade_legacy(&mut value).map_err(|reason| CheckpointError::OldFormat {
            path: path.clone(),
            version,
            reason: format!(
                "{reason}; retrain it, or write its `model` as {{\"ar\": <shapes>}} or \
                 {{\"nat\": {{\"transformer\": <shapes>, \"decoder\": \"cmlm\", ...}}}}"
            ),
        })?;
        if upgraded {
            tracing::debug!("{path}: converted from the layout before typed model sections");
        }
        let mut config: RunConfig<T> =
            serde_json::from_value(value).map_err(|e| CheckpointError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        config.data_dir = self.resolve_from_root(&config.data_dir);
        if !config.kind.fits(&config.model) {
            return Err(CheckpointError::Corrupt {
                path,
                reason: format!(
                    "kind `{}` does not fit its model section",
                    config.kind.name()
                ),
            });
        }
        Ok(config)
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

    /// Writes `trainer.json` in the run directory itself: a release's record of how far
    /// its run trained (a training run commits it inside a checkpoint set instead).
    pub(crate) fn save_state(&self, state: &TrainerState) -> Result<(), CheckpointError> {
        self.write_json("trainer.json", state)
    }

    /// The trainer's progress as of the run's newest checkpoint set (see
    /// [`RunDir::latest_checkpoint`]).
    pub fn load_state(&self) -> Result<TrainerState, CheckpointError> {
        match self.latest_checkpoint()? {
            Some(checkpoint) => Ok(checkpoint.state),
            None => Err(self.missing(crate::checkpoint::CHECKPOINTS)),
        }
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
        let corrupt = |reason: String| CheckpointError::Corrupt {
            path: self.path(file).display().to_string(),
            reason,
        };
        // burn 0.21 panics on some corrupt records ("Invalid id.", found by fuzzing).
        paragen_data::guard::catch_quietly(|| Recorder::<B>::load(&Mpk::default(), bytes, device))
            .map_err(|panic| corrupt(format!("burn could not read it: {panic}")))?
            .map_err(|e| corrupt(e.to_string()))
    }

    /// Saves module weights in half precision (for release models).
    pub fn save_module_half<B: Backend, M: Module<B>>(
        &self,
        file: &str,
        module: &M,
    ) -> Result<(), CheckpointError> {
        let bytes = Recorder::<B>::record(&HalfMpk::default(), module.clone().into_record(), ())
            .map_err(|e| CheckpointError::Corrupt {
                path: self.path(file).display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(fsio::write_atomic(&self.path(file), &bytes)?)
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
        // burn panics when the record has another number of layers than the module
        // (found by fuzzing `run.json`): a mismatch like any other.
        let loaded =
            paragen_data::guard::catch_quietly(|| module.load_record(record)).map_err(|_| {
                CheckpointError::Mismatch {
                    path: self.path(file).display().to_string(),
                    reason: "it holds another number of layers than `run.json` gives".into(),
                }
            })?;
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
        self.append_json_line("metrics.jsonl", value)
    }

    /// Appends the command line of a training invocation to `history.jsonl`, so that a
    /// release can say exactly how its model was made.
    pub fn append_history(&self, argv: &[String]) -> Result<(), CheckpointError> {
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.append_json_line(
            "history.jsonl",
            &serde_json::json!({
                "unix_seconds": seconds,
                "argv": argv,
                "paragen_version": env!("CARGO_PKG_VERSION"),
            }),
        )
    }

    /// Every JSON object of a `.jsonl` file of the run (none when it is missing).
    pub fn read_json_lines(&self, file: &str) -> Result<Vec<serde_json::Value>, CheckpointError> {
        if !self.path(file).exists() {
            return Ok(Vec::new());
        }
        let bytes = self.read(file)?;
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line).map_err(|e| CheckpointError::Corrupt {
                    path: self.path(file).display().to_string(),
                    reason: format!("line {}: {e}", i + 1),
                })
            })
            .collect()
    }

    fn append_json_line(
        &self,
        file: &str,
        value: &serde_json::Value,
    ) -> Result<(), CheckpointError> {
        let path = self.path(file);
        let write_err = |source| DataError::write(&path, source);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(write_err)?;
        // A run killed inside an earlier append may have left a partial last line; cut it
        // so that this line does not join it.
        let len = file.metadata().map_err(write_err)?.len();
        if len > 0 {
            use std::io::{Read, Seek, SeekFrom};
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1)).map_err(write_err)?;
            file.read_exact(&mut last).map_err(write_err)?;
            if last[0] != b'\n' {
                let text = std::fs::read(&path).map_err(write_err)?;
                let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                tracing::warn!(
                    "{}: cut a partial last line ({} bytes) left by an interrupted write",
                    path.display(),
                    text.len() - keep
                );
                file.set_len(keep as u64).map_err(write_err)?;
            }
        }
        // One write per line, so that a kill leaves whole lines or one partial line.
        file.write_all(format!("{value}\n").as_bytes())
            .map_err(write_err)?;
        Ok(())
    }

    /// Takes the run's lock (`run.lock`, an OS advisory lock that dies with its process)
    /// for as long as the guard lives: a second trainer of the same run, or a `--resume`
    /// beside a live run, gets an error naming the holder instead of mixing files.
    pub fn lock(&self) -> Result<RunLock, CheckpointError> {
        let path = self.path("run.lock");
        let io_err = |source| CheckpointError::from(DataError::write(&path, source));
        std::fs::create_dir_all(&self.root).map_err(io_err)?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(CheckpointError::Locked {
                    run: self.root.display().to_string(),
                    holder: holder.trim().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        file.set_len(0).map_err(io_err)?;
        file.write_all(format!("pid {}\n", std::process::id()).as_bytes())
            .map_err(io_err)?;
        Ok(RunLock { _file: file })
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
        let config: RunConfig = self.load_config()?;
        let model = Model::new(&config.model, device).map_err(|e| CheckpointError::Corrupt {
            path: self.path("run.json").display().to_string(),
            reason: e.to_string(),
        })?;
        let model = match self.quantized_layout(model)? {
            Model::Ar(m) => Model::Ar(self.load_module("model.mpk", m, device)?),
            Model::Nat(m) => Model::Nat(self.load_module("model.mpk", m, device)?),
        };
        let model = self.attach_shortlist(model, config.transformer().vocab_size)?;
        Ok((config, model))
    }
}

fn shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<Vec<usize>> {
    struct Shapes(Vec<Vec<usize>>);
    impl<B: Backend> burn::module::ModuleVisitor<B> for Shapes {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            self.0.push(param.val().dims().to_vec());
        }
        fn visit_int<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D, Int>>) {
            self.0.push(param.val().dims().to_vec());
        }
    }
    let mut visitor = Shapes(Vec::new());
    module.visit(&mut visitor);
    visitor.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use paragen_backend::TestBackend;
    use paragen_data::SpecialTokens;
    use paragen_models::nat::NatDecoder;

    type B = TestBackend;

    /// A tiny AR run config for tests of the run directory.
    fn test_config(vocab: usize, special: paragen_data::SpecialTokens) -> RunConfig {
        RunConfig {
            kind: ModelKind::Ar,
            preset: "test".into(),
            model: ModelConfig::Ar(TransformerConfig::tiny(vocab, special)),
            data_dir: PathBuf::from("data"),
            paragen_version: env!("CARGO_PKG_VERSION").into(),
            training: TrainingJson::new(),
        }
    }

    fn saved_run() -> (tempfile::TempDir, RunDir, Transformer<B>) {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let config = test_config(30, SpecialTokens::trained());
        let model = Transformer::<B>::new(config.transformer(), &Default::default()).unwrap();
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
    fn half_precision_weights_reload_into_the_same_model() {
        let (_dir, run, model) = saved_run();
        run.save_module_half::<B, _>("model.mpk", &model).unwrap();
        let full = std::fs::metadata(run.path("model.mpk")).unwrap().len();
        let (_, reloaded) = run.load_transformer::<B>(&Default::default()).unwrap();
        let src = paragen_data::batch::pad_to_tensor::<B>(&[&[5, 6, 7]], 0, &Default::default());
        let tgt = paragen_data::batch::pad_to_tensor::<B>(&[&[1, 9]], 0, &Default::default());
        model
            .forward(src.clone(), tgt.clone())
            .into_data()
            .assert_approx_eq::<f32>(
                &reloaded.forward(src, tgt).into_data(),
                burn::tensor::Tolerance::absolute(2e-2),
            );
        run.save_module::<B, _>("model.mpk", &model).unwrap();
        let double = std::fs::metadata(run.path("model.mpk")).unwrap().len();
        assert!(
            full * 10 < double * 6,
            "f16 file {full} bytes, f32 {double}"
        );
    }

    #[test]
    fn a_run_has_one_writer_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let held = run.lock().unwrap();
        let msg = RunDir::new(dir.path()).lock().unwrap_err().to_string();
        assert!(
            msg.contains("in use") && msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(held);
        run.lock().unwrap();
    }

    #[test]
    fn a_partial_metrics_line_of_a_killed_run_is_cut_before_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        run.append_metrics(&serde_json::json!({"epoch": 1}))
            .unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(run.path("metrics.jsonl"))
            .unwrap();
        file.write_all(b"{\"epoch\": 2, \"va").unwrap();
        run.append_metrics(&serde_json::json!({"epoch": 2}))
            .unwrap();
        let lines = run.read_json_lines("metrics.jsonl").unwrap();
        assert_eq!(
            lines,
            vec![
                serde_json::json!({"epoch": 1}),
                serde_json::json!({"epoch": 2})
            ]
        );
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
        let mut config: RunConfig = run.load_config().unwrap();
        config.model.transformer_mut().d_ff *= 2;
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

    #[test]
    fn weights_with_another_number_of_layers_are_a_mismatch_not_a_panic() {
        // Found by fuzzing run.json: burn's load_record asserts on the layer count.
        let (_dir, run, _) = saved_run();
        let mut config: RunConfig = run.load_config().unwrap();
        config.model.transformer_mut().encoder_layers += 1;
        run.save_config(&config).unwrap();
        let err = run.load_transformer::<B>(&Default::default()).unwrap_err();
        assert!(matches!(err, CheckpointError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains("number of layers"), "{err}");
    }

    /// `run.json` of a NAT as paragen wrote it up to commit 0f240ec (untyped `model`,
    /// the NAT's shapes and CTC upsampling under `student`).
    fn legacy_nat_json(ctc_upsample: Option<usize>) -> serde_json::Value {
        let model = TransformerConfig::tiny(30, SpecialTokens::trained());
        serde_json::json!({
            "kind": "nat",
            "preset": "quick",
            "model": model,
            "train": { "max_epochs": 2 },
            "student": {
                "teacher": "work/teacher",
                "max_length_offset": 16,
                "length_loss_weight": 0.2,
                "glance_ratio": 0.5,
                "ctc_upsample": ctc_upsample,
                "kd_weight": 0.0,
                "kd_temperature": 1.0,
                "init_from_teacher": true
            },
            "data_dir": "work/data",
            "paragen_version": "0.1.0"
        })
    }

    #[test]
    fn the_data_directory_is_stored_relative_to_the_run_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("models/teacher"));
        let mut config = test_config(30, SpecialTokens::trained());
        config.data_dir = dir.path().join("work/data");
        run.save_config(&config).unwrap();
        let stored: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.path("run.json")).unwrap()).unwrap();
        assert_eq!(stored["data"], "../../work/data");
        // Wherever the reader stands, and however the run directory is named.
        let spelled = RunDir::new(dir.path().join("models/./teacher"));
        let loaded: RunConfig = spelled.load_config().unwrap();
        assert_eq!(loaded.data_dir, dir.path().join("work/data"));
        // Moved together with its data, the run still finds it.
        std::fs::rename(dir.path(), dir.path().with_extension("moved")).unwrap();
        let moved = dir.path().with_extension("moved");
        let loaded: RunConfig = RunDir::new(moved.join("models/teacher"))
            .load_config()
            .unwrap();
        assert_eq!(loaded.data_dir, moved.join("work/data"));
        std::fs::rename(&moved, dir.path()).unwrap();
    }

    #[test]
    fn run_files_of_the_untyped_layout_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        for (upsample, kind, decoder) in [
            (None, ModelKind::Nat, NatDecoder::Cmlm),
            (Some(3), ModelKind::NatCtc, NatDecoder::Ctc { upsample: 3 }),
        ] {
            let json = serde_json::to_vec(&legacy_nat_json(upsample)).unwrap();
            std::fs::write(run.path("run.json"), json).unwrap();
            let config: RunConfig = run.load_config().unwrap();
            assert_eq!(config.kind, kind);
            let ModelConfig::Nat(nat) = &config.model else {
                panic!("a legacy nat run read as {:?}", config.model);
            };
            assert_eq!((nat.max_length_offset, nat.decoder), (16, decoder));
            assert_eq!(nat.length_loss_weight, 0.2);
            // The recipe stays for the trainer, without the fields that moved.
            let student = config.training["student"].as_object().unwrap();
            assert_eq!(student["teacher"], "work/teacher");
            assert!(!student.contains_key("ctc_upsample"));
            assert_eq!(config.training["train"]["max_epochs"], 2);
            // The old path was relative to the directory training ran in.
            assert_eq!(
                config.data_dir,
                std::env::current_dir().unwrap().join("work/data")
            );
        }
        let mut ar = legacy_nat_json(None);
        ar["kind"] = "ar-shallow".into();
        std::fs::write(run.path("run.json"), serde_json::to_vec(&ar).unwrap()).unwrap();
        let config: RunConfig = run.load_config().unwrap();
        assert_eq!(config.kind, ModelKind::ArShallow);
        assert!(matches!(config.model, ModelConfig::Ar(_)));
    }

    #[test]
    fn a_kind_that_does_not_fit_the_model_or_an_unknown_old_kind_is_a_clear_error() {
        let (_dir, run, _) = saved_run();
        let mut config: RunConfig = run.load_config().unwrap();
        config.kind = ModelKind::NatCtc;
        run.save_config(&config).unwrap();
        let msg = run.load_config::<TrainingJson>().unwrap_err().to_string();
        assert!(
            msg.contains("run.json") && msg.contains("does not fit"),
            "{msg}"
        );
        let mut old = legacy_nat_json(None);
        old["kind"] = "diffusion".into();
        std::fs::write(run.path("run.json"), serde_json::to_vec(&old).unwrap()).unwrap();
        let msg = run.load_config::<TrainingJson>().unwrap_err().to_string();
        assert!(
            msg.contains("paragen 0.1.0") && msg.contains("diffusion") && msg.contains("retrain"),
            "{msg}"
        );
    }
}
