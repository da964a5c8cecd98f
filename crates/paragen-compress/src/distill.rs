//! Knowledge distillation: sequence-level (a teacher-decoded corpus) and word-level (a
//! KD loss against the teacher's softened distribution).
//!
//! NAT students learn far better from a teacher's output than from human references
//! (Zhou et al. 2020): the teacher's translations are less diverse ("less
//! multi-modal"), so a model that predicts every position independently has one mode to
//! hit instead of many.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use paragen_data::batch::Example;
use paragen_data::{DataError, Pair, PreparedData, Seq2SeqBatch, Split, Tokenizer, fsio};
use paragen_infer::progress::Progress;
use paragen_infer::translate::{Decoding, Model, TranslateError, Translator, translate_ids};
use paragen_models::Transformer;
use paragen_models::loss::label_smoothed_cross_entropy;
use paragen_train::objective::Objective;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// Errors of distillation.
#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Translate(#[from] TranslateError),
    #[error(transparent)]
    Tokenizer(#[from] paragen_data::TokenizerError),
    #[error("cannot write `{path}`: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`{path}` line {line} holds pair `{found}` where `{expected}` was expected: it was \
         made from another corpus or limit; delete it to start over"
    )]
    ForeignPartial {
        path: String,
        line: usize,
        found: String,
        expected: String,
    },
    #[error(
        "`{path}` was started with {recorded}, and this call asks for {asked}: repeat the \
         first call's options to continue it, or delete `{path}` to start over"
    )]
    OptionsChanged {
        path: String,
        recorded: String,
        asked: String,
    },
    #[error(transparent)]
    Run(#[from] paragen_infer::CheckpointError),
}

/// How the teacher decodes the training split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistillOptions {
    /// Teacher search (beam search is the classic choice: Kim & Rush 2016).
    pub decoding: Decoding,
    /// Sentences decoded together.
    pub batch_size: usize,
    /// Distill only the first `limit` training pairs.
    pub limit: Option<usize>,
    /// Sentences between two appends to the partial file (the resume granularity).
    pub chunk_sentences: usize,
}

/// What a distillation did, saved as `distill.json` in the output directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DistillReport {
    pub teacher: String,
    pub decoding: String,
    /// Training pairs in the distilled corpus.
    pub sentences: usize,
    /// Pairs decoded by an earlier, interrupted invocation.
    pub resumed_from: usize,
    /// Pairs that kept their human reference because the teacher wrote nothing.
    pub kept_reference: usize,
    /// Seconds this invocation spent decoding.
    pub seconds: f64,
}

const PARTIAL: &str = "train.tsv.partial";
/// What the partial file was started with: a resumed call must ask for the same, or one
/// file would mix two teachers' outputs while `distill.json` names only the last.
const PARTIAL_OPTIONS: &str = "train.tsv.partial.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct PartialOptions {
    teacher: String,
    decoding: String,
    limit: Option<usize>,
    data: String,
}

impl std::fmt::Display for PartialOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "teacher `{}`, {}, data `{}`, limit {}",
            self.teacher,
            self.decoding,
            self.data,
            self.limit.map_or("none".into(), |l| l.to_string())
        )
    }
}

/// Records the options of a new partial file, or checks a resumed call against them.
fn check_partial_options(out: &Path, asked: &PartialOptions) -> Result<(), DistillError> {
    let path = out.join(PARTIAL_OPTIONS);
    if !out.join(PARTIAL).exists() {
        let json = serde_json::to_vec_pretty(asked).expect("options serialize");
        return Ok(fsio::write_atomic(&path, &json)?);
    }
    // A partial file of a version before this record is taken as it is.
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(());
    };
    let recorded = match serde_json::from_slice::<PartialOptions>(&bytes) {
        Ok(recorded) if &recorded == asked => return Ok(()),
        Ok(recorded) => recorded.to_string(),
        Err(e) => format!("options that cannot be read back ({e})"),
    };
    Err(DistillError::OptionsChanged {
        path: out.join(PARTIAL).display().to_string(),
        recorded,
        asked: asked.to_string(),
    })
}

