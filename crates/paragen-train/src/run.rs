//! The training half of a run directory: the options and recipe that `run.json` keeps
//! beside the model, the presets, and opening a run for training (fresh, resumed, or
//! started from another run's weights), with the user's overrides applied.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::Backend;
use paragen_data::{SpecialTokens, Tokenizer};
use paragen_infer::{Checkpoint, ModelConfig, ModelKind, RunConfig, RunDir, RunLock};
use paragen_models::TransformerConfig;
use paragen_models::nat::{NatConfig, NatDecoder};
use serde::{Deserialize, Serialize};

use crate::trainer::{TrainConfig, TrainError};

/// What a training run saves in `run.json` beside the model section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Training {
    pub train: TrainConfig,
    /// The run whose weights this one started from (`--init-from`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// Students only: how they learn from the teacher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student: Option<StudentConfig>,
}

/// A run config as the trainer reads and writes it.
pub type TrainRunConfig = RunConfig<Training>;

/// How a student learns from its teacher (saved in `run.json` so `--resume` continues
/// the same recipe). The student's shapes are in the model section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudentConfig {
    /// Run directory of the teacher (word-level KD, initialisation, rescoring).
    pub teacher: Option<PathBuf>,
    /// NAT only: GLAT glancing ratio; `None` trains with plain CMLM masking.
    pub glance_ratio: Option<f64>,
    /// AR students only: word-level KD weight (0: none) and temperature.
    pub kd_weight: f64,
    pub kd_temperature: f64,
    /// Whether the student started from the teacher's weights (embedding, encoder, first
    /// decoder layers).
    pub init_from_teacher: bool,
}

/// Shapes and schedule a run starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// A small model, about 10 minutes of training on 2 CPU cores.
    Quick,
    /// Transformer-base shapes and schedule; hours on a CPU, for a GPU.
    Base,
    /// A model of a few thousand parameters that trains in seconds (tests, smoke runs).
    Tiny,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Quick => "quick",
            Preset::Base => "base",
            Preset::Tiny => "tiny",
        }
    }

    /// The preset's model shapes and training options for a vocabulary.
    pub fn configs(self, vocab: usize, special: SpecialTokens) -> (TransformerConfig, TrainConfig) {
        match self {
            Preset::Quick => (
                TransformerConfig::quick(vocab, special),
                TrainConfig::quick(),
            ),
            Preset::Base => (TransformerConfig::base(vocab, special), TrainConfig::base()),
            Preset::Tiny => (
                TransformerConfig {
                    max_positions: 256,
                    ..TransformerConfig::tiny(vocab, special)
                },
                TrainConfig::tiny(),
            ),
        }
    }
}

/// The students paragen trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StudentKind {
    /// CMLM NAT with the teacher's shapes (so it can start from all of its weights).
    Nat,
    /// CTC NAT with a decoder `upsample` times the source length.
    NatCtc { upsample: usize },
    /// AR with all but one decoder layer moved to the encoder (Kasai et al. 2021),
    /// keeping the preset's layer count.
    ArShallow,
}

impl StudentKind {
    pub fn is_nat(self) -> bool {
        !matches!(self, StudentKind::ArShallow)
    }
}

fn new_run(
    kind: ModelKind,
    preset: Preset,
    model: ModelConfig,
    train: TrainConfig,
    student: Option<StudentConfig>,
    data_dir: &Path,
) -> TrainRunConfig {
    RunConfig {
        kind,
        preset: preset.name().to_string(),
        model,
        data_dir: data_dir.to_path_buf(),
        paragen_version: env!("CARGO_PKG_VERSION").to_string(),
        training: Training {
            train,
            init_from: None,
            student,
        },
    }
}

/// A new teacher run of `preset` for the data in `data_dir` (tokenized by `tokenizer`).
pub fn teacher_run(preset: Preset, tokenizer: &Tokenizer, data_dir: &Path) -> TrainRunConfig {
    let (model, train) = preset.configs(tokenizer.vocab_size(), tokenizer.special());
    new_run(
        ModelKind::Ar,
        preset,
        ModelConfig::Ar(model),
        train,
        None,
        data_dir,
    )
}

