//! Release models: a run directory made compact for shipping in the repository
//! (half-precision weights, no optimizer state), scored on the test split after the
//! conversion, with its provenance generated from the run's own files (`release.json`,
//! `TRAINING.md`), and the index of all releases (`models/README.md`).
//!
//! A release replaces an earlier one only when its best test BLEU is higher by at
//! least [`MIN_GAIN`] (every replacement grows the repository's history), unless forced.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use paragen_data::{Pair, fsio};
use paragen_models::BeamOptions;
use paragen_models::nat::{NatDecoder, NatDecoding};
use serde::{Deserialize, Serialize};

use crate::derived::PRUNE_FILE;
use crate::run_dir::{CheckpointError, ModelConfig, RunConfig, RunDir};
use crate::shortlist::SHORTLIST_FILE;
use crate::translate::{Decoding, Model, TranslateError, Translator, evaluate};
use crate::tune::{DECODING_FILE, TunedDecoding};

mod page;
pub use page::{training_page, write_index};

/// Test BLEU a new release must gain over the one it replaces.
pub const MIN_GAIN: f64 = 0.5;

/// One decoding of a release scored on the test split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestScore {
    pub decoding: String,
    pub bleu: f64,
    pub chrf: f64,
    pub sentences: usize,
    /// Wall time of decoding the split at batch 64, per sentence.
    pub ms_per_sentence: f64,
}

/// A point of the validation curve: BLEU after an epoch, against training minutes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub epoch: u64,
    pub step: u64,
    pub train_minutes: f64,
    pub valid_bleu: f64,
}

/// A release another was trained from (`--init-from`): what its training took, so that
/// a release's page tells the whole cost and every command behind it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ancestor {
    /// The directory it was initialized from, as the command named it.
    pub source: String,
    pub steps: usize,
    pub epochs: usize,
    pub train_minutes: f64,
    pub commands: Vec<String>,
}

/// What `release.json` records of a release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    pub name: String,
    pub kind: String,
    pub preset: String,
    pub params: usize,
    pub file_bytes: u64,
    /// Bits of the quantized weights (`paragen quantize`); absent for half precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantized_bits: Option<u8>,
    /// What `paragen prune` removed (from its `prune.json`), e.g. `heads 28 -> 19, ...`;
    /// absent for unpruned models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<String>,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub d_model: usize,
    pub dropout: f64,
    /// The prepared data the model trained on, and where it came from.
    pub data_dir: String,
    pub data_source: Option<String>,
    pub steps: usize,
    pub epochs: usize,
    pub train_minutes: f64,
    pub best_valid_bleu: Option<f64>,
    pub best_epoch: Option<usize>,
    pub test: Vec<TestScore>,
    /// The command lines that trained the run (its `history.jsonl`); empty for runs
    /// made before paragen recorded them.
    pub commands: Vec<String>,
    pub curve: Vec<CurvePoint>,
    /// The decoding `paragen tune` chose on the valid split (`decoding.json`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned_decoding: Option<TunedDecoding>,
    /// The releases this one continued from, oldest first; `steps`, `train_minutes` and
    /// `commands` above are this run's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestry: Vec<Ancestor>,
    pub source_run: String,
    pub machine: String,
    pub paragen_version: String,
}

impl ReleaseInfo {
    /// The best test BLEU of any decoding.
    pub fn best_bleu(&self) -> f64 {
        self.test.iter().map(|t| t.bleu).fold(0.0, f64::max)
    }

    /// Minutes of training behind the weights: this run's and its ancestors'.
    pub fn total_train_minutes(&self) -> f64 {
        self.train_minutes + self.ancestry.iter().map(|a| a.train_minutes).sum::<f64>()
    }

    /// Steps of training behind the weights: this run's and its ancestors'.
    pub fn total_steps(&self) -> usize {
        self.steps + self.ancestry.iter().map(|a| a.steps).sum::<usize>()
    }
}

/// The file in a release directory that describes it ([`ReleaseInfo`]).
const RELEASE_FILE: &str = "release.json";

