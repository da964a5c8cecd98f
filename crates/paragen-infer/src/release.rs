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

use crate::run_dir::{CheckpointError, ModelConfig, RunConfig, RunDir};
use crate::translate::{Decoding, Model, TranslateError, Translator, evaluate};

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

/// What `release.json` records of a release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    pub name: String,
    pub kind: String,
    pub preset: String,
    pub params: usize,
    pub file_bytes: u64,
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
    pub source_run: String,
    pub machine: String,
    pub paragen_version: String,
}

impl ReleaseInfo {
    /// The best test BLEU of any decoding.
    pub fn best_bleu(&self) -> f64 {
        self.test.iter().map(|t| t.bleu).fold(0.0, f64::max)
    }
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
/// models, one pass and mask-predict 10 for a CMLM student, one pass for CTC.
pub fn release_decodings(model: &ModelConfig) -> Vec<Decoding> {
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
            NatDecoder::Ctc { .. } => vec![Decoding::Nat(NatDecoding::default())],
        },
    }
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
    match &model {
        Model::Ar(m) => out.save_module_half::<B, _>("model.mpk", m)?,
        Model::Nat(m) => out.save_module_half::<B, _>("model.mpk", m)?,
    }
    for file in ["metrics.jsonl", "history.jsonl"] {
        if source.path(file).exists() {
            let bytes = fsio::read_file(&source.path(file))?;
            fsio::write_atomic(&out.path(file), &bytes)?;
        }
    }

    // Score what ships: the half-precision weights, reloaded.
    let (_, shipped) = out.load_model::<B>(device)?;
    let tokenizer = out.load_tokenizer()?;
    let mut scores = Vec::new();
    for decoding in release_decodings(&config.model) {
        let translator = Translator {
            model: &shipped,
            decoding,
            rescorer: None,
        };
        let report = evaluate(&translator, &tokenizer, test, 64, true)?;
        tracing::info!("{}: test BLEU {:.2}", report.decoding, report.bleu);
        scores.push(TestScore {
            decoding: report.decoding,
            bleu: report.bleu,
            chrf: report.chrf,
            sentences: report.sentences,
            ms_per_sentence: 1000.0 * report.seconds / report.sentences.max(1) as f64,
        });
    }
    let info = describe(
        &config,
        &source,
        &state,
        &out,
        shipped.param_count(),
        scores,
        machine,
        to,
    )?;

    let old = std::fs::read(to.join("release.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<ReleaseInfo>(&b).ok());
    if let Some(old) = old
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
    fsio::write_atomic(&out.path("release.json"), &json)?;
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
        source_run: source.root().display().to_string(),
        machine: machine.to_string(),
        paragen_version: config.paragen_version.clone(),
    })
}

/// `TRAINING.md` of a release, generated from its `release.json`.
pub fn training_page(info: &ReleaseInfo) -> String {
    let mut page = format!(
        "# {name}: how it was made\n\n\
         Generated by `paragen release` from the run's own files; do not edit.\n\n\
         - model: {kind} (preset {preset}), {enc}+{dec} layers, d_model {d}, dropout {drop}, \
         {params} parameters, `model.mpk` {mb:.1} MB (half precision)\n\
         - data: `{data}`{source}\n\
         - training: {steps} steps, {epochs} epochs, {minutes:.0} minutes of training \
         (best valid BLEU {best} at epoch {best_epoch}) on {machine}\n\
         - released from `{run}` by paragen {version}\n\n\
         ## Test split\n\n\
         | decoding | BLEU | chrF | sentences | ms/sentence (batch 64) |\n\
         |---|---:|---:|---:|---:|\n",
        name = info.name,
        kind = info.kind,
        preset = info.preset,
        enc = info.encoder_layers,
        dec = info.decoder_layers,
        d = info.d_model,
        drop = info.dropout,
        params = info.params,
        mb = info.file_bytes as f64 / 1e6,
        data = info.data_dir,
        source = info
            .data_source
            .as_ref()
            .map_or(String::new(), |s| format!(", from {s}")),
        steps = info.steps,
        epochs = info.epochs,
        minutes = info.train_minutes,
        best = info
            .best_valid_bleu
            .map_or("-".into(), |b| format!("{b:.2}")),
        best_epoch = info.best_epoch.map_or("-".into(), |e| e.to_string()),
        machine = info.machine,
        run = info.source_run,
        version = info.paragen_version,
    );
    for t in &info.test {
        page.push_str(&format!(
            "| {} | {:.2} | {:.2} | {} | {:.2} |\n",
            t.decoding, t.bleu, t.chrf, t.sentences, t.ms_per_sentence
        ));
    }
    page.push_str("\n## Commands\n\n");
    if info.commands.is_empty() {
        page.push_str(
            "Not recorded: the run predates `history.jsonl`. Its options are in `run.json`.\n",
        );
    } else {
        if info.commands[0].contains("--resume") {
            page.push_str(
                "The first invocations of this run predate `history.jsonl`; these are the \
                 ones recorded since. The run's options are in `run.json`.\n\n",
            );
        }
        page.push_str("```sh\n");
        for c in &info.commands {
            page.push_str(c);
            page.push('\n');
        }
        page.push_str("```\n");
    }
    page.push_str(
        "\n## Validation curve\n\n| epoch | step | minutes | valid BLEU |\n|---:|---:|---:|---:|\n",
    );
    for p in &info.curve {
        page.push_str(&format!(
            "| {} | {} | {:.1} | {:.2} |\n",
            p.epoch, p.step, p.train_minutes, p.valid_bleu
        ));
    }
    page.push_str(
        "\nContinue training it with `paragen train-teacher|train-student --init-from <this \
         directory> ...` (weights only; the optimizer starts fresh).\n",
    );
    page
}

/// Regenerates `dir/README.md`: one line per release found in `dir`.
pub fn write_index(dir: &Path) -> Result<(), ReleaseError> {
    let mut releases: Vec<(PathBuf, ReleaseInfo)> = std::fs::read_dir(dir)
        .map_err(|e| write_error(dir, e))?
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let bytes = std::fs::read(path.join("release.json")).ok()?;
            Some((path, serde_json::from_slice(&bytes).ok()?))
        })
        .collect();
    releases.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    let mut page = String::from(
        "# Release models\n\n\
         Generated by `paragen release`; each directory is a run directory that every \
         command reads (`paragen eval --model models/NAME`), and its `TRAINING.md` says \
         how it was made.\n\n\
         | model | kind | layers | params | MB | trained | test BLEU |\n\
         |---|---|---|---:|---:|---|---|\n",
    );
    for (_, r) in &releases {
        let scores: Vec<String> = r
            .test
            .iter()
            .map(|t| format!("{} {:.2}", t.decoding, t.bleu))
            .collect();
        page.push_str(&format!(
            "| [{name}]({name}/TRAINING.md) | {} | {}+{} | {:.2}M | {:.1} | {} steps, {:.0} min | {} |\n",
            r.kind,
            r.encoder_layers,
            r.decoder_layers,
            r.params as f64 / 1e6,
            r.file_bytes as f64 / 1e6,
            r.steps,
            r.train_minutes,
            scores.join(", "),
            name = r.name,
        ));
    }
    fsio::write_atomic(&dir.join("README.md"), page.as_bytes())?;
    Ok(())
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
        let mut reports = Vec::new();
        for decoding in release_decodings(&config.model) {
            let translator = Translator {
                model: &model,
                decoding,
                rescorer: None,
            };
            reports.push(evaluate(&translator, &tokenizer, test, 64, true)?);
        }
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
}
