//! A run interrupted after one epoch and resumed must end exactly where an
//! uninterrupted run ends: same weights, same step, same optimizer and schedule state.

use burn::prelude::*;
use paragen_backend::TestAutodiffBackend;
use paragen_data::{MalformedLines, Tokenizer, encode_pairs, read_tsv};
use paragen_models::nat::{NatConfig, NatStudent};
use paragen_models::{Transformer, TransformerConfig};
use paragen_train::Model;
use paragen_train::checkpoint::ModelKind;
use paragen_train::objective::{Glancing, OwnLoss};
use paragen_train::trainer::TrainData;
use paragen_train::{RunDir, TrainConfig, train};

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
        .load_module::<B, _>("last.mpk", fresh_model(tokenizer), &device)
        .unwrap();
    let src = paragen_data::batch::pad_to_tensor::<B>(&[&[5, 6, 7, 8]], 0, &device);
    let tgt = paragen_data::batch::pad_to_tensor::<B>(&[&[1, 9, 10]], 0, &device);
    model.forward(src, tgt).into_data().iter::<f32>().collect()
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let (tokenizer, data) = data();
    let device = Default::default();
    let two_epochs = TrainConfig {
        max_epochs: 2,
        ..TrainConfig::tiny()
    };
    let one_epoch = TrainConfig {
        max_epochs: 1,
        ..TrainConfig::tiny()
    };

    let straight_dir = tempfile::tempdir().unwrap();
    let straight = RunDir::new(straight_dir.path());
    let summary = train(
        &straight,
        &two_epochs,
        &tokenizer,
        &data,
        fresh_model(&tokenizer),
        &OWN_LOSS,
        false,
        &device,
    )
    .unwrap();
    assert_eq!(summary.epochs, 2);

    let resumed_dir = tempfile::tempdir().unwrap();
    let resumed = RunDir::new(resumed_dir.path());
    train(
        &resumed,
        &one_epoch,
        &tokenizer,
        &data,
        fresh_model(&tokenizer),
        &OWN_LOSS,
        false,
        &device,
    )
    .unwrap();
    // Any model will do: --resume replaces its weights with the saved ones.
    let summary2 = train(
        &resumed,
        &two_epochs,
        &tokenizer,
        &data,
        fresh_model(&tokenizer),
        &OWN_LOSS,
        true,
        &device,
    )
    .unwrap();

    assert_eq!(summary2.steps, summary.steps);
    // Multi-threaded reductions may sum in another order, so allow float noise; a run
    // that restarted its optimizer or schedule would differ by orders of magnitude more.
    let (a, b) = (
        outputs(&resumed, &tokenizer),
        outputs(&straight, &tokenizer),
    );
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff < 1e-4,
        "resumed and uninterrupted runs differ by up to {diff}"
    );
    let lines = |dir: &std::path::Path| {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(lines(resumed_dir.path()), 2);
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
        false,
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

fn fresh_nat(tokenizer: &Tokenizer) -> NatStudent<B> {
    let device = Default::default();
    B::seed(&device, 12);
    let config = TransformerConfig {
        max_positions: 256,
        ..TransformerConfig::tiny(tokenizer.vocab_size(), tokenizer.special())
    };
    NatStudent::new(&NatConfig::new(config), &device).unwrap()
}

#[test]
fn a_glancing_nat_run_resumes_exactly_and_its_checkpoint_reloads() {
    let (tokenizer, data) = data();
    let device = Default::default();
    let glancing = Glancing {
        ratio: 0.5,
        label_smoothing: 0.1,
    };
    let config = |epochs| TrainConfig {
        max_epochs: epochs,
        ..TrainConfig::tiny()
    };
    let straight_dir = tempfile::tempdir().unwrap();
    let straight = RunDir::new(straight_dir.path());
    let model = fresh_nat(&tokenizer);
    train(
        &straight,
        &config(2),
        &tokenizer,
        &data,
        model,
        &glancing,
        false,
        &device,
    )
    .unwrap();
    let resumed_dir = tempfile::tempdir().unwrap();
    let resumed = RunDir::new(resumed_dir.path());
    let model = fresh_nat(&tokenizer);
    train(
        &resumed,
        &config(1),
        &tokenizer,
        &data,
        model,
        &glancing,
        false,
        &device,
    )
    .unwrap();
    let model = fresh_nat(&tokenizer);
    train(
        &resumed,
        &config(2),
        &tokenizer,
        &data,
        model,
        &glancing,
        true,
        &device,
    )
    .unwrap();

    let encoded = |run: &RunDir| -> Vec<f32> {
        let model = run
            .load_module::<B, _>("last.mpk", fresh_nat(&tokenizer), &device)
            .unwrap();
        let src = paragen_data::batch::pad_to_tensor::<B>(&[&[5, 6, 7, 8]], 0, &device);
        let encoded = model.encode(src);
        let input = paragen_models::nat::all_mask_input::<B>(&[3], 4, 0, &device);
        model
            .decode(&encoded, input)
            .into_data()
            .iter::<f32>()
            .collect()
    };
    let (a, b) = (encoded(&resumed), encoded(&straight));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff < 1e-4,
        "resumed and uninterrupted NAT runs differ by up to {diff}"
    );

    // The run directory rebuilds the NAT from run.json alone and decodes identically.
    let mut run_config =
        paragen_train::checkpoint::test_config(tokenizer.vocab_size(), tokenizer.special());
    run_config.kind = ModelKind::Nat;
    run_config.model.max_positions = 256;
    straight.save_config(&run_config).unwrap();
    let (_, reloaded) = straight.load_model::<B>(&device).unwrap();
    let Model::Nat(reloaded) = reloaded else {
        panic!("a nat run reloaded as another kind");
    };
    let best = straight
        .load_module::<B, _>("model.mpk", fresh_nat(&tokenizer), &device)
        .unwrap();
    let sources = vec![vec![5u32, 6, 7, 8], vec![9, 10]];
    let decode = |m: &NatStudent<B>| {
        paragen_models::nat::nat_decode(m, &sources, Default::default()).unwrap()
    };
    assert_eq!(decode(&reloaded), decode(&best));
}