/// Decodes the training split of `data` with `teacher` into `out`, a prepared-data
/// directory whose `train.tsv` has the teacher's translations as targets (valid and
/// test splits and the tokenizer are copied unchanged, so students are scored against
/// human references).
///
/// Resumable: finished chunks are appended to `train.tsv.partial`, and a new call
/// continues after the last complete line. Deterministic: the same teacher and options
/// give the same file.
pub fn distill_corpus<B: Backend>(
    teacher: &Transformer<B>,
    teacher_name: &str,
    tokenizer: &Tokenizer,
    data: &PreparedData,
    out: &Path,
    options: &DistillOptions,
) -> Result<DistillReport, DistillError> {
    let write_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| DistillError::Write { path, source }
    };
    std::fs::create_dir_all(out).map_err(write_err(out))?;
    // One writer per output directory, as for a training run.
    let _lock = paragen_infer::RunDir::new(out).lock()?;
    let model = Model::Ar(teacher.clone());
    let translator = Translator {
        model: &model,
        decoding: options.decoding,
        rescorer: None,
    };
    check_partial_options(
        out,
        &PartialOptions {
            teacher: teacher_name.to_string(),
            decoding: translator.name(),
            limit: options.limit,
            data: data.dir.display().to_string(),
        },
    )?;
    let mut pairs = data.pairs(Split::Train)?;
    if let Some(limit) = options.limit {
        pairs.truncate(limit);
    }
    let partial = out.join(PARTIAL);
    let done = completed_lines(&partial, &pairs)?;
    if done > 0 {
        tracing::info!(
            "resuming distillation after {done} of {} pairs",
            pairs.len()
        );
    }
    let max_positions = teacher.config().max_positions;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .map_err(write_err(&partial))?;
    let mut progress = Progress::new("distilling", (pairs.len() - done) as u64, "sentences");
    let started = Instant::now();
    let mut kept_reference = 0;
    for chunk in pairs[done..].chunks(options.chunk_sentences.max(1)) {
        let texts: Vec<&str> = chunk.iter().map(|p| p.src.as_str()).collect();
        let sources = tokenizer.encode_batch(&texts)?;
        // Sentences the teacher cannot take keep their reference instead of failing
        // the whole run.
        let fits: Vec<usize> = (0..chunk.len())
            .filter(|&i| !sources[i].is_empty() && sources[i].len() <= max_positions)
            .collect();
        let fitting: Vec<Vec<u32>> = fits.iter().map(|&i| sources[i].clone()).collect();
        let decoded = translate_ids(&translator, &fitting, options.batch_size, false)?;
        let mut outputs: Vec<Option<Vec<u32>>> = vec![None; chunk.len()];
        for (&i, ids) in fits.iter().zip(decoded) {
            outputs[i] = Some(ids);
        }
        let mut text = String::new();
        for (pair, output) in chunk.iter().zip(outputs) {
            let hypothesis = match output {
                Some(ids) => tokenizer.decode(&ids)?,
                None => String::new(),
            };
            let target = if hypothesis.trim().is_empty() {
                kept_reference += 1;
                pair.tgt.as_str()
            } else {
                hypothesis.trim()
            };
            text.push_str(&format!("{}\t{}\t{}\n", pair.id, pair.src, target));
        }
        file.write_all(text.as_bytes())
            .and_then(|_| file.sync_data())
            .map_err(write_err(&partial))?;
        progress.advance(chunk.len() as u64, String::new);
    }
    progress.finish();
    drop(file);
    let seconds = started.elapsed().as_secs_f64();

    for split in [Split::Valid, Split::Test] {
        let from = data.split_path(split);
        let name = from.file_name().expect("a split file has a name");
        copy(&from, &out.join(name))?;
    }
    copy(
        &data.dir.join("tokenizer.json"),
        &out.join("tokenizer.json"),
    )?;
    let report = DistillReport {
        teacher: teacher_name.to_string(),
        decoding: translator.name(),
        sentences: pairs.len(),
        resumed_from: done,
        kept_reference,
        seconds,
    };
    let json = serde_json::to_vec_pretty(&report).expect("report serializes");
    fsio::write_atomic(&out.join("distill.json"), &json)?;
    let train = out.join("train.tsv");
    std::fs::rename(&partial, &train).map_err(write_err(&train))?;
    let options_file = out.join(PARTIAL_OPTIONS);
    std::fs::remove_file(&options_file).map_err(write_err(&options_file))?;
    Ok(report)
}

/// Copies a file atomically.
fn copy(from: &Path, to: &Path) -> Result<(), DistillError> {
    Ok(fsio::write_atomic(to, &fsio::read_file(from)?)?)
}

/// Number of complete lines in the partial file (0 when absent), after checking that
/// they belong to `pairs` and cutting off a line an interruption left unfinished.
fn completed_lines(partial: &Path, pairs: &[Pair]) -> Result<usize, DistillError> {
    if !partial.exists() {
        return Ok(0);
    }
    let read_err = |source| DataError::Read {
        path: partial.display().to_string(),
        source,
    };
    let bytes = std::fs::read(partial).map_err(read_err)?;
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(partial)
            .map_err(read_err)?;
        file.set_len(complete as u64).map_err(read_err)?;
    }
    let mut count = 0;
    for (i, line) in bytes[..complete].lines().enumerate() {
        let line = line.map_err(read_err)?;
        let id = line.split('\t').next().unwrap_or_default();
        let expected = pairs
            .get(i)
            .map_or("(nothing: more lines than pairs)", |p| p.id.as_str());
        if id != expected {
            return Err(DistillError::ForeignPartial {
                path: partial.display().to_string(),
                line: i + 1,
                found: id.to_string(),
                expected: expected.to_string(),
            });
        }
        count += 1;
    }
    Ok(count)
}

