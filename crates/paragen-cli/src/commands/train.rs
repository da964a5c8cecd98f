//! `paragen train-teacher` and `paragen train-student`.

use anyhow::{Context, bail};
use burn::module::AutodiffModule;
use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;
use paragen_backend::BackendTask;
use paragen_compress::distill::WordKd;
use paragen_data::PreparedData;
use paragen_infer::{ModelConfig, RunDir};
use paragen_models::Transformer;
use paragen_models::nat::NatStudent;
use paragen_train::objective::{Objective, OwnLoss, SeqModel, nat_objective};
use paragen_train::run::init_weights;
use paragen_train::trainer::TrainData;
use paragen_train::{OpenRun, TrainError, open_run, student_run, teacher_run};

use crate::args::{TrainArgs, TrainStudentArgs};

/// Saves the run's config (and tokenizer, for a new run), trains, prints a summary.
/// `resume`: the run existed (its tokenizer is read back, not replaced).
fn train_and_report<B, M>(
    opened: &OpenRun,
    resume: bool,
    model: M,
    objective: &dyn Objective<B, M>,
    device: &B::Device,
) -> anyhow::Result<()>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + SeqModel<B>,
    M::InnerModule: SeqModel<B::InnerBackend>,
{
    let (run, config) = (&opened.dir, &opened.config);
    let prepared = PreparedData::new(&config.data_dir);
    let tokenizer = if resume {
        run.load_tokenizer()?
    } else {
        let tokenizer = prepared.tokenizer()?;
        run.save_tokenizer(&tokenizer)?;
        tokenizer
    };
    run.save_config(config)?;
    run.append_history(&std::env::args().collect::<Vec<_>>())?;
    let shapes = config.transformer();
    tracing::info!(
        "training a {} {} model: {} parameters, {}+{} layers, d_model {}, dropout {}; run directory {}{}",
        config.preset,
        config.kind.name(),
        model.num_params(),
        shapes.encoder_layers,
        shapes.decoder_layers,
        shapes.d_model,
        shapes.dropout,
        run.root().display(),
        match &config.training.init_from {
            Some(from) if opened.checkpoint.is_none() =>
                format!("; weights from {}", from.display()),
            _ => String::new(),
        }
    );
    let data = TrainData::from_prepared(&prepared, &tokenizer)?;
    let summary = paragen_train::train(
        run,
        &config.training.train,
        &tokenizer,
        &data,
        model,
        objective,
        opened.checkpoint.as_ref(),
        device,
    )?;
    outln!(
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
    )?;
    Ok(())
}

/// The weights a run starts from when it has no checkpoint to resume: `--init-from`'s
/// when the run records one (the trainer loads a checkpoint's own).
fn starting_weights<B: Backend, M: burn::module::Module<B>>(
    opened: &OpenRun,
    model: M,
    device: &B::Device,
) -> anyhow::Result<M> {
    Ok(match &opened.config.training.init_from {
        Some(from) if opened.checkpoint.is_none() => init_weights(from, model, device)?,
        _ => model,
    })
}

/// The tokenizer of the prepared data a new run trains on.
fn data_tokenizer(data: &std::path::Path) -> Result<paragen_data::Tokenizer, TrainError> {
    Ok(PreparedData::new(data)
        .tokenizer()
        .map_err(paragen_infer::CheckpointError::from)?)
}

pub struct TrainTeacher(pub TrainArgs);

impl BackendTask for TrainTeacher {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = self.0;
        let overrides = args.run.to_lib();
        let opened = open_run(&args.out, &overrides, || {
            let tokenizer = data_tokenizer(&args.data)?;
            Ok(teacher_run(args.preset.to_lib(), &tokenizer, &args.data))
        })?;
        let config = &opened.config;
        B::seed(&device, config.training.train.seed);
        let model = Transformer::<B>::new(config.transformer(), &device)?;
        let model = starting_weights(&opened, model, &device)?;
        let objective = OwnLoss {
            label_smoothing: config.training.train.label_smoothing,
        };
        train_and_report(&opened, overrides.resume, model, &objective, &device)
    }
}

pub struct TrainStudent(pub TrainStudentArgs);

impl BackendTask for TrainStudent {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = self.0;
        let overrides = args.run.to_lib();
        let opened = open_run(&args.out, &overrides, || {
            let tokenizer = data_tokenizer(&args.data)?;
            student_run(
                args.kind(),
                args.preset.to_lib(),
                &tokenizer,
                &args.data,
                args.recipe(),
            )
        })?;
        let config = &opened.config;
        let student = config
            .training
            .student
            .clone()
            .with_context(|| format!("{} is not a student run", args.out.display()))?;
        let teacher = match &student.teacher {
            Some(dir) => {
                let (teacher_config, teacher) = RunDir::new(dir).load_transformer::<B>(&device)?;
                let (theirs, ours) = (
                    teacher_config.transformer().vocab_size,
                    config.transformer().vocab_size,
                );
                if theirs != ours {
                    bail!(
                        "the teacher in {} has a vocabulary of {theirs}, the data in {} one of \
                         {ours}: distill with this teacher first",
                        dir.display(),
                        config.data_dir.display(),
                    );
                }
                Some(teacher)
            }
            None => None,
        };
        let resume = overrides.resume;
        let from_teacher = student.init_from_teacher
            && opened.checkpoint.is_none()
            && config.training.init_from.is_none();
        let label_smoothing = config.training.train.label_smoothing;
        B::seed(&device, config.training.train.seed);
        match &config.model {
            ModelConfig::Nat(nat) => {
                let mut model = NatStudent::<B>::new(nat, &device)?;
                if from_teacher {
                    model
                        .init_from_teacher(teacher.as_ref().context("no teacher to start from")?)?;
                }
                let model = starting_weights(&opened, model, &device)?;
                let objective = nat_objective(student.glance_ratio, label_smoothing);
                train_and_report(&opened, resume, model, objective.as_ref(), &device)
            }
            ModelConfig::Ar(shapes) => {
                let mut model = Transformer::<B>::new(shapes, &device)?;
                if from_teacher {
                    model
                        .init_from_teacher(teacher.as_ref().context("no teacher to start from")?)?;
                }
                let model = starting_weights(&opened, model, &device)?;
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
                train_and_report(&opened, resume, model, objective.as_ref(), &device)
            }
        }
    }
}
