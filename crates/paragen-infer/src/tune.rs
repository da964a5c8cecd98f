//! Decoding tuned on the valid split and stored beside the model, in the run's
//! `decoding.json`, so that every command decodes the model its best way by default.
//!
//! Today that is a CTC student's blank penalty: a CTC model that under-generates writes
//! much better translations when the blank's logit is lowered before the argmax (the
//! sweep of the shipped one is in `models/nat-ctc/TRAINING.md`), and the best penalty is a property
//! of the trained weights, not of the user's command line. Gu & Kong (2021) tune it the
//! same way, on the valid split.

use burn::prelude::*;
use paragen_data::{Pair, Tokenizer};
use paragen_models::nat::{CTC_BLANK_PENALTIES, NatDecoding};
use serde::{Deserialize, Serialize};

use crate::run_dir::{CheckpointError, RunDir};
use crate::translate::{Decoding, Model, TranslateError, Translator, evaluate};

/// The file in a run directory that holds its [`TunedDecoding`].
pub const DECODING_FILE: &str = "decoding.json";

/// One decoding setting tried while tuning, with its scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    pub blank_penalty: f32,
    pub bleu: f64,
    pub chrf: f64,
}

/// The decoding a run uses when the user asks for none: the best of a sweep on a split
/// the model did not train on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunedDecoding {
    /// CTC: subtracted from the blank's logit before the argmax.
    pub blank_penalty: f32,
    /// The split tuned on (`valid`) and how many of its sentences.
    pub split: String,
    pub sentences: usize,
    /// BLEU and chrF at `blank_penalty` on that split.
    pub bleu: f64,
    pub chrf: f64,
    /// Every setting tried, in order.
    pub sweep: Vec<SweepPoint>,
}

impl RunDir {
    /// The run's tuned decoding, `None` when it was never tuned.
    pub fn load_tuned_decoding(&self) -> Result<Option<TunedDecoding>, CheckpointError> {
        if !self.path(DECODING_FILE).exists() {
            return Ok(None);
        }
        self.read_json(DECODING_FILE).map(Some)
    }

    pub fn save_tuned_decoding(&self, tuned: &TunedDecoding) -> Result<(), CheckpointError> {
        self.write_json(DECODING_FILE, tuned)
    }
}

