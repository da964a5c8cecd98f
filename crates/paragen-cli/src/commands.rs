//! One function per subcommand: turn arguments into library calls and print results.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Context, bail};
use burn::tensor::backend::AutodiffBackend;
use paragen_backend::{BackendTask, DeviceSpec, run_on, set_cpu_threads};
use paragen_data::{CorpusSource, MalformedLines, PreparedData, Split, SplitConfig};
use paragen_models::{BeamOptions, LengthLimit, Transformer, TransformerConfig};
use paragen_train::checkpoint::ModelKind;
use paragen_train::trainer::TrainData;
use paragen_train::{
    Decoding, EvalReport, RunConfig, RunDir, TrainConfig, evaluate, translate_texts,
};

use crate::args::{
    Cli, Command, DecodeArgs, EvalArgs, PipelineArgs, PrepareArgs, Preset, ProfileArgs, TrainArgs,
    TranslateArgs,
};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let spec = DeviceSpec::parse(&cli.global.backend, cli.global.device)?;
    if let Some(threads) = cli.global.threads {
        set_cpu_threads(threads);
    }
    match cli.command {
        Command::Prepare(args) => prepare(&args),
        Command::TrainTeacher(args) => run_on(spec, TrainTeacher(args))?,
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

struct TrainTeacher(TrainArgs);

impl BackendTask for TrainTeacher {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        train_teacher::<B>(&self.0, &device)
    }
}

