//! The memory a decode needs, estimated before it starts: a batch that cannot fit is
//! refused with numbers instead of being killed by the kernel hours later (`--beam 64
//! --batch-size 4096` once asked for terabytes and was OOM-killed at 24 GB).
//!
//! The estimate counts the large tensors of one batch in f32 (KV caches, attention
//! scores, feed-forward activations, output logits and their temporaries); it is meant to
//! be within a small factor of the truth, and is compared against the memory the
//! operating system reports as available.

use paragen_models::nat::NatDecoder;

use crate::translate::{Decoding, Model};
use burn::prelude::Backend;

/// Bytes a batch of `batch` sentences of at most `src_len` tokens needs to decode.
pub fn decode_bytes<B: Backend>(
    model: &Model<B>,
    decoding: &Decoding,
    batch: usize,
    src_len: usize,
) -> f64 {
    let config = model.config();
    let (b, s) = (batch as f64, src_len as f64);
    let (d, ff, v, heads) = (
        config.d_model as f64,
        config.d_ff as f64,
        config.vocab_size as f64,
        config.n_heads as f64,
    );
    // The encoder: activations and one layer's attention scores.
    let encoder = b * s * (ff + 4.0 * d) + b * heads * s * s;
    let positions = config.max_positions as f64;
    let floats = match (model, decoding) {
        (
            Model::Ar(_),
            Decoding::Greedy(limit) | Decoding::Beam(paragen_models::BeamOptions { limit, .. }),
        ) => {
            let beam = match decoding {
                Decoding::Beam(o) => o.beam_size.max(1) as f64,
                _ => 1.0,
            };
            let rows = b * beam;
            let t = limit.max_len(src_len, config.max_positions) as f64 + 1.0;
            let caches = config.decoder_layers as f64 * 2.0 * rows * (t + s) * d;
            // Logits, their log-softmax and the host copy beam search reads.
            let step = rows * (3.0 * v + ff + 4.0 * d + heads * (t + s));
            encoder + caches + step
        }
        (Model::Nat(nat), Decoding::Nat(options)) => {
            let t = match nat.config().decoder {
                NatDecoder::Ctc { upsample } => (upsample as f64 * s).min(positions),
                NatDecoder::Cmlm => (s + nat.config().max_length_offset as f64).min(positions),
            };
            let rows = b * options.length_beam.max(1) as f64;
            // The vocabulary logits exist a chunk of positions at a time (decode_best).
            let logit_rows = (rows * t).min(paragen_models::nat::PROJECTION_ROWS as f64);
            encoder + logit_rows * 2.0 * v + rows * t * (ff + 4.0 * d) + rows * heads * t * (t + s)
        }
        // A decoding that does not apply fails with its own error later.
        _ => encoder,
    };
    4.0 * floats
}

/// Memory the operating system can give this process now, in bytes (Linux:
/// `MemAvailable`); `None` where it cannot be read, which skips the check.
pub fn available_bytes() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// Refuses `needed` bytes when more than `available` are asked.
pub fn check_fits(needed: f64, available: Option<f64>) -> Result<(), (f64, f64)> {
    match available {
        Some(available) if needed > available => Err((needed, available)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::Translator;
    use paragen_data::SpecialTokens;
    use paragen_models::{BeamOptions, Transformer, TransformerConfig};

    type B = paragen_backend::TestBackend;

    fn quick_teacher() -> Model<B> {
        let config = TransformerConfig::quick(8000, SpecialTokens::trained());
        Model::Ar(Transformer::new(&config, &Default::default()).unwrap())
    }

    #[test]
    fn a_wide_beam_over_a_big_batch_is_refused_with_numbers() {
        let model = quick_teacher();
        let beam = Decoding::Beam(BeamOptions {
            beam_size: 64,
            ..BeamOptions::default()
        });
        let translator = Translator {
            model: &model,
            decoding: beam,
            rescorer: None,
        };
        let lengths = vec![200; 4096];
        let batches = vec![(0..4096).collect::<Vec<_>>()];
        // Hundreds of GiB: more than any machine this runs on has.
        let needed = decode_bytes(&model, &beam, 4096, 200);
        assert!(needed > 100.0 * f64::from(1u32 << 30), "{needed}");
        let err = translator.check_memory(&batches, &lengths).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("GiB") && text.contains("--batch-size"),
            "{text}"
        );
    }

    #[test]
    fn an_ordinary_batch_fits() {
        let model = quick_teacher();
        let greedy = Decoding::Greedy(Default::default());
        let needed = decode_bytes(&model, &greedy, 64, 40);
        // A few hundred MB at most for the quick teacher's default batch.
        assert!(needed < 512.0 * 1024.0 * 1024.0, "{needed}");
        assert!(check_fits(needed, Some(needed * 2.0)).is_ok());
        assert!(check_fits(needed, Some(needed / 2.0)).is_err());
        assert!(check_fits(needed, None).is_ok());
    }
}
