//! Command-line arguments, parsed with clap and validated into the libraries' types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod compress;
mod serve;
pub use compress::{CompressArgs, PruneArgs, PruneOptions, QuantizeArgs, ShortlistArgs};
pub use serve::ServeArgs;

#[derive(Parser)]
#[command(
    name = "paragen",
    version,
    about = "Fast text generation: train an autoregressive Transformer teacher on parallel text, \
             distill it into a non-autoregressive student that writes every token at once, \
             then translate and evaluate (BLEU and chrF as sacrebleu computes them).",
    after_help = "See the shipped release models translate (English to French):\n  \
                  paragen demo\n\n\
                  Train from scratch on the shipped corpus:\n  \
                  paragen pipeline --preset quick\n\n\
                  Step by step:\n  \
                  paragen prepare --out work/data\n  \
                  paragen train-teacher --data work/data --out work/teacher --preset quick\n  \
                  paragen eval --model work/teacher\n  \
                  echo 'God is love.' | paragen translate --model work/teacher --beam 4\n\n\
                  Distill into a NAT student:\n  \
                  paragen distill --teacher work/teacher --out work/distilled\n  \
                  paragen train-student --kind nat --data work/distilled --teacher work/teacher \\\n      \
                  --init-from-teacher --out work/nat\n  \
                  paragen eval --model work/nat --iterations 4 --length-beam 3"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct GlobalArgs {
    /// Backend to run on: flex or ndarray (CPU), wgpu or cuda (GPU, when compiled in
    /// with `--features wgpu|cuda`). flex is the CPU default: it trains fastest here.
    #[arg(long, global = true, default_value = paragen_backend::DEFAULT_CPU_BACKEND.name(), env = "PARAGEN_BACKEND")]
    pub backend: String,
    /// Device index on the backend (GPU number; 0 on the CPU).
    #[arg(long, global = true, default_value_t = 0)]
    pub device: usize,
    /// CPU threads for the ndarray/flex backends (default: one per core). On 2-core
    /// machines, 1 thread is often faster for batch-1 decoding.
    #[arg(long, global = true, value_parser = in_range(1, 256))]
    pub threads: Option<usize>,
    /// Only print warnings and errors.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Print debug logs.
    #[arg(long, short, global = true, conflicts_with = "quiet")]
    pub verbose: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Split a parallel corpus into train/valid/test and train the BPE tokenizer.
    Prepare(PrepareArgs),
    /// Train the autoregressive Transformer teacher.
    TrainTeacher(TrainArgs),
    /// Decode the training split with the teacher (sequence-level KD) into a new
    /// prepared-data directory for students; resumable.
    Distill(DistillArgs),
    /// Train a student (NAT or shallow-decoder AR) on distilled data.
    TrainStudent(TrainStudentArgs),
    /// Translate sentences (one per line) from a file or stdin to stdout.
    Translate(TranslateArgs),
    /// Translate a split of the prepared data and print BLEU and chrF.
    Eval(EvalArgs),
    /// Tune a CTC student's decoding on the valid split: try blank penalties, keep the
    /// best in the run's `decoding.json`, which later commands use by default.
    Tune(TuneArgs),
    /// Learn a lexical shortlist for a NAT student from its training pairs and write a
    /// copy of the run that decodes onto it: the output projection then covers only the
    /// target tokens a batch's source tokens translate to, plus the most frequent ones.
    Shortlist(ShortlistArgs),
    /// Quantize a run's attention and feed-forward weights to int8 (or int4) and write
    /// a copy of the run that every command reads: about 2x smaller than the f16
    /// release files, and on x86 CPUs the products run in integers (AVX-512 VNNI where
    /// the CPU has it).
    Quantize(QuantizeArgs),
    /// Prune a float run structurally: remove the least important attention heads and
    /// feed-forward neurons (and chosen layers), so that its matrices are smaller, then
    /// fine-tune it to recover (word-level KD from the unpruned model for AR models).
    Prune(PruneArgs),
    /// The smallest fast copy of a trained model in one go: prune it and fine-tune it to
    /// recover (e.g. `--heads 0.3 --ffn 0.3 --recover-minutes 60`), quantize it (`--bits
    /// 8`), and give a NAT student its lexical shortlist; every step's run is kept under
    /// --out, and the last one is the model to use.
    Compress(CompressArgs),
    /// Show the shipped release models: evaluate every model in `models/` on the test
    /// split and print BLEU, chrF and speed side by side, with example translations.
    Demo(DemoArgs),
    /// Train from scratch: prepare, train the quick teacher, evaluate on the test split.
    Pipeline(PipelineArgs),
    /// Make a release model of a run: half-precision weights, test scores and a
    /// generated TRAINING.md; replaces an older release only if 0.5 BLEU better.
    Release(ReleaseArgs),
    /// Measure a model for `cargo xtask bench`: quality on a split and decoding speed at
    /// several batch sizes (warm-up, then the median of runs); prints one JSON object.
    Profile(ProfileArgs),
    /// Serve translation over HTTP: every variant of a models directory is profiled,
    /// and each request gets the best one that meets its budget (milliseconds, a BLEU
    /// floor or a tier), in dynamic batches, with bounded queues and Prometheus metrics.
    Serve(ServeArgs),
}

