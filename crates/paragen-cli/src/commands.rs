//! One function per subcommand: turn arguments into library calls and print results.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Context, bail};
use burn::module::AutodiffModule;
use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;
use paragen_backend::{BackendTask, DeviceSpec, run_on, set_cpu_threads};
use paragen_compress::distill::{DistillOptions, WordKd, default_output, distill_corpus};
use paragen_data::{CorpusSource, MalformedLines, PreparedData, Split, SplitConfig};
use paragen_models::nat::{NatDecoding, NatStudent};
use paragen_models::{BeamOptions, LengthLimit, Transformer, TransformerConfig};
use paragen_train::checkpoint::{ModelKind, StudentConfig};
use paragen_train::objective::{Glancing, Objective, OwnLoss, SeqModel};
use paragen_train::trainer::TrainData;
use paragen_train::{
    Decoding, EvalReport, Model, RunConfig, RunDir, TrainConfig, Translator, evaluate,
    translate_texts,
};

use crate::args::{
    Cli, Command, DecodeArgs, DistillArgs, EvalArgs, PipelineArgs, PrepareArgs, Preset,
    ProfileArgs, RunOverrides, StudentKind, TrainArgs, TrainStudentArgs, TranslateArgs, defaults,
};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let spec = DeviceSpec::parse(&cli.global.backend, cli.global.device)?;
    if let Some(threads) = cli.global.threads {
        set_cpu_threads(threads);
    }
    match cli.command {
        Command::Prepare(args) => prepare(&args),
        Command::TrainTeacher(args) => run_on(spec, TrainTeacher(args))?,
        Command::Distill(args) => run_on(spec, Distill(args))?,
        Command::TrainStudent(args) => run_on(spec, TrainStudent(args))?,
        Command::Translate(args) => run_on(spec, Translate(args))?,
        Command::Eval(args) => run_on(spec, Eval(args))?,
        Command::Pipeline(args) => pipeline(spec, &args),
        Command::Profile(args) => run_on(
            spec,
            Profile {
                args,
                spec,
                threads: cli.global.threads,
            },
        )?,
    }
}

fn prepare(args: &PrepareArgs) -> anyhow::Result<()> {
    let source = match (&args.src, &args.tgt) {
        (Some(src), Some(tgt)) => CorpusSource::Parallel {
            src: src.clone(),
            tgt: tgt.clone(),
        },
        _ => CorpusSource::Tsv(args.corpus.clone()),
    };
    let policy = if args.skip_malformed {
        MalformedLines::Skip
    } else {
        MalformedLines::Error
    };
    let split = SplitConfig {
        valid_per_mille: args.valid_per_mille,
        test_per_mille: args.test_per_mille,
    };
    if split.valid_per_mille + split.test_per_mille >= 1000 {
        bail!("--valid-per-mille plus --test-per-mille must leave room for training (< 1000)");
    }
    tracing::info!("preparing {:?} into {}", source, args.out.display());
    let report = paragen_data::prepare(&source, &args.out, args.vocab_size, split, policy)?;
    println!(
        "prepared {}: {} train, {} valid, {} test pairs; vocabulary {}{}",
        args.out.display(),
        report.train_pairs,
        report.valid_pairs,
        report.test_pairs,
        report.vocab_size,
        if report.skipped_lines > 0 {
            format!("; {} malformed lines skipped", report.skipped_lines)
        } else {
            String::new()
        }
    );
    Ok(())
}

fn preset_configs(
    preset: Preset,
    vocab: usize,
    special: paragen_data::SpecialTokens,
) -> (&'static str, TransformerConfig, TrainConfig) {
    match preset {
        Preset::Quick => (
            "quick",
            TransformerConfig::quick(vocab, special),
            TrainConfig::quick(),
        ),
        Preset::Base => (
            "base",
            TransformerConfig::base(vocab, special),
            TrainConfig::base(),
        ),
        Preset::Tiny => (
            "tiny",
            TransformerConfig {
                max_positions: 256,
                ..TransformerConfig::tiny(vocab, special)
            },
            TrainConfig::tiny(),
        ),
    }
}