fn train_teacher<B: AutodiffBackend>(args: &TrainArgs, device: &B::Device) -> anyhow::Result<()> {
    let run = RunDir::new(&args.out);
    let mut config = if args.resume {
        run.load_config()
            .context("--resume needs an existing run")?
    } else {
        if run.path("run.json").exists() {
            bail!(
                "{} already holds a run; pass --resume to continue it or choose another --out",
                args.out.display()
            );
        }
        let prepared = PreparedData::new(&args.data);
        let tokenizer = prepared.tokenizer()?;
        let (name, model, train) =
            preset_configs(args.preset, tokenizer.vocab_size(), tokenizer.special());
        RunConfig {
            kind: ModelKind::Ar,
            preset: name.to_string(),
            model,
            train,
            data_dir: args.data.clone(),
            paragen_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    };
    if let Some(epochs) = args.epochs {
        config.train.max_epochs = epochs;
    }
    if let Some(minutes) = args.max_minutes {
        config.train.max_minutes = (minutes > 0.0).then_some(minutes);
    }
    if let Some(tokens) = args.max_tokens {
        config.train.max_tokens = tokens;
    }
    if let Some(lr) = args.lr {
        config.train.peak_lr = lr;
    }
    if let Some(seed) = args.seed {
        config.train.seed = seed;
    }
    let prepared = PreparedData::new(&config.data_dir);
    let tokenizer = if args.resume {
        run.load_tokenizer()?
    } else {
        prepared.tokenizer()?
    };
    B::seed(device, config.train.seed);
    let model = Transformer::<B>::new(&config.model, device)?;
    run.save_config(&config)?;
    if !args.resume {
        run.save_tokenizer(&tokenizer)?;
    }
    tracing::info!(
        "training a {} teacher: {} parameters, {}+{} layers, d_model {}; run directory {}",
        config.preset,
        model.param_count(),
        config.model.encoder_layers,
        config.model.decoder_layers,
        config.model.d_model,
        args.out.display()
    );
    let data = TrainData::from_prepared(&prepared, &tokenizer)?;
    let summary = paragen_train::train(
        &run,
        &config.train,
        &tokenizer,
        &data,
        model,
        args.resume,
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

fn decoding(args: &DecodeArgs) -> anyhow::Result<Decoding> {
    if args.beam == 0 {
        bail!("--beam must be at least 1");
    }
    let limit = LengthLimit {
        ratio: args.max_len_ratio,
        extra: args.max_len_extra,
    };
    Ok(if args.beam == 1 {
        Decoding::Greedy(limit)
    } else {
        Decoding::Beam(BeamOptions {
            beam_size: args.beam,
            length_penalty: args.length_penalty,
            limit,
        })
    })
}

struct Translate(TranslateArgs);

impl BackendTask for Translate {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = self.0;
        let run = RunDir::new(&args.model);
        let (_, model) = run.load_transformer::<B::InnerBackend>(&device)?;
        let tokenizer = run.load_tokenizer()?;
        let lines = read_lines(args.input.as_deref())?;
        let texts: Vec<&str> = lines.iter().map(|l| l.trim()).collect();
        if let Some(i) = texts.iter().position(|t| t.is_empty()) {
            bail!("input line {} is empty; give one sentence per line", i + 1);
        }
        let outputs = translate_texts(
            &model,
            &tokenizer,
            &texts,
            decoding(&args.decode)?,
            args.decode.batch_size,
            true,
        )?;
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
    let run = RunDir::new(&args.model);
    let (config, model) = run.load_transformer::<B>(device)?;
    let tokenizer = run.load_tokenizer()?;
    let data = PreparedData::new(args.data.clone().unwrap_or(config.data_dir));
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
        &model,
        &tokenizer,
        &pairs,
        decoding(&args.decode)?,
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
        "{} split: {} sentences, BLEU {:.2}, chrF {:.2} ({} search, batch {}, {:.1} s, {:.1} sentences/s)",
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
            src: None,
            tgt: None,
            out: data_dir.clone(),
            vocab_size: 8000,
            valid_per_mille: 20,
            test_per_mille: 40,
            skip_malformed: false,
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
                resume,
                epochs: None,
                max_minutes: None,
                max_tokens: None,
                lr: None,
                seed: None,
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
            split: "test".into(),
            limit: None,
            json: false,
            show: args.show,
            decode: DecodeArgs {
                beam: 1,
                length_penalty: 1.0,
                max_len_ratio: 1.5,
                max_len_extra: 10,
                batch_size: 64,
            },
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
    let run = RunDir::new(&args.model);
    let (config, model) = run.load_transformer::<B>(device)?;
    let tokenizer = run.load_tokenizer()?;
    let data = PreparedData::new(args.data.clone().unwrap_or(config.data_dir.clone()));
    let pairs = data.pairs(Split::Test)?;
    let decoding = decoding(&args.decode)?;
    let mut out = serde_json::json!({
        "model": args.model.display().to_string(),
        "kind": config.kind.name(),
        "preset": config.preset,
        "decoding": decoding.name(),
        "params": model.param_count(),
        "file_bytes": std::fs::metadata(run.path("model.mpk"))?.len(),
        "backend": spec.backend.name(),
        "threads": threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        "encoder_layers": config.model.encoder_layers,
        "decoder_layers": config.model.decoder_layers,
    });
    let quality_n = args
        .quality_sentences
        .unwrap_or(pairs.len())
        .min(pairs.len());
    if quality_n > 0 {
        let report = evaluate(&model, &tokenizer, &pairs[..quality_n], decoding, 64, false)?;
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
        let timing = time_decoding(&model, &sources, decoding, batch, args.runs)?;
        tracing::info!(
            "{}: batch {batch}: {:.2} ms/sentence",
            decoding.name(),
            timing.ms_per_sentence
        );
        timings.insert(batch.to_string(), serde_json::to_value(timing)?);
    }
    out["timings"] = serde_json::Value::Object(timings);
    if args.roofline {
        let peak = matmul_peak_gflops::<B>(1024, 5, device);
        let mean_len = sources.iter().map(|s| s.len()).sum::<usize>() / sources.len().max(1);
        let (achieved, seconds) = forward_gflops(&model, 64, mean_len.max(1), 3);
        out["roofline"] = serde_json::json!({
            "peak_gflops": peak,
            "peak_how": "best of 5 fp32 1024x1024x1024 matrix products",
            "forward_gflops": achieved,
            "forward_seconds": seconds,
            "forward_shape": format!("teacher-forced forward, batch 64, {mean_len} source and target tokens"),
        });
    }
    println!("{out}");
    Ok(())
}
