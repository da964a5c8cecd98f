//! Autoregressive search over a [`Transformer`]: batched greedy and beam search, both
//! on the KV cache, plus an uncached greedy reference used to test the cache.
//!
//! Beam search follows fairseq's `SequenceGenerator`: each step keeps the `2k` best
//! continuations of the `k` live hypotheses, finalizes those among the top `k` that end
//! in EOS (score divided by `length ^ length_penalty`), and refills the `k` live beams
//! from the rest; a sentence is done when `k` hypotheses are finished. With `k = 1` this is
//! exactly greedy search.

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;

use crate::error::ModelError;
use crate::teacher::Transformer;

/// Longest output allowed for a source of `n` tokens: `ceil(ratio * n) + extra`, capped
/// by the model's positions.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LengthLimit {
    pub ratio: f32,
    pub extra: usize,
}

impl Default for LengthLimit {
    fn default() -> Self {
        Self {
            ratio: 1.5,
            extra: 10,
        }
    }
}

impl LengthLimit {
    /// Maximum number of output tokens (EOS not counted) for a source length.
    pub fn max_len(&self, src_len: usize, max_positions: usize) -> usize {
        let wanted = (self.ratio * src_len as f32).ceil() as usize + self.extra;
        wanted.min(max_positions.saturating_sub(1)).max(1)
    }
}

/// Options of beam search.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BeamOptions {
    /// Live hypotheses per sentence (`1` is greedy).
    pub beam_size: usize,
    /// Exponent of the length normalization of finished hypotheses (`0`: none).
    pub length_penalty: f32,
    pub limit: LengthLimit,
}

impl Default for BeamOptions {
    fn default() -> Self {
        Self {
            beam_size: 4,
            length_penalty: 1.0,
            limit: LengthLimit::default(),
        }
    }
}

fn int_tensor<B: Backend>(
    values: Vec<i64>,
    shape: [usize; 1],
    device: &B::Device,
) -> Tensor<B, 1, Int> {
    Tensor::from_data(
        TensorData::new(values, shape).convert::<B::IntElem>(),
        device,
    )
}

fn to_i64<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Vec<i64> {
    t.into_data().iter::<i64>().collect()
}

/// Checks and pads a batch of sources; returns the tensor and per-sentence output limits.
fn prepare<B: Backend>(
    model: &Transformer<B>,
    sources: &[Vec<u32>],
    limit: LengthLimit,
) -> Result<(Tensor<B, 2, Int>, Vec<usize>), ModelError> {
    let lengths: Vec<usize> = sources.iter().map(|s| s.len()).collect();
    model.check_source_lengths(&lengths)?;
    let config = model.config();
    let slices: Vec<&[u32]> = sources.iter().map(|s| s.as_slice()).collect();
    let src = paragen_data::batch::pad_to_tensor(&slices, config.special.pad, &model.device());
    let limits = lengths
        .iter()
        .map(|&n| limit.max_len(n, config.max_positions))
        .collect();
    Ok((src, limits))
}

/// Batched greedy decoding with the KV cache. Returns token ids without BOS/EOS.
///
/// Sentences that end leave the batch (their cache rows are dropped), so a long
/// sentence does not keep the finished ones computing.
pub fn greedy<B: Backend>(
    model: &Transformer<B>,
    sources: &[Vec<u32>],
    limit: LengthLimit,
) -> Result<Vec<Vec<u32>>, ModelError> {
    let (src, limits) = prepare(model, sources, limit)?;
    let encoded = model.encode(src);
    let mut state = model.start_decoding(&encoded);
    let special = model.config().special;
    let device = model.device();
    let mut outputs = vec![Vec::new(); sources.len()];
    // Sentence ids of the batch rows still decoding, in row order.
    let mut active: Vec<usize> = (0..sources.len()).collect();
    let mut tokens = vec![i64::from(special.bos); active.len()];
    while !active.is_empty() {
        let logits = model.decode_step(&mut state, int_tensor(tokens, [active.len()], &device));
        let next = to_i64(logits.argmax(1).squeeze_dim::<1>(1));
        let mut kept_rows = Vec::with_capacity(active.len());
        tokens = Vec::with_capacity(active.len());
        for (row, (&sentence, &token)) in active.iter().zip(&next).enumerate() {
            if token == i64::from(special.eos) {
                continue;
            }
            outputs[sentence].push(token as u32);
            if outputs[sentence].len() < limits[sentence] {
                kept_rows.push(row);
                tokens.push(token);
            }
        }
        if kept_rows.len() < active.len() && !kept_rows.is_empty() {
            let rows: Vec<i64> = kept_rows.iter().map(|&r| r as i64).collect();
            state = state.select(int_tensor(rows, [kept_rows.len()], &device));
        }
        active = kept_rows.into_iter().map(|r| active[r]).collect();
    }
    Ok(outputs)
}