/// Shapes and schedule of a student: the preset's, reshaped for the kind. A NAT keeps
/// the teacher's shapes, so it can start from all of the teacher's weights; the AR
/// student moves all but one decoder layer to the encoder (Kasai et al. 2021), keeping
/// the layer count of the teacher preset.
fn student_configs(
    kind: StudentKind,
    preset: Preset,
    vocab: usize,
    special: paragen_data::SpecialTokens,
) -> (&'static str, TransformerConfig, TrainConfig) {
    let (name, mut model, train) = preset_configs(preset, vocab, special);
    match kind {
        StudentKind::Nat | StudentKind::NatCtc => {}
        StudentKind::ArShallow => {
            model.encoder_layers += model.decoder_layers - 1;
            model.decoder_layers = 1;
        }
    }
    (name, model, train)
}

/// Opens `out` for training: the saved config when resuming, else the one `fresh`
/// makes; applies the command-line overrides either way.
fn open_run(
    out: &Path,
    overrides: &RunOverrides,
    fresh: impl FnOnce() -> anyhow::Result<RunConfig>,
) -> anyhow::Result<(RunDir, RunConfig)> {
    let run = RunDir::new(out);
    let mut config = if overrides.resume {
        run.load_config()
            .context("--resume needs an existing run")?
    } else {
        if run.path("run.json").exists() {
            bail!(
                "{} already holds a run; pass --resume to continue it or choose another --out",
                out.display()
            );
        }
        fresh()?
    };
    let train = &mut config.train;
    if let Some(epochs) = overrides.epochs {
        train.max_epochs = epochs;
    }
    if let Some(minutes) = overrides.max_minutes {
        train.max_minutes = (minutes > 0.0).then_some(minutes);
    }
    if let Some(tokens) = overrides.max_tokens {
        train.max_tokens = tokens;
    }
    if let Some(lr) = overrides.lr {
        train.peak_lr = lr;
    }
    if let Some(seed) = overrides.seed {
        train.seed = seed;
    }
    Ok((run, config))
}

/// Saves the run's config (and tokenizer, for a new run), trains, prints a summary.
fn train_and_report<B, M>(
    run: &RunDir,
    config: &RunConfig,
    model: M,
    objective: &dyn Objective<B, M>,
    resume: bool,
    device: &B::Device,
) -> anyhow::Result<()>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + SeqModel<B>,
    M::InnerModule: SeqModel<B::InnerBackend>,
{
    let prepared = PreparedData::new(&config.data_dir);
    let tokenizer = if resume {
        run.load_tokenizer()?
    } else {
        let tokenizer = prepared.tokenizer()?;
        run.save_tokenizer(&tokenizer)?;
        tokenizer
    };
    run.save_config(config)?;
    let kind = match config.student.as_ref().and_then(|s| s.ctc_upsample) {
        Some(upsample) => format!("nat-ctc (decoder {upsample}x the source)"),
        None => config.kind.name().to_string(),
    };
    tracing::info!(
        "training a {} {} model: {} parameters, {}+{} layers, d_model {}; run directory {}",
        config.preset,
        kind,
        model.num_params(),
        config.model.encoder_layers,
        config.model.decoder_layers,
        config.model.d_model,
        run.root().display()
    );
    let data = TrainData::from_prepared(&prepared, &tokenizer)?;
    let summary = paragen_train::train(
        run,
        &config.train,
        &tokenizer,
        &data,
        model,
        objective,
        resume,
        device,
    )?;
    println!(
        "trained {} epochs ({} steps) in {:.1} min{}; best valid BLEU {:.2} (epoch {}); model in {}",
        summary.epochs,
        summary.steps,
        summary.train_seconds / 60.0,
        if summary.stopped_by_time {
            ", stopped by the time budget"
        } else {
            ""
        },
        summary.best_bleu.unwrap_or(0.0),
        summary.best_epoch.unwrap_or(0),
        run.path("model.mpk").display()
    );
    Ok(())
}

struct TrainTeacher(TrainArgs);

impl BackendTask for TrainTeacher {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = self.0;
        let (run, config) = open_run(&args.out, &args.run, || {
            let tokenizer = PreparedData::new(&args.data).tokenizer()?;
            let (name, model, train) =
                preset_configs(args.preset, tokenizer.vocab_size(), tokenizer.special());
            Ok(RunConfig {
                kind: ModelKind::Ar,
                preset: name.to_string(),
                model,
                train,
                student: None,
                data_dir: args.data.clone(),
                paragen_version: env!("CARGO_PKG_VERSION").to_string(),
            })
        })?;
        B::seed(&device, config.train.seed);
        let model = Transformer::<B>::new(&config.model, &device)?;
        let objective = OwnLoss {
            label_smoothing: config.train.label_smoothing,
        };
        train_and_report(&run, &config, model, &objective, args.run.resume, &device)
    }
}

