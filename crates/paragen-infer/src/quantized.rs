//! Quantized runs: a run whose attention, feed-forward and embedding weights are int8
//! or int4 (`paragen_models::dense`, `paragen_models::embedding`), marked by
//! `quantization.json` and saved with one byte per integer value (two int4 values per
//! byte).
//! [`RunDir::load_model`] reads such a run like any other; [`write_quantized_run`]
//! makes one from a model.

use std::path::Path;

use burn::module::Module;
use burn::prelude::Backend;
use burn::record::{NamedMpkBytesRecorder, PrecisionSettings, Recorder};
use paragen_models::dense::QUANTIZED_BITS;
use serde::{Deserialize, Serialize};

use crate::derived::{SIDE_FILES, derive_run};
use crate::run_dir::{CheckpointError, Model, RunDir};

/// The file that marks a run as quantized and says how.
pub const QUANTIZATION_FILE: &str = "quantization.json";

/// How a run's weights are quantized.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quantization {
    /// 8 or 4.
    pub bits: u8,
    /// What the values mean, for people reading the file.
    pub scheme: String,
}

impl Quantization {
    pub fn new(bits: u8) -> Self {
        Self {
            bits,
            scheme: "symmetric, one f16 scale per output column of each attention and \
                     feed-forward weight and per token of the shared embedding; \
                     activations quantized per row at run time; norms and biases f32"
                .into(),
        }
    }
}

/// Integer weights one byte each; the few float parameters left (scales, biases,
/// norms) in full precision, so that the run reloads to exactly the model that wrote it.
#[derive(Debug, Default, Clone)]
struct QuantizedPrecision;

impl PrecisionSettings for QuantizedPrecision {
    type FloatElem = f32;
    type IntElem = i8;
}

impl RunDir {
    /// The run's quantization, `None` for a float run.
    pub fn load_quantization(&self) -> Result<Option<Quantization>, CheckpointError> {
        if !self.path(QUANTIZATION_FILE).exists() {
            return Ok(None);
        }
        let quantization: Quantization = self.read_json(QUANTIZATION_FILE)?;
        if !QUANTIZED_BITS.contains(&quantization.bits) {
            return Err(CheckpointError::Corrupt {
                path: self.path(QUANTIZATION_FILE).display().to_string(),
                reason: format!(
                    "`bits` is {}; quantized weights have {QUANTIZED_BITS:?} bits",
                    quantization.bits
                ),
            });
        }
        Ok(Some(quantization))
    }

    /// `model` in the layout the run's weights load into: quantized when the run is.
    pub(crate) fn quantized_layout<B: Backend>(
        &self,
        model: Model<B>,
    ) -> Result<Model<B>, CheckpointError> {
        Ok(match self.load_quantization()? {
            Some(q) => model.quantized_layout(q.bits),
            None => model,
        })
    }

    /// Saves the weights of a model to ship (`model.mpk`): a quantized model as such,
    /// with its `quantization.json`; a float one in half precision.
    pub(crate) fn save_shipped_model<B: Backend>(
        &self,
        model: &Model<B>,
    ) -> Result<(), CheckpointError> {
        let file = "model.mpk";
        let Some(bits) = model.quantized_bits() else {
            return match model {
                Model::Ar(m) => self.save_module_half::<B, _>(file, m),
                Model::Nat(m) => self.save_module_half::<B, _>(file, m),
            };
        };
        let recorder = NamedMpkBytesRecorder::<QuantizedPrecision>::default();
        let record = |bytes: Result<Vec<u8>, burn::record::RecorderError>| {
            bytes.map_err(|e| CheckpointError::Corrupt {
                path: self.path(file).display().to_string(),
                reason: e.to_string(),
            })
        };
        let bytes = match model {
            Model::Ar(m) => record(Recorder::<B>::record(
                &recorder,
                m.clone().into_record(),
                (),
            ))?,
            Model::Nat(m) => record(Recorder::<B>::record(
                &recorder,
                m.clone().into_record(),
                (),
            ))?,
        };
        paragen_data::fsio::write_atomic(&self.path(file), &bytes)?;
        self.write_json(QUANTIZATION_FILE, &Quantization::new(bits))
    }
}