/// Greedy decoding that re-runs the whole decoder on the prefix at every step, without
/// any cache. Slow; it exists to check that the cached path gives the same tokens.
pub fn greedy_uncached<B: Backend>(
    model: &Transformer<B>,
    sources: &[Vec<u32>],
    limit: LengthLimit,
) -> Result<Vec<Vec<u32>>, ModelError> {
    let (src, limits) = prepare(model, sources, limit)?;
    let encoded = model.encode(src);
    let special = model.config().special;
    let device = model.device();
    let mut search = GreedyProgress::new(limits, special.eos);
    while !search.all_done() {
        let prefixes: Vec<Vec<u32>> = search
            .outputs
            .iter()
            .map(|o| {
                std::iter::once(special.bos)
                    .chain(o.iter().copied())
                    .collect()
            })
            .collect();
        // Finished rows stop growing; padding them keeps every row the same length.
        let width = search.steps + 1;
        let padded: Vec<Vec<u32>> = prefixes
            .into_iter()
            .map(|mut p| {
                p.resize(width, special.pad);
                p
            })
            .collect();
        let slices: Vec<&[u32]> = padded.iter().map(|p| p.as_slice()).collect();
        let tgt = paragen_data::batch::pad_to_tensor(&slices, special.pad, &device);
        let logits = model.decode(&encoded, tgt);
        let [batch, time, vocab] = logits.dims();
        let last = logits
            .slice([0..batch, time - 1..time, 0..vocab])
            .squeeze_dim::<2>(1);
        search.push(&to_i64(last.argmax(1).squeeze_dim::<1>(1)));
    }
    Ok(search.outputs)
}

/// Book-keeping of batched greedy search.
struct GreedyProgress {
    outputs: Vec<Vec<u32>>,
    done: Vec<bool>,
    limits: Vec<usize>,
    eos: u32,
    steps: usize,
}

impl GreedyProgress {
    fn new(limits: Vec<usize>, eos: u32) -> Self {
        Self {
            outputs: vec![Vec::new(); limits.len()],
            done: vec![false; limits.len()],
            limits,
            eos,
            steps: 0,
        }
    }

    fn push(&mut self, next: &[i64]) {
        self.steps += 1;
        for (i, &token) in next.iter().enumerate() {
            if self.done[i] {
                continue;
            }
            if token == i64::from(self.eos) {
                self.done[i] = true;
            } else {
                self.outputs[i].push(token as u32);
                self.done[i] = self.outputs[i].len() >= self.limits[i];
            }
        }
    }

    fn all_done(&self) -> bool {
        self.done.iter().all(|&d| d)
    }
}

/// The `count` largest values with their indices, largest first; equal values keep
/// index order, NaN counts as minus infinity.
///
/// One pass over the values: burn's `topk` sorts the whole row, which cost more than the
/// decoder step itself at beam 4 over an 8k vocabulary.
fn best_candidates(values: &[f32], count: usize) -> Vec<(f32, usize)> {
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(count + 1);
    for (index, &value) in values.iter().enumerate() {
        let value = if value.is_nan() {
            f32::NEG_INFINITY
        } else {
            value
        };
        if best.len() == count && best.last().is_some_and(|&(worst, _)| value <= worst) {
            continue;
        }
        let at = best.partition_point(|&(b, _)| b >= value);
        best.insert(at, (value, index));
        best.truncate(count);
    }
    best
}

/// A hypothesis that ended (with EOS or at the length limit).
#[derive(Clone, Debug)]
struct Finished {
    tokens: Vec<u32>,
    score: f32,
}

/// Score given to the placeholder beams so that they are never chosen.
const DEAD: f32 = -1.0e9;