struct TrainStudent(TrainStudentArgs);

impl BackendTask for TrainStudent {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = self.0;
        if !(0.0..=1.0).contains(&args.glance_ratio) || !(0.0..=1.0).contains(&args.kd_weight) {
            bail!("--glance-ratio and --kd-weight must be between 0 and 1");
        }
        if args.kd_temperature <= 0.0 {
            bail!("--kd-temperature must be positive");
        }
        if args.upsample == 0 {
            bail!("--upsample must be at least 1");
        }
        let (run, config) = open_run(&args.out, &args.run, || {
            let tokenizer = PreparedData::new(&args.data).tokenizer()?;
            let (name, model, train) = student_configs(
                args.kind,
                args.preset,
                tokenizer.vocab_size(),
                tokenizer.special(),
            );
            let ctc = args.kind == StudentKind::NatCtc;
            let nat = args.kind == StudentKind::Nat || ctc;
            Ok(RunConfig {
                kind: if nat {
                    ModelKind::Nat
                } else {
                    ModelKind::ArShallow
                },
                preset: name.to_string(),
                model,
                train,
                student: Some(StudentConfig {
                    teacher: args.teacher.clone(),
                    max_length_offset: 32,
                    length_loss_weight: 0.1,
                    glance_ratio: (nat && args.glance_ratio > 0.0).then_some(args.glance_ratio),
                    ctc_upsample: ctc.then_some(args.upsample),
                    kd_weight: if nat || args.teacher.is_none() {
                        0.0
                    } else {
                        args.kd_weight
                    },
                    kd_temperature: args.kd_temperature,
                    init_from_teacher: args.init_from_teacher,
                }),
                data_dir: args.data.clone(),
                paragen_version: env!("CARGO_PKG_VERSION").to_string(),
            })
        })?;
        let student = config
            .student
            .clone()
            .with_context(|| format!("{} is not a student run", args.out.display()))?;
        let teacher = match &student.teacher {
            Some(dir) => {
                let (teacher_config, teacher) = RunDir::new(dir).load_transformer::<B>(&device)?;
                if teacher_config.model.vocab_size != config.model.vocab_size {
                    bail!(
                        "the teacher in {} has a vocabulary of {}, the data in {} one of {}: \
                         distill with this teacher first",
                        dir.display(),
                        teacher_config.model.vocab_size,
                        config.data_dir.display(),
                        config.model.vocab_size
                    );
                }
                Some(teacher)
            }
            None => None,
        };
        let resume = args.run.resume;
        let label_smoothing = config.train.label_smoothing;
        B::seed(&device, config.train.seed);
        match config.kind {
            ModelKind::Nat => {
                let mut model = NatStudent::<B>::new(&config.nat_config(), &device)?;
                if student.init_from_teacher && !resume {
                    let teacher = teacher
                        .as_ref()
                        .context("--init-from-teacher needs --teacher")?;
                    model.init_from_teacher(teacher)?;
                }
                let objective: Box<dyn Objective<B, NatStudent<B>>> = match student.glance_ratio {
                    Some(ratio) => Box::new(Glancing {
                        ratio,
                        label_smoothing,
                    }),
                    None => Box::new(OwnLoss { label_smoothing }),
                };
                train_and_report(&run, &config, model, objective.as_ref(), resume, &device)
            }
            ModelKind::ArShallow | ModelKind::Ar => {
                let mut model = Transformer::<B>::new(&config.model, &device)?;
                if student.init_from_teacher && !resume {
                    let teacher = teacher
                        .as_ref()
                        .context("--init-from-teacher needs --teacher")?;
                    model.init_from_teacher(teacher)?;
                }
                let objective: Box<dyn Objective<B, Transformer<B>>> =
                    match teacher.filter(|_| student.kd_weight > 0.0) {
                        Some(teacher) => Box::new(WordKd::new(
                            teacher,
                            student.kd_temperature,
                            student.kd_weight,
                            label_smoothing,
                        )),
                        None => Box::new(OwnLoss { label_smoothing }),
                    };
                train_and_report(&run, &config, model, objective.as_ref(), resume, &device)
            }
        }
    }
}

struct Distill(DistillArgs);