/// Sweeps a CTC student's blank penalty over [`CTC_BLANK_PENALTIES`] on `pairs` (the
/// valid split, named `split`) and returns the best by BLEU; the first best wins a tie,
/// so the smallest penalty that reaches it. Other models have nothing to tune.
pub fn tune_blank_penalty<B: Backend>(
    model: &Model<B>,
    tokenizer: &Tokenizer,
    pairs: &[Pair],
    split: &str,
    batch_size: usize,
) -> Result<TunedDecoding, TranslateError> {
    if !model.is_ctc() {
        return Err(TranslateError::Options(
            "only CTC students have a decoding to tune (their blank penalty); AR models and \
             CMLM students take --beam, --iterations and --length-beam on each command"
                .into(),
        ));
    }
    if pairs.is_empty() {
        return Err(TranslateError::Options(format!(
            "the {split} split is empty: there is nothing to tune on"
        )));
    }
    let mut sweep = Vec::new();
    for &blank_penalty in &CTC_BLANK_PENALTIES {
        let translator = Translator {
            model,
            decoding: Decoding::Nat(NatDecoding {
                blank_penalty,
                ..Default::default()
            }),
            rescorer: None,
        };
        let report = evaluate(&translator, tokenizer, pairs, batch_size, false)?;
        tracing::info!(
            "blank penalty {blank_penalty}: {split} BLEU {:.2}, chrF {:.2}",
            report.bleu,
            report.chrf
        );
        sweep.push(SweepPoint {
            blank_penalty,
            bleu: report.bleu,
            chrf: report.chrf,
        });
    }
    let best = sweep
        .iter()
        .fold(
            &sweep[0],
            |best, p| if p.bleu > best.bleu { p } else { best },
        )
        .clone();
    Ok(TunedDecoding {
        blank_penalty: best.blank_penalty,
        split: split.to_string(),
        sentences: pairs.len(),
        bleu: best.bleu,
        chrf: best.chrf,
        sweep,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use paragen_backend::TestBackend;
    use paragen_models::TransformerConfig;
    use paragen_models::nat::NatConfig;

    type B = TestBackend;

    fn pairs() -> Vec<Pair> {
        [
            ("the house is small", "la maison est petite"),
            ("a cat", "un chat"),
        ]
        .iter()
        .enumerate()
        .map(|(i, (src, tgt))| Pair {
            id: i.to_string(),
            src: src.to_string(),
            tgt: tgt.to_string(),
        })
        .collect()
    }

    fn tokenizer() -> Tokenizer {
        let pairs = pairs();
        let texts = pairs.iter().flat_map(|p| [p.src.as_str(), p.tgt.as_str()]);
        Tokenizer::train(texts.collect::<Vec<_>>().into_iter(), 80).unwrap()
    }

    #[test]
    fn a_ctc_sweep_keeps_the_best_setting_and_every_point_and_round_trips() {
        let tokenizer = tokenizer();
        let shapes = TransformerConfig::tiny(tokenizer.vocab_size(), tokenizer.special());
        let model = Model::<B>::new(
            &ModelConfig::Nat(NatConfig::ctc(shapes, 2)),
            &Default::default(),
        )
        .unwrap();
        let tuned = tune_blank_penalty(&model, &tokenizer, &pairs(), "valid", 8).unwrap();
        assert_eq!(tuned.sweep.len(), CTC_BLANK_PENALTIES.len());
        let best = tuned.sweep.iter().map(|p| p.bleu).fold(f64::MIN, f64::max);
        assert_eq!(tuned.bleu, best);
        let first_best = tuned.sweep.iter().find(|p| p.bleu == best).unwrap();
        assert_eq!(tuned.blank_penalty, first_best.blank_penalty);
        assert_eq!((tuned.split.as_str(), tuned.sentences), ("valid", 2));

        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        assert_eq!(run.load_tuned_decoding().unwrap(), None);
        run.save_tuned_decoding(&tuned).unwrap();
        assert_eq!(run.load_tuned_decoding().unwrap(), Some(tuned));
    }

    #[test]
    fn models_without_a_blank_have_nothing_to_tune() {
        let tokenizer = tokenizer();
        let shapes = TransformerConfig::tiny(tokenizer.vocab_size(), tokenizer.special());
        let device = Default::default();
        for config in [
            ModelConfig::Ar(shapes.clone()),
            ModelConfig::Nat(NatConfig::new(shapes.clone())),
        ] {
            let model = Model::<B>::new(&config, &device).unwrap();
            let error = tune_blank_penalty(&model, &tokenizer, &pairs(), "valid", 8).unwrap_err();
            assert!(error.to_string().contains("only CTC students"), "{error}");
        }
    }

    #[test]
    fn a_tuned_run_decodes_at_its_penalty_unless_asked_otherwise_and_releases_with_it() {
        let tokenizer = tokenizer();
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("ctc"));
        let shapes = TransformerConfig::tiny(tokenizer.vocab_size(), tokenizer.special());
        let config = crate::RunConfig {
            kind: crate::ModelKind::NatCtc,
            preset: "tiny".into(),
            model: ModelConfig::Nat(NatConfig::ctc(shapes, 2)),
            data_dir: dir.path().join("no-data"),
            paragen_version: "test".into(),
            training: crate::TrainingJson::new(),
        };
        let device = Default::default();
        let Model::Nat(student) = Model::<B>::new(&config.model, &device).unwrap() else {
            unreachable!("a CTC config builds a NAT")
        };
        run.save_config(&config).unwrap();
        run.save_tokenizer(&tokenizer).unwrap();
        run.save_module::<B, _>("model.mpk", &student).unwrap();

        let penalty_of = |request: &crate::DecodeRequest| match crate::LoadedRun::<B>::open(
            run.root(),
            request,
            None,
            &device,
        )
        .unwrap()
        .decoding
        {
            Decoding::Nat(options) => options.blank_penalty,
            other => panic!("a CTC student decoded as {other:?}"),
        };
        let unspecified = crate::DecodeRequest::default();
        assert_eq!(penalty_of(&unspecified), 0.0);
        let mut tuned = tune_blank_penalty(
            &crate::LoadedRun::<B>::open(run.root(), &unspecified, None, &device)
                .unwrap()
                .model,
            &tokenizer,
            &pairs(),
            "valid",
            8,
        )
        .unwrap();
        tuned.blank_penalty = 2.5;
        run.save_tuned_decoding(&tuned).unwrap();
        assert_eq!(penalty_of(&unspecified), 2.5);
        let explicit = crate::DecodeRequest {
            blank_penalty: Some(0.0),
            ..unspecified
        };
        assert_eq!(penalty_of(&explicit), 0.0);

        let to = dir.path().join("models").join("nat-ctc");
        let info = crate::release::release::<B>(run.root(), &to, &pairs(), "test", false, &device)
            .unwrap();
        let names: Vec<&str> = info.test.iter().map(|t| t.decoding.as_str()).collect();
        assert_eq!(names, ["ctc2-one-pass", "ctc2-one-pass-bp2.5"]);
        assert_eq!(info.tuned_decoding.as_ref(), Some(&tuned));
        assert_eq!(RunDir::new(&to).load_tuned_decoding().unwrap(), Some(tuned));
        let page = std::fs::read_to_string(to.join("TRAINING.md")).unwrap();
        assert!(page.contains("## Tuned decoding"), "{page}");
    }
}