/// The release in `dir`, if it holds a readable one.
fn read_release(dir: &Path) -> Option<ReleaseInfo> {
    let bytes = std::fs::read(dir.join(RELEASE_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The ancestry of the run `run` initialized from `init_from`: the ancestors of that
/// release and the release itself. Empty when it is not a release (a plain run directory
/// keeps no record of what made it beyond its own history). When the release there is
/// an earlier release of `run` itself (a run released, trained on, and released again
/// into the directory it started from), only its ancestors count.
fn ancestry_of(init_from: &Path, run: &Path) -> Vec<Ancestor> {
    let Some(parent) = read_release(init_from) else {
        return Vec::new();
    };
    let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    let mut ancestry = parent.ancestry;
    if same(Path::new(&parent.source_run), run) {
        return ancestry;
    }
    ancestry.push(Ancestor {
        source: init_from.display().to_string(),
        steps: parent.steps,
        epochs: parent.epochs,
        train_minutes: parent.train_minutes,
        commands: parent.commands,
    });
    ancestry
}

/// Errors of making a release.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Translate(#[from] TranslateError),
    #[error(transparent)]
    Data(#[from] paragen_data::DataError),
    #[error(
        "the release in {path} has test BLEU {old:.2}; this one has {new:.2}, less than \
         {MIN_GAIN} better, so it is not replaced (pass --force to replace it anyway)"
    )]
    NotBetter { path: String, old: f64, new: f64 },
}

/// The decodings a release of this model is scored with: greedy and beam 4 for AR
/// models, one pass and mask-predict 10 for a CMLM student, one pass for CTC, and for a
/// CTC student tuned on the valid split, one pass at its tuned blank penalty too.
pub fn release_decodings(model: &ModelConfig, tuned: Option<&TunedDecoding>) -> Vec<Decoding> {
    match model {
        ModelConfig::Ar(_) => vec![
            Decoding::Greedy(Default::default()),
            Decoding::Beam(BeamOptions::default()),
        ],
        ModelConfig::Nat(nat) => match nat.decoder {
            NatDecoder::Cmlm => vec![
                Decoding::Nat(NatDecoding::default()),
                Decoding::Nat(NatDecoding {
                    iterations: 10,
                    ..Default::default()
                }),
            ],
            NatDecoder::Ctc { .. } => {
                let mut decodings = vec![Decoding::Nat(NatDecoding::default())];
                if let Some(tuned) = tuned.filter(|t| t.blank_penalty != 0.0) {
                    decodings.push(Decoding::Nat(NatDecoding {
                        blank_penalty: tuned.blank_penalty,
                        ..Default::default()
                    }));
                }
                decodings
            }
        },
    }
}

/// Scores `model` on `pairs` with each of its [`release_decodings`], at batch 64.
fn evaluate_release_decodings<B: Backend>(
    model: &Model<B>,
    config: &ModelConfig,
    tokenizer: &paragen_data::Tokenizer,
    tuned: Option<&TunedDecoding>,
    pairs: &[Pair],
) -> Result<Vec<crate::translate::EvalReport>, TranslateError> {
    release_decodings(config, tuned)
        .into_iter()
        .map(|decoding| {
            let translator = Translator {
                model,
                decoding,
                rescorer: None,
            };
            evaluate(&translator, tokenizer, pairs, 64, true)
        })
        .collect()
}

/// Copies the run `from` into the release directory `to` (half-precision weights),
/// scores the copy on `test` pairs, and writes `release.json` and `TRAINING.md`.
/// `machine` describes where it was trained. An existing release in `to` is replaced
/// only when the new one is better by [`MIN_GAIN`] test BLEU, or when `force`.
pub fn release<B: Backend>(
    from: &Path,
    to: &Path,
    test: &[Pair],
    machine: &str,
    force: bool,
    device: &B::Device,
) -> Result<ReleaseInfo, ReleaseError> {
    let source = RunDir::new(from);
    let (config, model) = source.load_model::<B>(device)?;
    let state = source.load_state().unwrap_or_default();
    let staging = to.with_extension("staging");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| write_error(&staging, e))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| write_error(&staging, e))?;
    let out = RunDir::new(&staging);
    out.save_config(&config)?;
    out.save_tokenizer(&source.load_tokenizer()?)?;
    out.save_state(&state)?;
    out.save_shipped_model(&model)?;
    // The shortlist ships too: the release is scored (below) and decodes with it.
    out.copy_from(
        &source,
        &[
            "metrics.jsonl",
            "history.jsonl",
            DECODING_FILE,
            SHORTLIST_FILE,
            PRUNE_FILE,
        ],
    )?;

    // Score what ships: the half-precision (or quantized) weights, reloaded.
    let (_, shipped) = out.load_model::<B>(device)?;
    let tokenizer = out.load_tokenizer()?;
    let tuned = out.load_tuned_decoding()?;
    let scores =
        evaluate_release_decodings(&shipped, &config.model, &tokenizer, tuned.as_ref(), test)?
            .into_iter()
            .map(|report| {
                tracing::info!("{}: test BLEU {:.2}", report.decoding, report.bleu);
                TestScore {
                    ms_per_sentence: 1000.0 * report.seconds / report.sentences.max(1) as f64,
                    decoding: report.decoding,
                    bleu: report.bleu,
                    chrf: report.chrf,
                    sentences: report.sentences,
                }
            })
            .collect();
    let info = describe(
        &config,
        &source,
        &state,
        &out,
        shipped.param_count(),
        scores,
        tuned,
        machine,
        to,
    )?;

    if let Some(old) = read_release(to)
        && !force
        && info.best_bleu() < old.best_bleu() + MIN_GAIN
    {
        std::fs::remove_dir_all(&staging).map_err(|e| write_error(&staging, e))?;
        return Err(ReleaseError::NotBetter {
            path: to.display().to_string(),
            old: old.best_bleu(),
            new: info.best_bleu(),
        });
    }
    let json = serde_json::to_vec_pretty(&info).expect("release info serializes");
    fsio::write_atomic(&out.path(RELEASE_FILE), &json)?;
    fsio::write_atomic(&out.path("TRAINING.md"), training_page(&info).as_bytes())?;
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(|e| write_error(to, e))?;
    }
    std::fs::rename(&staging, to).map_err(|e| write_error(to, e))?;
    if let Some(parent) = to.parent() {
        write_index(parent)?;
    }
    Ok(info)
}