impl BackendTask for Distill {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        distill::<B::InnerBackend>(&self.0, &device)
    }
}

fn distill<B: Backend>(args: &DistillArgs, device: &B::Device) -> anyhow::Result<()> {
    if args.beam == 0 || args.batch_size == 0 {
        bail!("--beam and --batch-size must be at least 1");
    }
    let run = RunDir::new(&args.teacher);
    let (config, teacher) = run.load_transformer::<B>(device)?;
    let tokenizer = run.load_tokenizer()?;
    let data = PreparedData::new(args.data.clone().unwrap_or(config.data_dir));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_output(&args.teacher));
    let decoding = if args.beam == 1 {
        Decoding::Greedy(LengthLimit::default())
    } else {
        Decoding::Beam(BeamOptions {
            beam_size: args.beam,
            ..Default::default()
        })
    };
    let report = distill_corpus(
        &teacher,
        &args.teacher.display().to_string(),
        &tokenizer,
        &data,
        &out,
        &DistillOptions {
            decoding,
            batch_size: args.batch_size,
            limit: args.limit,
            chunk_sentences: 1024,
        },
    )?;
    println!(
        "distilled {} training pairs with {} ({:.1} min{}{}) into {}",
        report.sentences,
        report.decoding,
        report.seconds / 60.0,
        if report.resumed_from > 0 {
            format!(", resumed after {}", report.resumed_from)
        } else {
            String::new()
        },
        if report.kept_reference > 0 {
            format!(
                "; {} kept their reference (empty teacher output)",
                report.kept_reference
            )
        } else {
            String::new()
        },
        out.display()
    );
    Ok(())
}

/// The decoding the flags ask for, checked against the model's kind, and the AR model
/// that rescores NAT candidates when `--rescore-with` is given.
fn decoding<B: Backend>(
    args: &DecodeArgs,
    model: &Model<B>,
    device: &B::Device,
) -> anyhow::Result<(Decoding, Option<Transformer<B>>)> {
    if args.beam == 0 || args.iterations == 0 || args.length_beam == 0 || args.batch_size == 0 {
        bail!("--beam, --iterations, --length-beam and --batch-size must be at least 1");
    }
    let limit = LengthLimit {
        ratio: args.max_len_ratio,
        extra: args.max_len_extra,
    };
    match model {
        Model::Ar(_) => {
            if args.iterations > 1 || args.length_beam > 1 || args.rescore_with.is_some() {
                bail!(
                    "--iterations, --length-beam and --rescore-with apply to NAT models; use --beam for AR models"
                );
            }
            let decoding = if args.beam == 1 {
                Decoding::Greedy(limit)
            } else {
                Decoding::Beam(BeamOptions {
                    beam_size: args.beam,
                    length_penalty: args.length_penalty,
                    limit,
                })
            };
            Ok((decoding, None))
        }
        Model::Nat(nat) => {
            if args.beam > 1 {
                bail!("--beam applies to AR models; a NAT takes --length-beam and --iterations");
            }
            let ctc = nat.config().ctc_upsample.is_some();
            if ctc && (args.iterations > 1 || args.length_beam > 1 || args.rescore_with.is_some()) {
                bail!(
                    "this is a CTC student: it decodes in one pass without predicting a \
                     length, so --iterations, --length-beam and --rescore-with do not apply"
                );
            }
            let rescorer = match &args.rescore_with {
                Some(dir) => Some(RunDir::new(dir).load_transformer::<B>(device)?.1),
                None => None,
            };
            let decoding = Decoding::Nat(NatDecoding {
                length_beam: args.length_beam,
                iterations: args.iterations,
                collapse_repeats: !args.keep_repeats,
            });
            Ok((decoding, rescorer))
        }
    }
}

/// A run opened for decoding the way the flags ask: its model, tokenizer and decoding,
/// plus the AR model that rescores NAT candidates when `--rescore-with` is given.
struct LoadedRun<B: Backend> {
    run: RunDir,
    config: RunConfig,
    model: Model<B>,
    tokenizer: paragen_data::Tokenizer,
    decoding: Decoding,
    rescorer: Option<Transformer<B>>,
}