/// A new student run: the preset's shapes reshaped for the kind, and the recipe. A NAT
/// learns no word-level KD (`kd_weight` is zeroed), and only an AR student with a
/// teacher does.
pub fn student_run(
    kind: StudentKind,
    preset: Preset,
    tokenizer: &Tokenizer,
    data_dir: &Path,
    mut recipe: StudentConfig,
) -> Result<TrainRunConfig, TrainError> {
    let check = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(TrainError::Options(what.to_string()))
        }
    };
    check(
        recipe.glance_ratio.is_none_or(|r| (0.0..=1.0).contains(&r)),
        "the glancing ratio must be between 0 and 1",
    )?;
    check(
        (0.0..=1.0).contains(&recipe.kd_weight),
        "the word-level KD weight must be between 0 and 1",
    )?;
    check(
        recipe.kd_temperature > 0.0,
        "the KD temperature must be positive",
    )?;
    check(
        !recipe.init_from_teacher || recipe.teacher.is_some(),
        "initialising from the teacher needs a teacher",
    )?;
    let (mut model, train) = preset.configs(tokenizer.vocab_size(), tokenizer.special());
    if kind.is_nat() || recipe.teacher.is_none() {
        recipe.kd_weight = 0.0;
    }
    if !kind.is_nat() {
        recipe.glance_ratio = None;
    }
    let (kind, model) = match kind {
        StudentKind::Nat => (ModelKind::Nat, ModelConfig::Nat(NatConfig::new(model))),
        StudentKind::NatCtc { upsample } => {
            check(upsample >= 1, "the CTC upsampling must be at least 1")?;
            (
                ModelKind::NatCtc,
                ModelConfig::Nat(NatConfig::ctc(model, upsample)),
            )
        }
        StudentKind::ArShallow => {
            model.encoder_layers += model.decoder_layers - 1;
            model.decoder_layers = 1;
            (ModelKind::ArShallow, ModelConfig::Ar(model))
        }
    };
    Ok(new_run(kind, preset, model, train, Some(recipe), data_dir))
}

/// What a user may change of a run's saved options, for a new run or a resumed one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    /// Continue the run (weights, optimizer, schedule) instead of starting over.
    pub resume: bool,
    pub epochs: Option<usize>,
    /// Training-time budget in minutes (0: no limit).
    pub max_minutes: Option<f64>,
    pub max_tokens: Option<usize>,
    pub lr: Option<f64>,
    pub warmup_steps: Option<usize>,
    pub seed: Option<u64>,
    pub dropout: Option<f64>,
    /// Start a new run from the weights of this run's best model (e.g. a shipped release
    /// model); the optimizer and the learning-rate warmup start fresh.
    pub init_from: Option<PathBuf>,
}

impl Overrides {
    /// Applies the overrides to `config`.
    pub fn apply(&self, config: &mut TrainRunConfig) -> Result<(), TrainError> {
        let train = &mut config.training.train;
        if let Some(epochs) = self.epochs {
            train.max_epochs = epochs;
        }
        if let Some(minutes) = self.max_minutes {
            train.max_minutes = (minutes > 0.0).then_some(minutes);
        }
        if let Some(tokens) = self.max_tokens {
            train.max_tokens = tokens;
        }
        if let Some(lr) = self.lr {
            train.peak_lr = lr;
        }
        if let Some(warmup) = self.warmup_steps {
            train.warmup_steps = warmup;
        }
        if let Some(seed) = self.seed {
            train.seed = seed;
        }
        if let Some(dropout) = self.dropout {
            config.model.transformer_mut().dropout = dropout;
            // The model's own check of its config, so the rule lives in one place.
            config
                .transformer()
                .validate()
                .map_err(TrainError::Options)?;
        }
        Ok(())
    }
}

/// A run opened for training: its directory, its config, and its lock, held for as
/// long as this value lives.
pub struct OpenRun {
    pub dir: RunDir,
    pub config: TrainRunConfig,
    pub lock: RunLock,
    /// The newest complete checkpoint set when resuming; `None` for a new run and for a
    /// run that was killed before its first epoch ended (it starts over, as it began).
    pub checkpoint: Option<Checkpoint>,
}

