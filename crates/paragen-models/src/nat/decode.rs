//! Parallel decoding of a NAT student: length prediction, one pass or mask-predict
//! refinement (Ghazvininejad et al. 2019) over a length beam, and noisy parallel
//! decoding, where the AR teacher rescores the candidates (Gu et al. 2018).

use burn::prelude::*;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use super::pass::output_tokens;
use super::{NatCandidate, NatDecoder, NatStudent, ctc};
use crate::error::ModelError;
use crate::layers::EncoderOutput;
use crate::teacher::Transformer;

/// How a NAT student decodes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NatDecoding {
    /// Target lengths tried per sentence (1: only the most likely).
    pub length_beam: usize,
    /// Mask-predict passes (1: one parallel pass).
    pub iterations: usize,
    /// Merge runs of the same token into one: parallel decoders tend to write a token
    /// at two neighbouring positions ("the the"), the classic NAT failure (Gu et al.).
    pub collapse_repeats: bool,
    /// CTC: subtracted from the blank's logit at every position before the argmax, so a
    /// positive penalty writes more tokens (a model that under-generates); tuned on the
    /// valid split (Gu & Kong 2021 tune it the same way). 0 leaves decoding unchanged.
    pub blank_penalty: f32,
}

impl NatDecoding {
    /// Short name for reports: `one-pass`, `length-beam-3`, `mask-predict-4`, ...
    pub fn name(&self) -> String {
        let mut name = match self.iterations {
            0 | 1 => "one-pass".to_string(),
            k => format!("mask-predict-{k}"),
        };
        if self.length_beam > 1 {
            name = format!("{name}-lb{}", self.length_beam);
        }
        if self.blank_penalty != 0.0 {
            name = format!("{name}-bp{}", self.blank_penalty);
        }
        name
    }
}

impl Default for NatDecoding {
    fn default() -> Self {
        Self {
            length_beam: 1,
            iterations: 1,
            collapse_repeats: true,
            blank_penalty: 0.0,
        }
    }
}