impl<B: Backend> LoadedRun<B> {
    fn open(dir: &Path, args: &DecodeArgs, device: &B::Device) -> anyhow::Result<Self> {
        let run = RunDir::new(dir);
        let (config, model) = run.load_model::<B>(device)?;
        let (decoding, rescorer) = decoding(args, &model, device)?;
        let tokenizer = run.load_tokenizer()?;
        Ok(Self {
            run,
            config,
            model,
            tokenizer,
            decoding,
            rescorer,
        })
    }

    fn translator(&self) -> Translator<'_, B> {
        Translator {
            model: &self.model,
            decoding: self.decoding,
            rescorer: self.rescorer.as_ref(),
        }
    }
}

struct Translate(TranslateArgs);

impl BackendTask for Translate {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = self.0;
        let loaded = LoadedRun::<B::InnerBackend>::open(&args.model, &args.decode, &device)?;
        let (translator, tokenizer) = (loaded.translator(), &loaded.tokenizer);
        let lines = read_lines(args.input.as_deref())?;
        let texts: Vec<&str> = lines.iter().map(|l| l.trim()).collect();
        if let Some(i) = texts.iter().position(|t| t.is_empty()) {
            bail!("input line {} is empty; give one sentence per line", i + 1);
        }
        let outputs =
            translate_texts(&translator, tokenizer, &texts, args.decode.batch_size, true)?;
        let mut stdout = std::io::stdout().lock();
        for line in outputs {
            writeln!(stdout, "{line}")?;
        }
        Ok(())
    }
}

fn read_lines(input: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let lines: Result<Vec<String>, _> = match input {
        Some(path) if path != Path::new("-") => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot read `{}`", path.display()))?;
            std::io::BufReader::new(file).lines().collect()
        }
        _ => std::io::stdin().lock().lines().collect(),
    };
    let lines = lines.context("input is not valid UTF-8 text")?;
    Ok(lines)
}

struct Eval(EvalArgs);

impl BackendTask for Eval {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = self.0;
        let report_and_pairs = evaluate_run::<B::InnerBackend>(&args, &device)?;
        print_eval(&args, &report_and_pairs.0, &report_and_pairs.1);
        Ok(())
    }
}

fn evaluate_run<B: burn::prelude::Backend>(
    args: &EvalArgs,
    device: &B::Device,
) -> anyhow::Result<(EvalReport, Vec<paragen_data::Pair>)> {
    let loaded = LoadedRun::<B>::open(&args.model, &args.decode, device)?;
    let (translator, tokenizer) = (loaded.translator(), &loaded.tokenizer);
    let data = PreparedData::new(args.data.clone().unwrap_or(loaded.config.data_dir.clone()));
    let split = match args.split.as_str() {
        "train" => Split::Train,
        "valid" => Split::Valid,
        _ => Split::Test,
    };
    let mut pairs = data.pairs(split)?;
    if let Some(limit) = args.limit {
        pairs.truncate(limit);
    }
    let report = evaluate(
        &translator,
        tokenizer,
        &pairs,
        args.decode.batch_size,
        !args.json,
    )?;
    Ok((report, pairs))
}

fn print_eval(args: &EvalArgs, report: &EvalReport, pairs: &[paragen_data::Pair]) {
    if args.json {
        let mut value = serde_json::to_value(report).expect("report serializes");
        value["model"] = serde_json::json!(args.model.display().to_string());
        value["split"] = serde_json::json!(args.split);
        println!("{value}");
        return;
    }
    println!(
        "{} split: {} sentences, BLEU {:.2}, chrF {:.2} ({} decoding, batch {}, {:.1} s, {:.1} sentences/s)",
        args.split,
        report.sentences,
        report.bleu,
        report.chrf,
        report.decoding,
        report.batch_size,
        report.seconds,
        report.sentences_per_second
    );
    for (pair, hyp) in pairs.iter().zip(&report.hypotheses).take(args.show) {
        println!(
            "\n  source:    {}\n  reference: {}\n  paragen:   {}",
            pair.src, pair.tgt, hyp
        );
    }
}