/// Word-level KD loss (Hinton et al. 2015; Kim & Rush 2016):
/// `(1 - weight) x label-smoothed CE + weight x T^2 x KL(teacher_T || student_T)`,
/// averaged over non-pad target positions, where `_T` is a softmax at temperature `T`.
/// The `T^2` keeps the gradient scale of the soft term independent of `T`.
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[batch, time, vocab]`; `targets`:
///   `[batch, time]`; returns a scalar `[1]`.
pub fn word_kd_loss<B: Backend>(
    student_logits: Tensor<B, 3>,
    teacher_logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    pad: u32,
    temperature: f64,
    weight: f64,
    label_smoothing: f64,
) -> Tensor<B, 1> {
    let hard = label_smoothed_cross_entropy(
        student_logits.clone(),
        targets.clone(),
        pad,
        label_smoothing,
    );
    let teacher_log_probs = log_softmax(teacher_logits / temperature, 2);
    let teacher_probs = softmax(teacher_log_probs.clone(), 2);
    let student_log_probs = log_softmax(student_logits / temperature, 2);
    let kl = (teacher_probs * (teacher_log_probs - student_log_probs))
        .sum_dim(2)
        .squeeze_dim::<2>(2);
    let keep = targets.not_equal_elem(pad as i64).float();
    let count = keep.clone().sum().clamp_min(1.0);
    let soft = (kl * keep).sum() / count * (temperature * temperature);
    hard * (1.0 - weight) + soft * weight
}

/// Word-level KD as a training objective for an AR student of the same vocabulary.
#[derive(Clone, Debug)]
pub struct WordKd<B: Backend> {
    teacher: Transformer<B>,
    pub temperature: f64,
    pub weight: f64,
    pub label_smoothing: f64,
}

impl<B: Backend> WordKd<B> {
    /// The teacher's parameters are frozen: no gradient is recorded for them.
    pub fn new(
        teacher: Transformer<B>,
        temperature: f64,
        weight: f64,
        label_smoothing: f64,
    ) -> Self {
        Self {
            teacher: teacher.no_grad(),
            temperature,
            weight,
            label_smoothing,
        }
    }
}

impl<B: Backend> Objective<B, Transformer<B>> for WordKd<B> {
    fn loss(&self, model: &Transformer<B>, batch: &[&Example], _rng: &mut StdRng) -> Tensor<B, 1> {
        let special = model.config().special;
        let b = Seq2SeqBatch::<B>::new(batch, special, &model.device());
        let teacher_logits = self
            .teacher
            .forward(b.src.clone(), b.tgt_in.clone())
            .detach();
        word_kd_loss(
            model.forward(b.src, b.tgt_in),
            teacher_logits,
            b.tgt_out,
            special.pad,
            self.temperature,
            self.weight,
            self.label_smoothing,
        )
    }
}

/// The distilled-data directory a teacher run writes by default: `<teacher>-distilled`
/// beside the teacher.
pub fn default_output(teacher_dir: &Path) -> PathBuf {
    let name = teacher_dir
        .file_name()
        .map_or("teacher".into(), |n| n.to_string_lossy().into_owned());
    teacher_dir.with_file_name(format!("{name}-distilled"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use paragen_backend::TestBackend;
    use paragen_data::SplitConfig;
    use paragen_models::{LengthLimit, TransformerConfig};

    type B = TestBackend;

    #[test]
    fn kd_loss_is_the_cross_entropy_when_student_equals_teacher() {
        let device = Default::default();
        let logits = Tensor::<B, 3>::from_data(
            TensorData::from([[[0.0f32, 1.0, 2.0], [1.0, -1.0, 0.5]]]),
            &device,
        );
        let targets = Tensor::<B, 2, Int>::from_data(TensorData::from([[2i64, 0]]), &device);
        let ce =
            label_smoothed_cross_entropy(logits.clone(), targets.clone(), 0, 0.1).into_scalar();
        let kd = word_kd_loss(logits.clone(), logits, targets, 0, 2.0, 0.5, 0.1).into_scalar();
        assert!((kd - 0.5 * ce).abs() < 1e-5, "{kd} vs {}", 0.5 * ce);
    }

    #[test]
    fn kd_loss_matches_a_hand_computed_kl() {
        let device = Default::default();
        // One scored position; student logits [0, 0] (p = 1/2, 1/2), teacher [ln 3, 0]
        // (p = 3/4, 1/4), T = 1, weight 1: KL = 3/4 ln(3/2) + 1/4 ln(1/2).
        let student = Tensor::<B, 3>::from_data(TensorData::from([[[0.0f32, 0.0]]]), &device);
        let teacher = Tensor::<B, 3>::from_data(TensorData::from([[[3f32.ln(), 0.0]]]), &device);
        let targets = Tensor::<B, 2, Int>::from_data(TensorData::from([[1i64]]), &device);
        let kd = word_kd_loss(student, teacher, targets, 0, 1.0, 1.0, 0.0).into_scalar();
        let expect = 0.75 * 1.5f32.ln() + 0.25 * 0.5f32.ln();
        assert!((kd - expect).abs() < 1e-5, "{kd} vs {expect}");
    }

    fn tiny_data(dir: &Path) -> PreparedData {
        let corpus = dir.join("c.tsv");
        let lines: String = (0..120)
            .map(|i| format!("{i}\tthe verse number {i} speaks\tle verset numéro {i} parle\n"))
            .collect();
        std::fs::write(&corpus, lines).unwrap();
        let out = dir.join("prepared");
        paragen_data::prepare(
            &paragen_data::CorpusSource::Tsv(corpus),
            &out,
            100,
            SplitConfig::default(),
            paragen_data::MalformedLines::Error,
        )
        .unwrap();
        PreparedData::new(out)
    }

    fn teacher(tokenizer: &Tokenizer, seed: u64) -> Transformer<B> {
        B::seed(&Default::default(), seed);
        let config = TransformerConfig {
            max_positions: 64,
            ..TransformerConfig::tiny(tokenizer.vocab_size(), tokenizer.special())
        };
        Transformer::new(&config, &Default::default()).unwrap()
    }

    fn options(chunk: usize) -> DistillOptions {
        DistillOptions {
            decoding: Decoding::Greedy(LengthLimit {
                ratio: 1.0,
                extra: 3,
            }),
            batch_size: 8,
            limit: Some(40),
            chunk_sentences: chunk,
        }
    }

    #[test]
    fn distillation_is_deterministic_and_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let data = tiny_data(dir.path());
        let tokenizer = data.tokenizer().unwrap();
        let model = teacher(&tokenizer, 3);
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let report = distill_corpus(&model, "t", &tokenizer, &data, &a, &options(16)).unwrap();
        assert_eq!(report.sentences, 40);
        let first = std::fs::read_to_string(a.join("train.tsv")).unwrap();
        assert_eq!(first.lines().count(), 40);
        // The same teacher, rebuilt from the same seed, writes the same corpus.
        distill_corpus(
            &teacher(&tokenizer, 3),
            "t",
            &tokenizer,
            &data,
            &b,
            &options(7),
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(b.join("train.tsv")).unwrap(), first);

        // An interrupted run: 10 complete lines and half of the 11th.
        let c = dir.path().join("c");
        std::fs::create_dir_all(&c).unwrap();
        let mut partial: String = first.lines().take(10).map(|l| format!("{l}\n")).collect();
        partial.push_str(&first.lines().nth(10).unwrap()[..3]);
        std::fs::write(c.join(PARTIAL), partial).unwrap();
        // Resumed with other options, it would mix two kinds of output in one file.
        let other = DistillOptions {
            limit: Some(30),
            ..options(16)
        };
        let recorded = PartialOptions {
            teacher: "t".into(),
            decoding: "greedy".into(),
            limit: Some(40),
            data: data.dir.display().to_string(),
        };
        std::fs::write(
            c.join(PARTIAL_OPTIONS),
            serde_json::to_vec(&recorded).unwrap(),
        )
        .unwrap();
        for (name, asked) in [("t", &other), ("u", &options(16))] {
            let err = distill_corpus(&model, name, &tokenizer, &data, &c, asked)
                .unwrap_err()
                .to_string();
            assert!(err.contains("repeat the first call's options"), "{err}");
        }
        let resumed = distill_corpus(&model, "t", &tokenizer, &data, &c, &options(16)).unwrap();
        assert_eq!(resumed.resumed_from, 10);
        assert_eq!(std::fs::read_to_string(c.join("train.tsv")).unwrap(), first);
        // The distilled directory is a prepared-data directory students can train on.
        let distilled = PreparedData::new(&c);
        assert_eq!(distilled.pairs(Split::Train).unwrap().len(), 40);
        assert_eq!(
            distilled.pairs(Split::Test).unwrap(),
            data.pairs(Split::Test).unwrap()
        );
    }

    #[test]
    fn a_partial_file_from_another_corpus_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = tiny_data(dir.path());
        let tokenizer = data.tokenizer().unwrap();
        let out = dir.path().join("d");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join(PARTIAL), "not-an-id\tx\ty\n").unwrap();
        let err = distill_corpus(
            &teacher(&tokenizer, 1),
            "t",
            &tokenizer,
            &data,
            &out,
            &options(8),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("not-an-id") && err.contains("delete it"),
            "{err}"
        );
    }
}