fn write_error(path: &Path, source: std::io::Error) -> ReleaseError {
    paragen_data::DataError::write(path, source).into()
}

#[allow(clippy::too_many_arguments)]
fn describe(
    config: &RunConfig,
    source: &RunDir,
    state: &crate::TrainerState,
    out: &RunDir,
    params: usize,
    test: Vec<TestScore>,
    tuned_decoding: Option<TunedDecoding>,
    machine: &str,
    to: &Path,
) -> Result<ReleaseInfo, ReleaseError> {
    let shapes = config.transformer();
    let commands = source
        .read_json_lines("history.jsonl")?
        .iter()
        .filter_map(|h| h["argv"].as_array())
        .map(|argv| {
            let words: Vec<&str> = argv.iter().filter_map(|a| a.as_str()).collect();
            // The binary's own path says nothing about the training; `paragen` does.
            std::iter::once("paragen")
                .chain(words.iter().skip(1).copied())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let curve = source
        .read_json_lines("metrics.jsonl")?
        .iter()
        .filter_map(|m| {
            Some(CurvePoint {
                epoch: m["epoch"].as_u64()?,
                step: m["step"].as_u64()?,
                train_minutes: m["train_seconds"].as_f64()? / 60.0,
                valid_bleu: m["valid_bleu"].as_f64()?,
            })
        })
        .collect();
    let read_json = |name: &str| {
        std::fs::read(config.data_dir.join(name))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    };
    // A distilled directory says which teacher wrote its targets (`paragen distill`);
    // a prepared one, which corpus it split.
    let distilled = read_json("distill.json").map(|d| {
        format!(
            "`paragen distill` ({} of `{}`, {} training sentences, {:.0} minutes)",
            d["decoding"].as_str().unwrap_or("?"),
            d["teacher"].as_str().unwrap_or("?"),
            d["sentences"],
            d["seconds"].as_f64().unwrap_or(0.0) / 60.0
        )
    });
    let data_source = distilled.or_else(|| {
        read_json("prepare.json").map(|p| {
            format!(
                "{} ({} train / {} valid / {} test pairs, vocabulary {})",
                p["source"].as_str().unwrap_or("?"),
                p["train_pairs"],
                p["valid_pairs"],
                p["test_pairs"],
                p["vocab_size"]
            )
        })
    });
    Ok(ReleaseInfo {
        name: to
            .file_name()
            .map_or_else(|| to.display().to_string(), |n| n.to_string_lossy().into()),
        kind: config.kind.name().to_string(),
        preset: config.preset.clone(),
        params,
        file_bytes: std::fs::metadata(out.path("model.mpk")).map_or(0, |m| m.len()),
        quantized_bits: out.load_quantization()?.map(|q| q.bits),
        pruned: pruned_summary(out),
        encoder_layers: shapes.encoder_layers,
        decoder_layers: shapes.decoder_layers,
        d_model: shapes.d_model,
        dropout: shapes.dropout,
        // As the commands that made it name it: relative to where they ran, not this
        // machine's absolute path.
        data_dir: std::env::current_dir()
            .ok()
            .and_then(|cwd| pathdiff::diff_paths(&config.data_dir, cwd))
            .unwrap_or_else(|| config.data_dir.clone())
            .display()
            .to_string(),
        data_source,
        steps: state.step,
        epochs: state.epoch,
        train_minutes: state.train_seconds / 60.0,
        best_valid_bleu: state.best_bleu,
        best_epoch: state.best_epoch,
        test,
        commands,
        curve,
        tuned_decoding,
        ancestry: config
            .training
            .get("init_from")
            .and_then(|v| v.as_str())
            .map_or_else(Vec::new, |from| ancestry_of(Path::new(from), source.root())),
        source_run: source.root().display().to_string(),
        machine: machine.to_string(),
        paragen_version: config.paragen_version.clone(),
    })
}

/// `heads a -> b, feed-forward neurons c -> d, layers e -> f` from a run's
/// `prune.json`, or `None` when it has none (or one this version cannot read).
fn pruned_summary(run: &RunDir) -> Option<String> {
    let record: serde_json::Value = run.read_json(PRUNE_FILE).ok()?;
    let counts = |key: &str, what: &str| {
        let c = &record[key];
        Some(format!(
            "{what} {} -> {}",
            c["before"].as_u64()?,
            c["after"].as_u64()?
        ))
    };
    Some(
        [
            counts("heads", "heads")?,
            counts("neurons", "feed-forward neurons")?,
            counts("layers", "layers")?,
        ]
        .join(", "),
    )
}

/// One release scored live on a test split (what `paragen demo` shows).
pub struct ScoredRelease {
    pub name: String,
    pub kind: String,
    pub params: usize,
    pub reports: Vec<crate::translate::EvalReport>,
}

/// Scores every release (a run directory with a `release.json`, or any run directory)
/// under `dir` on `test` with its release decodings, teachers first.
pub fn score_releases<B: Backend>(
    dir: &Path,
    test: &[Pair],
    device: &B::Device,
) -> Result<Vec<ScoredRelease>, ReleaseError> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| write_error(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("run.json").exists())
        .collect();
    runs.sort();
    let mut out = Vec::new();
    for path in runs {
        let run = RunDir::new(&path);
        let (config, model) = run.load_model::<B>(device)?;
        let tokenizer = run.load_tokenizer()?;
        let tuned = run.load_tuned_decoding()?;
        let reports =
            evaluate_release_decodings(&model, &config.model, &tokenizer, tuned.as_ref(), test)?;
        out.push(ScoredRelease {
            name: path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into()),
            kind: config.kind.name().to_string(),
            params: model.param_count(),
            reports,
        });
    }
    out.sort_by_key(|r| match r.kind.as_str() {
        "ar" => 0,
        "ar-shallow" => 1,
        _ => 2,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use paragen_backend::TestBackend;
    use paragen_data::Tokenizer;
    use paragen_models::{Transformer, TransformerConfig};

    type B = TestBackend;

    fn pairs() -> Vec<Pair> {
        [
            "In the beginning God created the heaven",
            "And the earth was without form",
        ]
        .iter()
        .enumerate()
        .map(|(i, s)| Pair {
            id: i.to_string(),
            src: s.to_string(),
            tgt: s.to_lowercase(),
        })
        .collect()
    }

    /// A tiny AR run with a history, metrics and progress, as training leaves one.
    fn trained_run(dir: &Path) -> RunDir {
        let texts: Vec<String> = pairs()
            .iter()
            .flat_map(|p| [p.src.clone(), p.tgt.clone()])
            .collect();
        let tokenizer = Tokenizer::train(texts.iter().map(|s| s.as_str()), 80).unwrap();
        let run = RunDir::new(dir);
        let config = RunConfig {
            kind: crate::ModelKind::Ar,
            preset: "tiny".into(),
            model: ModelConfig::Ar(TransformerConfig::tiny(
                tokenizer.vocab_size(),
                tokenizer.special(),
            )),
            data_dir: dir.join("no-data"),
            paragen_version: "test".into(),
            training: crate::TrainingJson::new(),
        };
        let model = Transformer::<B>::new(config.transformer(), &Default::default()).unwrap();
        run.save_config(&config).unwrap();
        run.save_tokenizer(&tokenizer).unwrap();
        run.save_module::<B, _>("model.mpk", &model).unwrap();
        run.save_state(&crate::TrainerState {
            step: 12,
            epoch: 2,
            best_bleu: Some(1.5),
            best_epoch: Some(2),
            train_seconds: 120.0,
        })
        .unwrap();
        run.append_history(&["target/release/paragen".into(), "train-teacher".into()])
            .unwrap();
        run.append_metrics(
            &serde_json::json!({"epoch": 1, "step": 6, "train_seconds": 60.0, "valid_bleu": 0.5}),
        )
        .unwrap();
        run
    }

    #[test]
    fn a_release_is_half_size_scored_documented_and_replaced_only_when_better() {
        let dir = tempfile::tempdir().unwrap();
        let source = trained_run(&dir.path().join("run"));
        let models = dir.path().join("models");
        let to = models.join("teacher");
        let device = Default::default();
        let info =
            release::<B>(source.root(), &to, &pairs(), "test machine", false, &device).unwrap();
        let full = std::fs::metadata(source.path("model.mpk")).unwrap().len();
        assert!(
            info.file_bytes * 10 < full * 6,
            "{} vs {full}",
            info.file_bytes
        );
        let decodings: Vec<&str> = info.test.iter().map(|t| t.decoding.as_str()).collect();
        assert_eq!(decodings, ["greedy", "beam4"]);
        assert_eq!((info.steps, info.epochs, info.commands.len()), (12, 2, 1));
        assert_eq!(info.commands[0], "paragen train-teacher");
        assert_eq!(info.curve.len(), 1);
        // What ships is a run directory every command reads, without optimizer state.
        let (_, _) = RunDir::new(&to).load_model::<B>(&device).unwrap();
        assert!(!to.join("optimizer.mpk").exists());
        let page = std::fs::read_to_string(to.join("TRAINING.md")).unwrap();
        assert!(
            page.contains("paragen train-teacher") && page.contains("| greedy |"),
            "{page}"
        );
        let index = std::fs::read_to_string(models.join("README.md")).unwrap();
        assert!(index.contains("[teacher](teacher/TRAINING.md)"), "{index}");

        // The same model again is not 0.5 BLEU better: refused, the release kept.
        let err = release::<B>(source.root(), &to, &pairs(), "m", false, &device).unwrap_err();
        assert!(matches!(err, ReleaseError::NotBetter { .. }), "{err}");
        assert!(err.to_string().contains("--force"));
        assert!(to.join("release.json").exists() && !to.with_extension("staging").exists());
        release::<B>(source.root(), &to, &pairs(), "m", true, &device).unwrap();
    }

    #[test]
    fn a_release_continued_from_another_tells_the_whole_training() {
        let dir = tempfile::tempdir().unwrap();
        let device = Default::default();
        let to = dir.path().join("models").join("teacher");
        let first = trained_run(&dir.path().join("first"));
        release::<B>(first.root(), &to, &pairs(), "m", false, &device).unwrap();

        // A second run initialized from that release, released into its place.
        let second = trained_run(&dir.path().join("second"));
        let mut config: RunConfig = second.load_config().unwrap();
        config
            .training
            .insert("init_from".into(), to.display().to_string().into());
        second.save_config(&config).unwrap();
        let info = release::<B>(second.root(), &to, &pairs(), "m", true, &device).unwrap();
        assert_eq!(info.ancestry.len(), 1);
        assert_eq!(info.ancestry[0].source, to.display().to_string());
        assert_eq!((info.total_steps(), info.total_train_minutes()), (24, 4.0));
        let page = std::fs::read_to_string(to.join("TRAINING.md")).unwrap();
        assert!(
            page.contains("in all 24 steps, 4 minutes")
                && page.contains("# the run released as")
                && page.matches("\nparagen train-teacher\n").count() == 2,
            "{page}"
        );
        let index = std::fs::read_to_string(to.parent().unwrap().join("README.md")).unwrap();
        assert!(index.contains("24 steps, 4 min"), "{index}");

        // Trained on and released again into the same place: its earlier release is
        // itself, not an ancestor.
        let again = release::<B>(second.root(), &to, &pairs(), "m", true, &device).unwrap();
        assert_eq!(again.ancestry, info.ancestry);
    }
}