fn pipeline(spec: DeviceSpec, args: &PipelineArgs) -> anyhow::Result<()> {
    let data_dir = args.work.join("data");
    let teacher_dir = args.work.join("teacher");
    if args.force || !data_dir.join("prepare.json").exists() {
        prepare(&PrepareArgs {
            corpus: args.corpus.clone(),
            out: data_dir.clone(),
            ..defaults()
        })?;
    } else {
        println!("using prepared data in {}", data_dir.display());
    }
    if args.force && teacher_dir.exists() {
        std::fs::remove_dir_all(&teacher_dir)
            .with_context(|| format!("removing {}", teacher_dir.display()))?;
    }
    if !teacher_dir.join("model.mpk").exists() {
        let resume = teacher_dir.join("trainer.json").exists();
        run_on(
            spec,
            TrainTeacher(TrainArgs {
                data: data_dir.clone(),
                out: teacher_dir.clone(),
                preset: args.preset,
                run: RunOverrides {
                    resume,
                    ..defaults()
                },
            }),
        )??;
    } else {
        println!("using the trained teacher in {}", teacher_dir.display());
    }
    run_on(
        spec,
        Eval(EvalArgs {
            model: teacher_dir,
            data: Some(data_dir),
            show: args.show,
            ..defaults()
        }),
    )?
}

struct Profile {
    args: ProfileArgs,
    spec: DeviceSpec,
    threads: Option<usize>,
}

impl BackendTask for Profile {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        profile::<B::InnerBackend>(&self.args, self.spec, self.threads, &device)
    }
}

fn profile<B: burn::prelude::Backend>(
    args: &ProfileArgs,
    spec: DeviceSpec,
    threads: Option<usize>,
    device: &B::Device,
) -> anyhow::Result<()> {
    use paragen_train::bench::{forward_gflops, matmul_peak_gflops, time_decoding};
    let loaded = LoadedRun::<B>::open(&args.model, &args.decode, device)?;
    let (translator, tokenizer) = (loaded.translator(), &loaded.tokenizer);
    let (run, config, model) = (&loaded.run, &loaded.config, &loaded.model);
    let data = PreparedData::new(args.data.clone().unwrap_or(config.data_dir.clone()));
    let pairs = data.pairs(Split::Test)?;
    let mut out = serde_json::json!({
        "model": args.model.display().to_string(),
        "kind": config.kind.name(),
        "preset": config.preset,
        "decoding": translator.name(),
        "params": model.param_count(),
        "file_bytes": std::fs::metadata(run.path("model.mpk"))?.len(),
        "backend": spec.backend.name(),
        "threads": threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        "encoder_layers": config.model.encoder_layers,
        "decoder_layers": config.model.decoder_layers,
        "data_dir": config.data_dir.display().to_string(),
    });
    if let Ok(state) = run.load_state() {
        out["train_steps"] = serde_json::json!(state.step);
        out["train_minutes"] = serde_json::json!(state.train_seconds / 60.0);
    }
    let quality_n = args
        .quality_sentences
        .unwrap_or(pairs.len())
        .min(pairs.len());
    if quality_n > 0 {
        let report = evaluate(&translator, tokenizer, &pairs[..quality_n], 64, false)?;
        out["bleu"] = serde_json::json!(report.bleu);
        out["chrf"] = serde_json::json!(report.chrf);
        out["quality_sentences"] = serde_json::json!(report.sentences);
    }
    let texts: Vec<&str> = pairs
        .iter()
        .take(args.time_sentences)
        .map(|p| p.src.as_str())
        .collect();
    let sources = tokenizer.encode_batch(&texts)?;
    let mut timings = serde_json::Map::new();
    for &batch in &args.batch_sizes {
        let timing = time_decoding(&translator, &sources, batch, args.runs)?;
        tracing::info!(
            "{}: batch {batch}: {:.2} ms/sentence",
            translator.name(),
            timing.ms_per_sentence
        );
        timings.insert(batch.to_string(), serde_json::to_value(timing)?);
    }
    out["timings"] = serde_json::Value::Object(timings);
    if args.roofline {
        let peak = matmul_peak_gflops::<B>(1024, 5, device);
        let mean_len = sources.iter().map(|s| s.len()).sum::<usize>() / sources.len().max(1);
        let (achieved, seconds) = forward_gflops(model, 64, mean_len.max(1), 3);
        out["roofline"] = serde_json::json!({
            "peak_gflops": peak,
            "peak_how": "best of 5 fp32 1024x1024x1024 matrix products",
            "forward_gflops": achieved,
            "forward_seconds": seconds,
            "forward_shape": match model {
                Model::Ar(_) => format!("teacher-forced forward of an AR model, batch 64, {mean_len} source and target tokens"),
                Model::Nat(_) => format!("one all-mask NAT pass, batch 64, {mean_len} source and target tokens"),
            },
        });
    }
    println!("{out}");
    Ok(())
}