/// Writes to `out` a copy of the run `from` (tokenizer, tuned decoding, shortlist, logs,
/// config) holding `model`, which must be quantized. `out` must not hold a run yet.
pub fn write_quantized_run<B: Backend>(
    from: &RunDir,
    out: &Path,
    model: &Model<B>,
) -> Result<RunDir, CheckpointError> {
    assert!(
        model.quantized_bits().is_some(),
        "write_quantized_run is given a quantized model"
    );
    let run = derive_run(from, out, &SIDE_FILES)?;
    run.save_shipped_model(model)?;
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run_dir::{ModelConfig, ModelKind, RunConfig, TrainingJson};
    use paragen_backend::TestBackend as B;
    use paragen_data::SpecialTokens;
    use paragen_models::{LengthLimit, Transformer, TransformerConfig, greedy};

    fn float_run() -> (tempfile::TempDir, RunDir, Transformer<B>) {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("float"));
        std::fs::create_dir_all(run.root()).unwrap();
        let config = RunConfig {
            kind: ModelKind::Ar,
            preset: "test".into(),
            model: ModelConfig::Ar(TransformerConfig::tiny(40, SpecialTokens::trained())),
            data_dir: "data".into(),
            paragen_version: env!("CARGO_PKG_VERSION").into(),
            training: TrainingJson::new(),
        };
        let model = Transformer::<B>::new(config.transformer(), &Default::default()).unwrap();
        run.save_config(&config).unwrap();
        run.save_module::<B, _>("model.mpk", &model).unwrap();
        (dir, run, model)
    }

    fn size(run: &RunDir) -> u64 {
        std::fs::metadata(run.path("model.mpk")).unwrap().len()
    }

    #[test]
    fn a_quantized_run_reloads_to_the_model_that_wrote_it() {
        let (dir, float, model) = float_run();
        let sources = vec![vec![5, 6, 7, 8], vec![9, 10, 11]];
        let mut sizes = vec![size(&float)];
        for bits in [8, 4] {
            let quantized = Model::Ar(model.clone()).quantize(bits);
            let out = dir.path().join(format!("int{bits}"));
            let run = write_quantized_run(&float, &out, &quantized).unwrap();
            assert_eq!(
                run.load_quantization().unwrap(),
                Some(Quantization::new(bits))
            );
            let (_, reloaded) = run.load_model::<B>(&Default::default()).unwrap();
            assert_eq!(reloaded.quantized_bits(), Some(bits));
            let (Model::Ar(quantized), Model::Ar(reloaded)) = (quantized, reloaded) else {
                panic!("an AR model stays AR");
            };
            let limit = LengthLimit::default();
            assert_eq!(
                greedy(&quantized, &sources, limit).unwrap(),
                greedy(&reloaded, &sources, limit).unwrap()
            );
            let src =
                paragen_data::batch::pad_to_tensor::<B>(&[&[5, 6, 7]], 0, &Default::default());
            let tgt = paragen_data::batch::pad_to_tensor::<B>(&[&[1, 9]], 0, &Default::default());
            assert_eq!(
                quantized.forward(src.clone(), tgt.clone()).into_data(),
                reloaded.forward(src, tgt).into_data()
            );
            sizes.push(size(&run));
        }
        assert!(
            sizes[1] < sizes[0] && sizes[2] < sizes[1],
            "f32, int8, int4 bytes: {sizes:?}"
        );
    }

    #[test]
    fn a_quantization_file_with_other_bits_or_a_missing_weight_file_is_a_clear_error() {
        let (dir, float, model) = float_run();
        let out = dir.path().join("int8");
        let run = write_quantized_run(&float, &out, &Model::Ar(model).quantize(8)).unwrap();
        let file = run.path(QUANTIZATION_FILE);
        std::fs::write(&file, r#"{"bits": 5, "scheme": "?"}"#).unwrap();
        let err = run
            .load_model::<B>(&Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("quantization.json") && err.contains("`bits` is 5"),
            "{err}"
        );
        // Float weights under a quantized run's marker do not fit its layout.
        std::fs::write(&file, serde_json::to_vec(&Quantization::new(8)).unwrap()).unwrap();
        std::fs::copy(float.path("model.mpk"), run.path("model.mpk")).unwrap();
        let err = run
            .load_model::<B>(&Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.mpk"), "{err}");
    }
}
