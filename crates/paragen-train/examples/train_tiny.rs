//! Trains a tiny teacher on the first pairs of the shipped corpus through the library
//! API (no CLI), then translates with it: `cargo run --release -p paragen-train --example
//! train_tiny -- [OUT_DIR]`. A few seconds; the model is too small to translate well.

use burn::backend::{Autodiff, Flex};
use burn::prelude::Backend;
use paragen_data::{MalformedLines, Tokenizer, encode_pairs, read_tsv};
use paragen_infer::{RunDir, Translator, translate_texts};
use paragen_models::Transformer;
use paragen_train::objective::OwnLoss;
use paragen_train::trainer::TrainData;
use paragen_train::{Preset, teacher_run, train};

type B = Autodiff<Flex<f32>>;

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/tiny-teacher".into());
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/bible-en-fr.tsv.gz");
    let pairs = read_tsv(corpus.as_ref(), MalformedLines::Error)?.pairs;
    let (train_pairs, valid_pairs) = (&pairs[..400], &pairs[400..420]);
    let texts = train_pairs
        .iter()
        .flat_map(|p| [p.src.as_str(), p.tgt.as_str()]);
    let tokenizer = Tokenizer::train(texts, 500)?;
    let data = TrainData {
        train: encode_pairs(&tokenizer, train_pairs)?,
        valid: encode_pairs(&tokenizer, valid_pairs)?,
        valid_references: valid_pairs.iter().map(|p| p.tgt.clone()).collect(),
    };

    // The run directory holds everything needed to reload the model later.
    let run = RunDir::new(&out);
    let config = teacher_run(Preset::Tiny, &tokenizer, "data".as_ref());
    run.save_config(&config)?;
    run.save_tokenizer(&tokenizer)?;
    let device = Default::default();
    B::seed(&device, config.training.train.seed);
    let model = Transformer::<B>::new(config.transformer(), &device)?;
    let objective = OwnLoss {
        label_smoothing: 0.1,
    };
    let summary = train(
        &run,
        &config.training.train,
        &tokenizer,
        &data,
        model,
        &objective,
        None,
        &device,
    )?;
    println!(
        "trained {} steps; best valid BLEU {:.2}",
        summary.steps,
        summary.best_bleu.unwrap_or(0.0)
    );

    // Reload from disk, as any other program would, and translate.
    let (_, model) = RunDir::new(&out).load_model::<Flex<f32>>(&device)?;
    let out = translate_texts(
        &Translator::new(&model),
        &tokenizer,
        &[valid_pairs[0].src.as_str()],
        8,
        false,
    )?;
    println!("{}\n  -> {}", valid_pairs[0].src, out[0]);
    Ok(())
}