/// Batched beam search with the KV cache. Returns the best hypothesis per sentence,
/// without BOS/EOS.
///
/// A sentence that is done (k finished hypotheses, or its length limit) leaves the batch
/// at the same step's reordering, so its rows are not computed any more.
pub fn beam_search<B: Backend>(
    model: &Transformer<B>,
    sources: &[Vec<u32>],
    options: BeamOptions,
) -> Result<Vec<Vec<u32>>, ModelError> {
    let k = options.beam_size.max(1);
    let (src, limits) = prepare(model, sources, options.limit)?;
    let special = model.config().special;
    let vocab = model.config().vocab_size;
    let device = model.device();
    let batch = sources.len();

    // Row `a * k + j` holds beam `j` of sentence `active[a]`.
    let mut active: Vec<usize> = (0..batch).collect();
    let expand: Vec<i64> = (0..batch * k).map(|r| (r / k) as i64).collect();
    let encoded = model.encode(src);
    let mut state = model
        .start_decoding(&encoded)
        .select(int_tensor(expand, [batch * k], &device));
    let mut hyps: Vec<Vec<u32>> = vec![Vec::new(); batch * k];
    // At the start only beam 0 is live, so the first step does not pick k copies.
    let mut scores: Vec<f32> = (0..batch * k)
        .map(|r| if r % k == 0 { 0.0 } else { DEAD })
        .collect();
    let mut tokens = vec![i64::from(special.bos); batch * k];
    let mut finished: Vec<Vec<Finished>> = vec![Vec::new(); batch];
    let normalize = |score: f32, len: usize| score / (len as f32).powf(options.length_penalty);

    for step in 0.. {
        let rows = active.len() * k;
        let logits = model.decode_step(&mut state, int_tensor(tokens, [rows], &device));
        let score_column = Tensor::<B, 1>::from_data(TensorData::new(scores, [rows]), &device);
        let candidates = (log_softmax(logits, 1) + score_column.unsqueeze_dim(1))
            .reshape([active.len(), k * vocab]);
        let candidates: Vec<f32> = candidates.into_data().iter::<f32>().collect();
        let length = step + 1;

        let mut still_active = Vec::with_capacity(active.len());
        let mut reorder = Vec::with_capacity(rows);
        let mut new_hyps = Vec::with_capacity(rows);
        let mut new_scores = Vec::with_capacity(rows);
        let mut new_tokens = Vec::with_capacity(rows);
        for (a, &sentence) in active.iter().enumerate() {
            let mut live: Vec<(usize, Vec<u32>, f32, u32)> = Vec::with_capacity(k);
            let row_candidates = &candidates[a * k * vocab..(a + 1) * k * vocab];
            for (c, (score, id)) in best_candidates(row_candidates, 2 * k)
                .into_iter()
                .enumerate()
            {
                if score <= DEAD / 2.0 {
                    break;
                }
                let (beam, token) = (id / vocab, id % vocab);
                let row = a * k + beam;
                if token as u32 == special.eos {
                    // Only EOS among the k best counts, as in fairseq.
                    if c < k {
                        finished[sentence].push(Finished {
                            tokens: hyps[row].clone(),
                            score: normalize(score, length),
                        });
                    }
                } else if live.len() < k {
                    let mut h = hyps[row].clone();
                    h.push(token as u32);
                    live.push((row, h, score, token as u32));
                }
            }
            if finished[sentence].len() >= k {
                continue;
            }
            // At its length limit a sentence ends its live beams without EOS, as greedy does.
            if length >= limits[sentence] {
                finished[sentence].extend(live.into_iter().map(|(_, tokens, score, _)| Finished {
                    tokens,
                    score: normalize(score, length),
                }));
                continue;
            }
            still_active.push(sentence);
            let placeholders = k - live.len();
            for (row, h, score, token) in live {
                reorder.push(row as i64);
                new_hyps.push(h);
                new_scores.push(score);
                new_tokens.push(i64::from(token));
            }
            // Fill the remaining rows of this sentence with dead placeholders.
            for _ in 0..placeholders {
                reorder.push((a * k) as i64);
                new_hyps.push(Vec::new());
                new_scores.push(DEAD);
                new_tokens.push(i64::from(special.pad));
            }
        }
        if still_active.is_empty() {
            break;
        }
        state = state.select(int_tensor(reorder, [still_active.len() * k], &device));
        active = still_active;
        hyps = new_hyps;
        scores = new_scores;
        tokens = new_tokens;
    }

    Ok(finished
        .into_iter()
        .map(|f| {
            f.into_iter()
                .fold(None::<Finished>, |best, h| match best {
                    Some(b) if b.score >= h.score => Some(b),
                    _ => Some(h),
                })
                .map(|h| h.tokens)
                .unwrap_or_default()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TransformerConfig;
    use paragen_backend::TestBackend;
    use paragen_data::SpecialTokens;

    type B = TestBackend;

    fn model(seed: u64) -> Transformer<B> {
        model_on::<B>(seed)
    }

    fn model_on<BB: Backend>(seed: u64) -> Transformer<BB> {
        BB::seed(&Default::default(), seed);
        let special = SpecialTokens::trained();
        Transformer::new(&TransformerConfig::tiny(24, special), &Default::default()).unwrap()
    }

    fn sources() -> Vec<Vec<u32>> {
        vec![
            vec![5, 6, 7, 8],
            vec![9, 10],
            vec![11, 12, 13, 14, 15, 16],
            vec![17],
        ]
    }

    #[test]
    fn cached_greedy_equals_uncached_greedy() {
        cached_greedy_equals_uncached_greedy_on::<B>();
        cached_greedy_equals_uncached_greedy_on::<paragen_backend::FlexTestBackend>();
    }

    fn cached_greedy_equals_uncached_greedy_on<BB: Backend>() {
        for seed in 0..3 {
            let m = model_on::<BB>(seed);
            let limit = LengthLimit {
                ratio: 1.0,
                extra: 5,
            };
            let cached = greedy(&m, &sources(), limit).unwrap();
            let uncached = greedy_uncached(&m, &sources(), limit).unwrap();
            assert_eq!(cached, uncached);
            for (out, src) in cached.iter().zip(sources()) {
                assert!(out.len() <= limit.max_len(src.len(), 64));
            }
        }
    }

    #[test]
    fn beam_of_one_equals_greedy() {
        beam_of_one_equals_greedy_on::<B>();
        beam_of_one_equals_greedy_on::<paragen_backend::FlexTestBackend>();
    }

    fn beam_of_one_equals_greedy_on<BB: Backend>() {
        for seed in 0..3 {
            let m = model_on::<BB>(seed);
            let limit = LengthLimit {
                ratio: 1.5,
                extra: 3,
            };
            let options = BeamOptions {
                beam_size: 1,
                length_penalty: 1.0,
                limit,
            };
            assert_eq!(
                beam_search(&m, &sources(), options).unwrap(),
                greedy(&m, &sources(), limit).unwrap()
            );
        }
    }

    #[test]
    fn wider_beam_never_scores_worse_than_greedy() {
        // Beam search with no length normalization maximizes the sum of log-probs, so its
        // best hypothesis can only be as good as greedy's or better.
        let m = model(7);
        let limit = LengthLimit {
            ratio: 1.0,
            extra: 4,
        };
        let greedy_out = greedy(&m, &sources(), limit).unwrap();
        let beam_out = beam_search(
            &m,
            &sources(),
            BeamOptions {
                beam_size: 4,
                length_penalty: 0.0,
                limit,
            },
        )
        .unwrap();
        for (i, src) in sources().into_iter().enumerate() {
            let g = sequence_log_prob(&m, &src, &greedy_out[i], limit);
            let b = sequence_log_prob(&m, &src, &beam_out[i], limit);
            assert!(b >= g - 1e-4, "sentence {i}: beam {b} < greedy {g}");
        }
    }

    /// Log-probability of a hypothesis, with EOS unless it stopped at the length limit.
    fn sequence_log_prob(m: &Transformer<B>, src: &[u32], out: &[u32], limit: LengthLimit) -> f32 {
        let mut target: Vec<u32> = out.to_vec();
        if out.len() < limit.max_len(src.len(), 64) {
            target.push(2);
        }
        let tgt_in: Vec<u32> = std::iter::once(1)
            .chain(target[..target.len() - 1].iter().copied())
            .collect();
        let device = Default::default();
        let src_t = paragen_data::batch::pad_to_tensor::<B>(&[src], 0, &device);
        let tgt_t = paragen_data::batch::pad_to_tensor::<B>(&[&tgt_in], 0, &device);
        let lp: Vec<f32> = log_softmax(m.forward(src_t, tgt_t), 2)
            .into_data()
            .iter::<f32>()
            .collect();
        target
            .iter()
            .enumerate()
            .map(|(t, &tok)| lp[t * 24 + tok as usize])
            .sum()
    }

    #[test]
    fn best_candidates_equal_a_full_stable_sort() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for len in [1, 5, 8, 100, 3000] {
            // Few distinct values, so that ties are common and their order is checked.
            let values: Vec<f32> = (0..len).map(|_| rng.random_range(0..20) as f32).collect();
            let mut sorted: Vec<(f32, usize)> = values.iter().copied().zip(0..).collect();
            sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
            for count in [1, 2, 8] {
                let expected: Vec<_> = sorted.iter().copied().take(count).collect();
                assert_eq!(
                    best_candidates(&values, count),
                    expected,
                    "len {len}, count {count}"
                );
            }
        }
        let with_nan = [1.0, f32::NAN, 3.0];
        assert_eq!(best_candidates(&with_nan, 2), vec![(3.0, 2), (1.0, 0)]);
    }

    #[test]
    fn too_long_source_is_an_error() {
        let m = model(0);
        let err = greedy(&m, &[vec![5; 65]], LengthLimit::default()).unwrap_err();
        assert_eq!(
            err,
            ModelError::TooLong {
                index: 0,
                len: 65,
                max: 64
            }
        );
    }
}