/// Opens `out` for training: takes its lock (one writer per run), then reads its saved
/// config when resuming, else takes the one `fresh` makes (refusing to overwrite an
/// existing run); applies `overrides` either way.
pub fn open_run(
    out: &Path,
    overrides: &Overrides,
    fresh: impl FnOnce() -> Result<TrainRunConfig, TrainError>,
) -> Result<OpenRun, TrainError> {
    let run = RunDir::new(out);
    if overrides.resume && !run.path("run.json").exists() {
        return Err(TrainError::Options(format!(
            "--resume needs an existing run, and {} holds none",
            out.display()
        )));
    }
    let lock = run.lock()?;
    run.remove_stale_files()?;
    let mut config = if overrides.resume {
        run.load_config()?
    } else {
        if run.path("run.json").exists() {
            return Err(TrainError::Options(format!(
                "{} already holds a run; pass --resume to continue it or choose another --out",
                out.display()
            )));
        }
        fresh()?
    };
    if let Some(from) = &overrides.init_from {
        if overrides.resume {
            return Err(TrainError::Options(
                "--init-from starts a new run; it cannot be combined with --resume".into(),
            ));
        }
        let source_run = RunDir::new(from);
        let source: RunConfig = source_run.load_config()?;
        if let Some(q) = source_run.load_quantization()? {
            return Err(TrainError::Options(format!(
                "--init-from {}: its weights are quantized to {} bits, which training \
                 cannot update; start from the float run it was quantized from",
                from.display(),
                q.bits
            )));
        }
        if source.kind != config.kind || !same_weight_shapes(&source.model, &config.model) {
            return Err(TrainError::Options(format!(
                "--init-from {}: it holds a {} model of other shapes than this {} run; \
                 start from a run of the same preset and kind",
                from.display(),
                source.kind.name(),
                config.kind.name()
            )));
        }
        config.training.init_from = Some(from.clone());
    }
    overrides.apply(&mut config)?;
    let checkpoint = if overrides.resume {
        let checkpoint = run.latest_checkpoint()?;
        if checkpoint.is_none() {
            tracing::warn!(
                "{} has no complete checkpoint yet (its first run ended inside epoch 1): \
                 starting it from the beginning",
                out.display()
            );
        }
        checkpoint
    } else {
        None
    };
    Ok(OpenRun {
        dir: run,
        config,
        lock,
        checkpoint,
    })
}

/// Whether weights saved under config `a` load into a model of config `b`. Dropout and
/// a CTC decoder's upsampling shape no weight, so a run started `--init-from` another
/// may change them (e.g. continue an upsample-2 CTC student at upsample 3).
fn same_weight_shapes(a: &ModelConfig, b: &ModelConfig) -> bool {
    let mut a = a.clone();
    a.transformer_mut().dropout = b.transformer().dropout;
    if let (ModelConfig::Nat(a), ModelConfig::Nat(b)) = (&mut a, b)
        && let (NatDecoder::Ctc { upsample: from }, NatDecoder::Ctc { upsample: to }) =
            (&mut a.decoder, &b.decoder)
    {
        *from = *to;
    }
    &a == b
}

