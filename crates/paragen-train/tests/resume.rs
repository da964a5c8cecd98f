//! A run interrupted after one epoch and resumed must end exactly where an
//! uninterrupted run ends: same weights, same step, same optimizer and schedule state.

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use paragen_backend::TestAutodiffBackend;
use paragen_data::{MalformedLines, Tokenizer, encode_pairs, read_tsv};
use paragen_infer::{Model, ModelConfig, ModelKind, RunConfig, RunDir};
use paragen_models::nat::{NatConfig, NatDecoder, NatStudent};
use paragen_models::{Transformer, TransformerConfig};
use paragen_train::objective::{Glancing, Objective, OwnLoss, SeqModel};
use paragen_train::trainer::TrainData;
use paragen_train::{StudentConfig, TrainConfig, Training, train};

type B = TestAutodiffBackend;

const OWN_LOSS: OwnLoss = OwnLoss {
    label_smoothing: 0.1,
};

fn data() -> (Tokenizer, TrainData) {
    let corpus =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/bible-en-fr.tsv.gz");
    let pairs = read_tsv(&corpus, MalformedLines::Error).unwrap().pairs;
    let (train, valid) = (&pairs[..120], &pairs[120..132]);
    let tokenizer = Tokenizer::train(
        train.iter().flat_map(|p| [p.src.as_str(), p.tgt.as_str()]),
        400,
    )
    .unwrap();
    let data = TrainData {
        train: encode_pairs(&tokenizer, train).unwrap(),
        valid: encode_pairs(&tokenizer, valid).unwrap(),
        valid_references: valid.iter().map(|p| p.tgt.clone()).collect(),
    };
    (tokenizer, data)
}

fn fresh_model(tokenizer: &Tokenizer) -> Transformer<B> {
    let device = Default::default();
    B::seed(&device, 11);
    let config = TransformerConfig {
        max_positions: 256,
        ..TransformerConfig::tiny(tokenizer.vocab_size(), tokenizer.special())
    };
    Transformer::new(&config, &device).unwrap()
}

fn outputs(run: &RunDir, tokenizer: &Tokenizer) -> Vec<f32> {
    let device = Default::default();
    let model = run
        .latest_checkpoint()
        .unwrap()
        .expect("a checkpoint set")
        .load_weights::<B, _>(fresh_model(tokenizer), &device)
        .unwrap();
    let src = paragen_data::batch::pad_to_tensor::<B>(&[&[5, 6, 7, 8]], 0, &device);
    let tgt = paragen_data::batch::pad_to_tensor::<B>(&[&[1, 9, 10]], 0, &device);
    model.forward(src, tgt).into_data().iter::<f32>().collect()
}

/// Two runs of the same model and objective: two epochs straight, and one epoch then a
/// resumed second (from a fresh model: `resume` must replace its weights).
struct StraightAndResumed {
    _dirs: [tempfile::TempDir; 2],
    straight: RunDir,
    resumed: RunDir,
}