#[derive(Args, Clone)]
pub struct PrepareArgs {
    /// Corpus as a TSV (`src<TAB>tgt` or `id<TAB>src<TAB>tgt`, optionally gzipped).
    #[arg(long, default_value = "data/bible-en-fr.tsv.gz", conflicts_with_all = ["src", "tgt"])]
    pub corpus: PathBuf,
    /// Source side as a plain text file, one sentence per line (use with --tgt).
    #[arg(long, requires = "tgt")]
    pub src: Option<PathBuf>,
    /// Target side, line-aligned with --src.
    #[arg(long, requires = "src")]
    pub tgt: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "work/data")]
    pub out: PathBuf,
    /// Size of the joint BPE vocabulary.
    #[arg(long, default_value_t = 8000, value_parser = in_range(16, 1_000_000))]
    pub vocab_size: usize,
    /// Thousandths of the pairs that go to the validation split.
    #[arg(long, default_value_t = 20)]
    pub valid_per_mille: u32,
    /// Thousandths of the pairs that go to the test split.
    #[arg(long, default_value_t = 40)]
    pub test_per_mille: u32,
    /// Skip malformed lines (and report how many) instead of stopping at the first.
    #[arg(long)]
    pub skip_malformed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// Small model, about 10 minutes of training on 2 CPU cores.
    Quick,
    /// Transformer-base shapes and schedule; hours on a CPU, for a GPU.
    Base,
    /// A model of a few thousand parameters that trains in seconds: for tests and
    /// smoke runs, not for translating.
    Tiny,
}

impl Preset {
    pub fn to_lib(self) -> paragen_train::Preset {
        match self {
            Preset::Quick => paragen_train::Preset::Quick,
            Preset::Base => paragen_train::Preset::Base,
            Preset::Tiny => paragen_train::Preset::Tiny,
        }
    }
}

#[derive(Args, Clone)]
pub struct TrainArgs {
    /// Prepared data directory (from `paragen prepare`).
    #[arg(long, default_value = "work/data")]
    pub data: PathBuf,
    /// Run directory for checkpoints, config and metrics.
    #[arg(long, default_value = "work/teacher")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = Preset::Quick)]
    pub preset: Preset,
    #[command(flatten)]
    pub run: RunOverrides,
}

/// Options every training command shares: resuming and overriding the preset.
#[derive(Args, Clone, Default)]
pub struct RunOverrides {
    /// Continue the run in --out (weights, optimizer and schedule state) instead of
    /// starting over.
    #[arg(long)]
    pub resume: bool,
    /// Override the preset's number of epochs.
    #[arg(long, value_parser = in_range(1, 100_000))]
    pub epochs: Option<usize>,
    /// Override the preset's training-time budget in minutes (0: no limit).
    #[arg(long, value_parser = non_negative)]
    pub max_minutes: Option<f64>,
    /// Override the preset's batch size in padded tokens.
    #[arg(long, value_parser = in_range(16, 10_000_000))]
    pub max_tokens: Option<usize>,
    /// Override the preset's peak learning rate.
    #[arg(long, value_parser = positive)]
    pub lr: Option<f64>,
    /// Override the preset's learning-rate warmup, in steps.
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Random seed (weights, batch order, masks, dropout).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override the model's dropout (0 to <1; helps a long run on a small corpus).
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Start this new run from the best weights of another run of the same kind and
    /// shapes, e.g. a shipped release model (`--init-from models/teacher`); the
    /// optimizer and the learning-rate warmup start fresh.
    #[arg(long, conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
}