/// Decodes sources in parallel: predicts lengths, then runs `iterations` passes of
/// mask-predict (Ghazvininejad et al. 2019) over every length candidate at once.
/// Returns, per source, all candidates (length-beam order) so callers can rescore; the
/// best by the student's own score is [`best_candidate`].
pub fn nat_decode<B: Backend>(
    model: &NatStudent<B>,
    sources: &[Vec<u32>],
    options: NatDecoding,
) -> Result<Vec<Vec<NatCandidate>>, ModelError> {
    let config = &model.config().transformer;
    let src_lens: Vec<usize> = sources.iter().map(|s| s.len()).collect();
    config.check_source_lengths(&src_lens)?;
    if let NatDecoder::Ctc { .. } = model.config().decoder {
        if options.iterations > 1 || options.length_beam > 1 {
            return Err(ModelError::Unsupported(
                "a CTC student decodes in one pass: its length is not predicted, so there \
                 is no length beam, and mask-predict needs a CMLM student"
                    .into(),
            ));
        }
        return ctc::ctc_decode(model, sources, options);
    }
    if options.blank_penalty != 0.0 {
        return Err(ModelError::Unsupported(
            "a blank penalty applies to CTC students; this one predicts its length".into(),
        ));
    }
    let device = model.device();
    let special = config.special;
    let slices: Vec<&[u32]> = sources.iter().map(|s| s.as_slice()).collect();
    let src = paragen_data::batch::pad_to_tensor(&slices, special.pad, &device);
    let encoded = model.encode(src);
    let vocabulary = model.output_vocabulary(&slices);
    let lengths = model.predict_lengths(&encoded, &src_lens, options.length_beam);
    let beam = lengths[0].len();
    // Row `i * beam + j` decodes sentence `i` at its `j`-th length candidate.
    let rows: Vec<usize> = (0..sources.len() * beam).collect();
    let row_lengths: Vec<usize> = rows.iter().map(|&r| lengths[r / beam][r % beam]).collect();
    let expand: Vec<i64> = rows.iter().map(|&r| (r / beam) as i64).collect();
    let expand = Tensor::<B, 1, Int>::from_data(
        TensorData::new(expand, [rows.len()]).convert::<B::IntElem>(),
        &device,
    );
    let encoded = EncoderOutput {
        memory: encoded.memory.select(0, expand.clone()),
        src_mask: encoded.src_mask.select(0, expand),
    };
    let width = row_lengths.iter().copied().max().unwrap_or(1);
    let mut tokens: Vec<Vec<u32>> = row_lengths.iter().map(|&n| vec![special.mask; n]).collect();
    let mut probs: Vec<Vec<f32>> = row_lengths.iter().map(|&n| vec![0.0; n]).collect();
    let iterations = options.iterations.max(1);
    for it in 0..iterations {
        let input: Vec<&[u32]> = tokens.iter().map(|t| t.as_slice()).collect();
        let tgt = paragen_data::batch::pad_to_tensor(&input, special.pad, &device);
        let (best, ids) =
            model.decode_best(&encoded, tgt, &row_lengths, 0.0, vocabulary.as_deref());
        for r in 0..rows.len() {
            for j in 0..row_lengths[r] {
                // Only masked positions are re-predicted (all of them in the first pass).
                if tokens[r][j] == special.mask {
                    tokens[r][j] = ids[r * width + j] as u32;
                    probs[r][j] = best[r * width + j];
                }
            }
        }
        if it + 1 < iterations {
            // Re-mask the n least confident tokens, n shrinking linearly to zero.
            for r in 0..rows.len() {
                let n = row_lengths[r] * (iterations - 1 - it) / iterations;
                let mut order: Vec<usize> = (0..row_lengths[r]).collect();
                order.sort_by(|&a, &b| probs[r][a].total_cmp(&probs[r][b]));
                for &j in order.iter().take(n) {
                    tokens[r][j] = special.mask;
                }
            }
        }
    }
    Ok((0..sources.len())
        .map(|i| {
            (0..beam)
                .map(|j| {
                    let r = i * beam + j;
                    let score = probs[r].iter().sum::<f32>() / row_lengths[r].max(1) as f32;
                    let mut kept = output_tokens(tokens[r].iter().copied(), special);
                    if options.collapse_repeats {
                        kept.dedup();
                    }
                    NatCandidate {
                        tokens: kept,
                        score,
                    }
                })
                .collect()
        })
        .collect())
}

/// The candidate with the best average log-probability.
pub fn best_candidate(candidates: &[NatCandidate]) -> Vec<u32> {
    candidates
        .iter()
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .map(|c| c.tokens.clone())
        .unwrap_or_default()
}

/// Noisy parallel decoding (Gu et al. 2018): the autoregressive `teacher` scores every
/// candidate of every source in one teacher-forced pass and the best per source wins.
pub fn rescore_with_teacher<B: Backend>(
    teacher: &Transformer<B>,
    sources: &[Vec<u32>],
    candidates: &[Vec<NatCandidate>],
) -> Result<Vec<Vec<u32>>, ModelError> {
    let (mut flat_sources, mut flat_targets) = (Vec::new(), Vec::new());
    for (source, options) in sources.iter().zip(candidates) {
        for candidate in options {
            flat_sources.push(source.clone());
            flat_targets.push(candidate.tokens.clone());
        }
    }
    let scores = teacher.sequence_scores(&flat_sources, &flat_targets)?;
    let mut next = 0;
    Ok(candidates
        .iter()
        .map(|options| {
            let scored = &scores[next..next + options.len()];
            next += options.len();
            let best = (0..options.len())
                .max_by(|&a, &b| scored[a].total_cmp(&scored[b]))
                .unwrap_or(0);
            options
                .get(best)
                .map(|c| c.tokens.clone())
                .unwrap_or_default()
        })
        .collect())
}