fn straight_and_resumed<M>(
    tokenizer: &Tokenizer,
    data: &TrainData,
    fresh: impl Fn() -> M,
    objective: &dyn Objective<B, M>,
) -> StraightAndResumed
where
    M: AutodiffModule<B> + SeqModel<B>,
    M::InnerModule: SeqModel<<B as AutodiffBackend>::InnerBackend>,
{
    let device = Default::default();
    let config = |epochs| TrainConfig {
        max_epochs: epochs,
        ..TrainConfig::tiny()
    };
    let run = |dir: &tempfile::TempDir, epochs, resume: bool| {
        let run = RunDir::new(dir.path());
        let checkpoint = resume.then(|| run.latest_checkpoint().unwrap().unwrap());
        train(
            &run,
            &config(epochs),
            tokenizer,
            data,
            fresh(),
            objective,
            checkpoint.as_ref(),
            &device,
        )
        .unwrap()
    };
    let (straight, resumed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let summary = run(&straight, 2, false);
    assert_eq!(summary.epochs, 2);
    run(&resumed, 1, false);
    assert_eq!(run(&resumed, 2, true).steps, summary.steps);
    let lines = |dir: &tempfile::TempDir| {
        std::fs::read_to_string(dir.path().join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(lines(&resumed), 2);
    StraightAndResumed {
        straight: RunDir::new(straight.path()),
        resumed: RunDir::new(resumed.path()),
        _dirs: [straight, resumed],
    }
}

/// Multi-threaded reductions may sum in another order, so allow float noise; a run that
/// restarted its optimizer or schedule would differ by orders of magnitude more.
fn assert_close(a: &[f32], b: &[f32], what: &str) {
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "{what} differ by up to {diff}");
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let (tokenizer, data) = data();
    let runs = straight_and_resumed(&tokenizer, &data, || fresh_model(&tokenizer), &OWN_LOSS);
    assert_close(
        &outputs(&runs.resumed, &tokenizer),
        &outputs(&runs.straight, &tokenizer),
        "resumed and uninterrupted runs",
    );
}

#[test]
fn training_lowers_the_loss() {
    let (tokenizer, data) = data();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let config = TrainConfig {
        max_epochs: 4,
        ..TrainConfig::tiny()
    };
    train(
        &run,
        &config,
        &tokenizer,
        &data,
        fresh_model(&tokenizer),
        &OWN_LOSS,
        None,
        &Default::default(),
    )
    .unwrap();
    let losses: Vec<f64> = std::fs::read_to_string(dir.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["train_loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert!(losses[3] < losses[0] - 0.5, "{losses:?}");
}

fn fresh_nat(tokenizer: &Tokenizer, decoder: NatDecoder) -> NatStudent<B> {
    let device = Default::default();
    B::seed(&device, 12);
    let config = TransformerConfig {
        max_positions: 256,
        ..TransformerConfig::tiny(tokenizer.vocab_size(), tokenizer.special())
    };
    let config = NatConfig {
        decoder,
        ..NatConfig::new(config)
    };
    NatStudent::new(&config, &device).unwrap()
}

/// A glancing NAT run (CMLM or CTC) resumes exactly, and `run.json` alone rebuilds it to
/// identical outputs.
fn glancing_nat_resumes_and_reloads(decoder: NatDecoder) {
    let (tokenizer, data) = data();
    let device = Default::default();
    let glancing = Glancing {
        ratio: 0.5,
        label_smoothing: 0.1,
    };
    let fresh = || fresh_nat(&tokenizer, decoder);
    let runs = straight_and_resumed(&tokenizer, &data, fresh, &glancing);
    let sources = vec![vec![5u32, 6, 7, 8], vec![9, 10]];
    let decode = |m: &NatStudent<B>| {
        paragen_models::nat::nat_decode(m, &sources, Default::default()).unwrap()
    };
    let scores = |run: &RunDir| -> Vec<f32> {
        let model = run
            .latest_checkpoint()
            .unwrap()
            .expect("a checkpoint set")
            .load_weights::<B, _>(fresh(), &device)
            .unwrap();
        decode(&model).iter().flatten().map(|c| c.score).collect()
    };
    assert_close(
        &scores(&runs.resumed),
        &scores(&runs.straight),
        "resumed and uninterrupted NAT runs",
    );

    let run_config = RunConfig {
        kind: match decoder {
            NatDecoder::Cmlm => ModelKind::Nat,
            NatDecoder::Ctc { .. } => ModelKind::NatCtc,
        },
        preset: "test".into(),
        model: ModelConfig::Nat(fresh().config().clone()),
        data_dir: "data".into(),
        paragen_version: env!("CARGO_PKG_VERSION").into(),
        training: Training {
            train: TrainConfig::tiny(),
            init_from: None,
            student: Some(StudentConfig {
                teacher: None,
                glance_ratio: Some(0.5),
                kd_weight: 0.0,
                kd_temperature: 1.0,
                init_from_teacher: false,
            }),
        },
    };
    runs.straight.save_config(&run_config).unwrap();
    let (_, reloaded) = runs.straight.load_model::<B>(&device).unwrap();
    let Model::Nat(reloaded) = reloaded else {
        panic!("a nat run reloaded as another kind");
    };
    assert_eq!(reloaded.config().decoder, decoder);
    let best = runs
        .straight
        .load_module::<B, _>("model.mpk", fresh(), &device)
        .unwrap();
    assert_eq!(decode(&reloaded), decode(&best));
}

#[test]
fn a_glancing_cmlm_nat_run_resumes_exactly_and_its_checkpoint_reloads() {
    glancing_nat_resumes_and_reloads(NatDecoder::Cmlm);
}

#[test]
fn a_glancing_ctc_nat_run_resumes_exactly_and_its_checkpoint_reloads() {
    glancing_nat_resumes_and_reloads(NatDecoder::Ctc { upsample: 2 });
}