impl RunOverrides {
    /// The library's form of these flags.
    pub fn to_lib(&self) -> paragen_train::Overrides {
        paragen_train::Overrides {
            resume: self.resume,
            epochs: self.epochs,
            max_minutes: self.max_minutes,
            max_tokens: self.max_tokens,
            lr: self.lr,
            warmup_steps: self.warmup_steps,
            seed: self.seed,
            dropout: self.dropout,
            init_from: self.init_from.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StudentKind {
    /// Non-autoregressive: predicts the length, then every token at once (CMLM decoder;
    /// glancing training by default).
    Nat,
    /// Non-autoregressive with a CTC decoder `--upsample` times longer than the source
    /// (Libovický & Helcl 2018): no length prediction, and repeats and blanks are merged
    /// away; glancing CTC training by default (Gu & Kong 2021). One pass only.
    NatCtc,
    /// Autoregressive with a deep encoder and a one-layer decoder (Kasai et al. 2021),
    /// trained with word-level KD: the strongest cheap AR baseline.
    ArShallow,
}

#[derive(Args, Clone)]
pub struct TrainStudentArgs {
    #[arg(long, value_enum)]
    pub kind: StudentKind,
    /// Prepared data to train on: normally the output of `paragen distill`; the raw
    /// prepared corpus trains a student without sequence-level KD.
    #[arg(long)]
    pub data: PathBuf,
    /// Run directory for checkpoints, config and metrics.
    #[arg(long)]
    pub out: PathBuf,
    /// Teacher run directory: needed for word-level KD of AR students (--kd-weight)
    /// and for --init-from-teacher.
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Preset::Quick)]
    pub preset: Preset,
    /// NAT: share of the first pass's wrong tokens revealed in glancing training
    /// (Qian et al. 2021); 0 trains with plain CMLM masking instead.
    #[arg(long, default_value_t = 0.5)]
    pub glance_ratio: f64,
    /// NAT-CTC: decoder positions per source token (2-3 in the literature; each one
    /// costs decoder time).
    #[arg(long, default_value_t = 2, value_parser = in_range(1, paragen_models::nat::MAX_CTC_UPSAMPLE as u64))]
    pub upsample: usize,
    /// AR student: weight of the word-level KD term (0 to 1; 0 is plain cross-entropy).
    #[arg(long, default_value_t = 0.5)]
    pub kd_weight: f64,
    /// AR student: softmax temperature of word-level KD.
    #[arg(long, default_value_t = 1.0)]
    pub kd_temperature: f64,
    /// Start from the teacher's weights: embedding, encoder, and as many decoder layers
    /// as the student has (widths must match; a NAT converges much faster this way).
    #[arg(long, requires = "teacher")]
    pub init_from_teacher: bool,
    #[command(flatten)]
    pub run: RunOverrides,
}

impl TrainStudentArgs {
    /// The student kind in the library's terms (with its CTC upsampling).
    pub fn kind(&self) -> paragen_train::StudentKind {
        match self.kind {
            StudentKind::Nat => paragen_train::StudentKind::Nat,
            StudentKind::NatCtc => paragen_train::StudentKind::NatCtc {
                upsample: self.upsample,
            },
            StudentKind::ArShallow => paragen_train::StudentKind::ArShallow,
        }
    }