/// Loads the best weights of the run `from` into `model` (same kind and shapes, which
/// [`open_run`] checked), for `--init-from`.
pub fn init_weights<B: Backend, M: Module<B>>(
    from: &Path,
    model: M,
    device: &B::Device,
) -> Result<M, TrainError> {
    Ok(RunDir::new(from).load_module("model.mpk", model, device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        Tokenizer::train(["a b c d e f g", "h i j k l m n"].into_iter(), 60).unwrap()
    }

    fn recipe() -> StudentConfig {
        StudentConfig {
            teacher: Some("t".into()),
            glance_ratio: Some(0.5),
            kd_weight: 0.5,
            kd_temperature: 1.0,
            init_from_teacher: true,
        }
    }

    #[test]
    fn students_get_the_shapes_and_recipe_of_their_kind() {
        let tok = tokenizer();
        let data = Path::new("d");
        let nat = student_run(StudentKind::Nat, Preset::Quick, &tok, data, recipe()).unwrap();
        assert_eq!(nat.kind, ModelKind::Nat);
        assert_eq!(nat.transformer().decoder_layers, 2);
        assert_eq!(nat.training.student.as_ref().unwrap().kd_weight, 0.0);
        let ctc = student_run(
            StudentKind::NatCtc { upsample: 3 },
            Preset::Quick,
            &tok,
            data,
            recipe(),
        )
        .unwrap();
        assert_eq!(ctc.kind, ModelKind::NatCtc);
        assert!(ctc.kind.fits(&ctc.model));
        let ar = student_run(StudentKind::ArShallow, Preset::Quick, &tok, data, recipe()).unwrap();
        let shapes = ar.transformer();
        assert_eq!((shapes.encoder_layers, shapes.decoder_layers), (4, 1));
        let student = ar.training.student.unwrap();
        assert_eq!((student.kd_weight, student.glance_ratio), (0.5, None));
    }

    #[test]
    fn init_from_may_change_dropout_and_ctc_upsampling_but_no_weight_shape() {
        let tok = tokenizer();
        let data = Path::new("d");
        let ctc = |upsample| {
            student_run(
                StudentKind::NatCtc { upsample },
                Preset::Quick,
                &tok,
                data,
                recipe(),
            )
            .unwrap()
            .model
        };
        assert!(same_weight_shapes(&ctc(2), &ctc(3)));
        let mut dropped = ctc(2);
        dropped.transformer_mut().dropout = 0.3;
        assert!(same_weight_shapes(&dropped, &ctc(2)));
        let mut wider = ctc(2);
        wider.transformer_mut().d_ff *= 2;
        assert!(!same_weight_shapes(&wider, &ctc(2)));
        let cmlm = student_run(StudentKind::Nat, Preset::Quick, &tok, data, recipe()).unwrap();
        assert!(!same_weight_shapes(&cmlm.model, &ctc(2)));
    }

    #[test]
    fn bad_recipes_and_overrides_are_refused_with_the_reason() {
        let tok = tokenizer();
        let bad = StudentConfig {
            kd_weight: 2.0,
            ..recipe()
        };
        let err = student_run(
            StudentKind::ArShallow,
            Preset::Tiny,
            &tok,
            Path::new("d"),
            bad,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("KD weight"), "{err}");
        let mut run = teacher_run(Preset::Tiny, &tok, Path::new("d"));
        let err = Overrides {
            dropout: Some(1.5),
            ..Default::default()
        }
        .apply(&mut run)
        .unwrap_err()
        .to_string();
        assert!(err.contains("dropout"), "{err}");
    }

    #[test]
    fn a_run_is_not_overwritten_and_resuming_needs_one() {
        let dir = tempfile::tempdir().unwrap();
        let tok = tokenizer();
        let fresh = || Ok(teacher_run(Preset::Tiny, &tok, Path::new("d")));
        let resume = Overrides {
            resume: true,
            ..Default::default()
        };
        let message = |result: Result<OpenRun, TrainError>| result.err().unwrap().to_string();
        let err = message(open_run(dir.path(), &resume, fresh));
        assert!(err.contains("needs an existing run"), "{err}");
        let opened = open_run(dir.path(), &Overrides::default(), fresh).unwrap();
        opened.dir.save_config(&opened.config).unwrap();
        // While it is open, nobody else may write the run, not even to resume it.
        let err = message(open_run(dir.path(), &resume, fresh));
        assert!(err.contains("in use by another paragen process"), "{err}");
        let mut config = opened.config.clone();
        // Read back, the data directory no longer depends on the current directory.
        config.data_dir = std::path::absolute("d").unwrap();
        drop(opened);
        let err = message(open_run(dir.path(), &Overrides::default(), fresh));
        assert!(err.contains("already holds a run"), "{err}");
        let resumed = open_run(dir.path(), &resume, fresh).unwrap();
        assert_eq!(resumed.config, config);
    }
}