    /// The student's recipe as `run.json` keeps it.
    pub fn recipe(&self) -> paragen_train::StudentConfig {
        paragen_train::StudentConfig {
            teacher: self.teacher.clone(),
            glance_ratio: (self.glance_ratio != 0.0).then_some(self.glance_ratio),
            kd_weight: self.kd_weight,
            kd_temperature: self.kd_temperature,
            init_from_teacher: self.init_from_teacher,
        }
    }
}

#[derive(Args, Clone)]
pub struct DistillArgs {
    /// Teacher run directory.
    #[arg(long, default_value = "work/teacher")]
    pub teacher: PathBuf,
    /// Prepared data whose training split is distilled (default: the teacher's).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output directory, a prepared-data directory (default: `<teacher>-distilled`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Teacher beam size (Kim & Rush 2016 use 5); 1 is greedy, 3-4x faster.
    #[arg(long, default_value_t = 4, value_parser = in_range(1, 64))]
    pub beam: usize,
    /// Sentences decoded together.
    #[arg(long, default_value_t = 64, value_parser = in_range(1, 4096))]
    pub batch_size: usize,
    /// Distill only the first N training pairs.
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Args, Clone)]
pub struct DecodeArgs {
    /// Beam size; 1 means greedy search.
    #[arg(long, default_value_t = 1, value_parser = in_range(1, 64))]
    pub beam: usize,
    /// Length penalty exponent of beam search (score / length^penalty).
    #[arg(long, default_value_t = 1.0, value_parser = non_negative_f32)]
    pub length_penalty: f32,
    /// Longest output: ratio × source tokens + --max-len-extra.
    #[arg(long, default_value_t = 1.5, value_parser = positive_f32)]
    pub max_len_ratio: f32,
    #[arg(long, default_value_t = 10, value_parser = in_range(0, 1024))]
    pub max_len_extra: usize,
    /// Sentences decoded together.
    #[arg(long, default_value_t = 64, value_parser = in_range(1, 4096))]
    pub batch_size: usize,
    /// NAT: mask-predict passes (1: one parallel pass).
    #[arg(long, default_value_t = 1, value_parser = in_range(1, 100))]
    pub iterations: usize,
    /// NAT: target lengths tried per sentence, decoded in parallel.
    #[arg(long, default_value_t = 1, value_parser = in_range(1, 32))]
    pub length_beam: usize,
    /// NAT: pick among the length-beam candidates with this AR model's score (noisy
    /// parallel decoding) instead of the student's own.
    #[arg(long)]
    pub rescore_with: Option<PathBuf>,
    /// NAT: keep neighbouring repeated tokens instead of merging them.
    #[arg(long)]
    pub keep_repeats: bool,
    /// NAT-CTC: subtracted from the blank's logit before each position's argmax;
    /// positive values give longer outputs, negative shorter. Default: the value `paragen
    /// tune` stored in the run (its `decoding.json`), else 0.
    #[arg(long, value_parser = finite_f32_within(-20.0, 20.0), allow_hyphen_values = true)]
    pub blank_penalty: Option<f32>,
}

impl DecodeArgs {
    /// The library's form of these flags (checked against a model when it is opened).
    pub fn request(&self) -> paragen_infer::DecodeRequest {
        paragen_infer::DecodeRequest {
            beam: self.beam,
            length_penalty: self.length_penalty,
            limit: paragen_models::LengthLimit {
                ratio: self.max_len_ratio,
                extra: self.max_len_extra,
            },
            iterations: self.iterations,
            length_beam: self.length_beam,
            rescore: self.rescore_with.is_some(),
            collapse_repeats: !self.keep_repeats,
            blank_penalty: self.blank_penalty,
        }
    }
}

/// A parser of whole numbers in `min..=max`, whose error names the range.
fn in_range(min: u64, max: u64) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |text| {
        let value: u64 = text
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a whole number"))?;
        if (min..=max).contains(&value) {
            Ok(value as usize)
        } else {
            Err(format!("{value} is outside {min}..={max}"))
        }
    }
}

fn finite(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(format!("{value} is not a finite number"))
    }
}

fn positive(text: &str) -> Result<f64, String> {
    let value = finite(text)?;
    if value > 0.0 {
        Ok(value)
    } else {
        Err(format!("{value} must be greater than 0"))
    }
}

fn non_negative(text: &str) -> Result<f64, String> {
    let value = finite(text)?;
    if value >= 0.0 {
        Ok(value)
    } else {
        Err(format!("{value} must not be negative"))
    }
}

fn positive_f32(text: &str) -> Result<f32, String> {
    positive(text).map(|v| v as f32)
}

fn non_negative_f32(text: &str) -> Result<f32, String> {
    non_negative(text).map(|v| v as f32)
}

/// A parser of finite numbers in `min..=max`, whose error names the range.
fn finite_f32_within(min: f64, max: f64) -> impl Fn(&str) -> Result<f32, String> + Clone {
    move |text| {
        let value = finite(text)?;
        if (min..=max).contains(&value) {
            Ok(value as f32)
        } else {
            Err(format!("{value} is outside {min}..={max}"))
        }
    }
}

/// Parses nothing but `T`, so that code which needs `T` with its defaults (the
/// pipeline) takes them from the clap attributes instead of repeating them.
#[derive(Parser)]
struct Only<T: Args> {
    #[command(flatten)]
    args: T,
}

/// `T` as the command line gives it when no flag is passed.
pub fn defaults<T: Args>() -> T {
    Only::<T>::parse_from(["paragen"]).args
}

#[derive(Args, Clone)]
pub struct TranslateArgs {
    /// Run directory of the model.
    #[arg(long)]
    pub model: PathBuf,
    /// Input file, one sentence per line; `-` or absent reads stdin.
    #[arg(long, short)]
    pub input: Option<PathBuf>,
    /// Threads that translate shares of the input at once, sharing the model's weights;
    /// the outputs keep the input's order.
    #[arg(long, default_value_t = 1, value_parser = in_range(1, 256))]
    pub workers: usize,
    #[command(flatten)]
    pub decode: DecodeArgs,
}

#[derive(Args, Clone)]
pub struct EvalArgs {
    /// Run directory of the model.
    #[arg(long, default_value = "work/teacher")]
    pub model: PathBuf,
    /// Prepared data directory (default: the one the model was trained on).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Which split to evaluate on.
    #[arg(long, default_value = "test", value_parser = ["train", "valid", "test"])]
    pub split: String,
    /// Evaluate only the first N pairs of the split.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print one JSON object (bleu, chrf, sentences, seconds, ...) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Example translations to print.
    #[arg(long, default_value_t = 5)]
    pub show: usize,
    #[command(flatten)]
    pub decode: DecodeArgs,
}

#[derive(Args, Clone)]
pub struct TuneArgs {
    /// Run directory of a CTC student (a training run or a release).
    #[arg(long)]
    pub model: PathBuf,
    /// Prepared data whose valid split is tuned on (default: the one the model was
    /// trained on).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Tune on only the first N pairs of the valid split.
    #[arg(long, value_parser = in_range(1, usize::MAX as u64))]
    pub limit: Option<usize>,
    /// Sentences decoded together.
    #[arg(long, default_value_t = 64, value_parser = in_range(1, 4096))]
    pub batch_size: usize,
    /// Print the result (best penalty, its scores, the sweep) as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone)]
pub struct PipelineArgs {
    #[arg(long, value_enum, default_value_t = Preset::Quick)]
    pub preset: Preset,
    /// Working directory; holds `data/` and `teacher/`.
    #[arg(long, default_value = "work")]
    pub work: PathBuf,
    /// Corpus to start from.
    #[arg(long, default_value = "data/bible-en-fr.tsv.gz")]
    pub corpus: PathBuf,
    /// Redo every step even if its output exists.
    #[arg(long)]
    pub force: bool,
    /// Example translations to print.
    #[arg(long, default_value_t = 5)]
    pub show: usize,
}

#[derive(Args, Clone)]
pub struct DemoArgs {
    /// Directory of release models (each a run directory).
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// Prepared data whose test split is scored (made from --corpus when missing).
    #[arg(long, default_value = "work/data")]
    pub data: PathBuf,
    /// Corpus the data is prepared from when --data does not exist yet.
    #[arg(long, default_value = "data/bible-en-fr.tsv.gz")]
    pub corpus: PathBuf,
    /// Score only the first N test pairs (default: all of them).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Example translations to print.
    #[arg(long, default_value_t = 3)]
    pub show: usize,
}

#[derive(Args, Clone)]
pub struct ReleaseArgs {
    /// Run directory to release (its best weights, `model.mpk`).
    #[arg(long)]
    pub model: PathBuf,
    /// Release directory, e.g. `models/teacher`.
    #[arg(long)]
    pub out: PathBuf,
    /// Prepared data whose test split scores the release (default: the run's own).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Replace an existing release even if the new one is not 0.5 BLEU better.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Clone)]
pub struct ProfileArgs {
    /// Run directory of the model.
    #[arg(long)]
    pub model: PathBuf,
    /// Prepared data directory (default: the one the model was trained on).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Pairs of the test split scored for BLEU/chrF (default: all); 0 skips scoring.
    #[arg(long)]
    pub quality_sentences: Option<usize>,
    /// Test sentences decoded in each timed run.
    #[arg(long, default_value_t = 100, value_parser = in_range(1, 1_000_000))]
    pub time_sentences: usize,
    /// Batch sizes to time.
    #[arg(long, default_value = "1,8,64", value_delimiter = ',')]
    pub batch_sizes: Vec<usize>,
    /// Timed runs per batch size (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3, value_parser = in_range(1, 1000))]
    pub runs: usize,
    /// Also measure the fp32 matmul peak and the forward pass's achieved GFLOP/s.
    #[arg(long)]
    pub roofline: bool,
    #[command(flatten)]
    pub decode: DecodeArgs,
}
