//! Batching under a token budget and conversion of a batch to tensors.
//!
//! A batch's cost is its padded size, `sentences × longest side`, so the batcher sorts
//! examples by length (ties broken by a seeded shuffle) and cuts batches whose padded
//! size stays within the budget; the order of batches is then shuffled with a seed that
//! depends on the epoch. The same seed and epoch always give the same batches.

use burn::prelude::*;
use burn::tensor::TensorData;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::tokenizer::SpecialTokens;

/// One encoded sentence pair (no BOS/EOS; the batch adds them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub src: Vec<u32>,
    pub tgt: Vec<u32>,
}

/// Groups examples into batches of at most `max_tokens` padded tokens.
#[derive(Clone, Copy, Debug)]
pub struct TokenBudgetBatcher {
    /// Budget of padded tokens per batch (sentences × longest side, EOS included).
    pub max_tokens: usize,
    /// Seed of the tie-breaking and batch-order shuffles.
    pub seed: u64,
}

impl TokenBudgetBatcher {
    /// Batches (as example indices) for one training epoch.
    pub fn batches(&self, examples: &[Example], epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.shuffle(&mut rng);
        // Stable sort keeps the shuffled order among equal lengths.
        order.sort_by_key(|&i| padded_len(&examples[i]));
        let mut batches = cut_by_budget(&order, |i| padded_len(&examples[i]), self.max_tokens);
        batches.shuffle(&mut rng);
        batches
    }
}

/// Padded length of an example: its longer side plus the EOS (or BOS) token.
fn padded_len(e: &Example) -> usize {
    e.src.len().max(e.tgt.len()) + 1
}

/// Cuts an ordered list of items into consecutive batches under a padded-token budget.
/// An item larger than the budget gets a batch of its own.
pub fn cut_by_budget(
    order: &[usize],
    len_of: impl Fn(usize) -> usize,
    max_tokens: usize,
) -> Vec<Vec<usize>> {
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut width = 0;
    for &i in order {
        let w = width.max(len_of(i));
        if !current.is_empty() && (current.len() + 1) * w > max_tokens {
            batches.push(std::mem::take(&mut current));
            width = 0;
        }
        width = width.max(len_of(i));
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Batches for inference: sentences sorted by length (so padding is small), at most
/// `max_sentences` per batch. Indices refer to the input order, which callers restore.
pub fn inference_batches(lengths: &[usize], max_sentences: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    order
        .chunks(max_sentences.max(1))
        .map(|c| c.to_vec())
        .collect()
}

/// Pads token sequences into a `[batch, longest]` integer tensor.
pub fn pad_to_tensor<B: Backend>(
    seqs: &[&[u32]],
    pad: u32,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let width = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
    let mut flat = Vec::with_capacity(seqs.len() * width);
    for s in seqs {
        flat.extend(s.iter().map(|&t| i64::from(t)));
        flat.extend(std::iter::repeat_n(i64::from(pad), width - s.len()));
    }
    let data = TensorData::new(flat, [seqs.len(), width]).convert::<B::IntElem>();
    Tensor::from_data(data, device)
}

/// A batch ready for a sequence-to-sequence model.
#[derive(Clone, Debug)]
pub struct Seq2SeqBatch<B: Backend> {
    /// Source ids, `[batch, src_len]`, padded with `pad`.
    pub src: Tensor<B, 2, Int>,
    /// Decoder input: BOS then the target, `[batch, tgt_len + 1]`.
    pub tgt_in: Tensor<B, 2, Int>,
    /// Decoder output: the target then EOS, `[batch, tgt_len + 1]`.
    pub tgt_out: Tensor<B, 2, Int>,
    /// Number of real (non-pad) tokens in `tgt_out`.
    pub tgt_tokens: usize,
}

/// Borrows each sequence as a slice, as [`pad_to_tensor`] takes them.
pub fn as_slices(v: &[Vec<u32>]) -> Vec<&[u32]> {
    v.iter().map(|s| s.as_slice()).collect()
}

impl<B: Backend> Seq2SeqBatch<B> {
    pub fn new(examples: &[&Example], special: SpecialTokens, device: &B::Device) -> Self {
        let srcs: Vec<&[u32]> = examples.iter().map(|e| e.src.as_slice()).collect();
        let tgt_in: Vec<Vec<u32>> = examples
            .iter()
            .map(|e| {
                std::iter::once(special.bos)
                    .chain(e.tgt.iter().copied())
                    .collect()
            })
            .collect();
        let tgt_out: Vec<Vec<u32>> = examples
            .iter()
            .map(|e| {
                e.tgt
                    .iter()
                    .copied()
                    .chain(std::iter::once(special.eos))
                    .collect()
            })
            .collect();
        Self {
            src: pad_to_tensor(&srcs, special.pad, device),
            tgt_in: pad_to_tensor(&as_slices(&tgt_in), special.pad, device),
            tgt_out: pad_to_tensor(&as_slices(&tgt_out), special.pad, device),
            tgt_tokens: tgt_out.iter().map(|s| s.len()).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paragen_backend::TestBackend;

    fn ex(src: usize, tgt: usize) -> Example {
        Example {
            src: vec![7; src],
            tgt: vec![8; tgt],
        }
    }

    #[test]
    fn batches_respect_budget_cover_all_and_are_seeded() {
        let examples: Vec<Example> = (0..200).map(|i| ex(1 + i % 37, 1 + (i * 7) % 41)).collect();
        let b = TokenBudgetBatcher {
            max_tokens: 256,
            seed: 3,
        };
        let batches = b.batches(&examples, 0);
        for batch in &batches {
            let width = batch
                .iter()
                .map(|&i| padded_len(&examples[i]))
                .max()
                .unwrap();
            assert!(batch.len() * width <= 256, "{} x {width}", batch.len());
        }
        let mut all: Vec<usize> = batches.concat();
        all.sort();
        assert_eq!(all, (0..200).collect::<Vec<_>>());
        assert_eq!(batches, b.batches(&examples, 0));
        assert_ne!(batches, b.batches(&examples, 1));
    }

    #[test]
    fn oversized_example_gets_its_own_batch() {
        let examples = vec![ex(3, 3), ex(100, 2), ex(3, 4)];
        let b = TokenBudgetBatcher {
            max_tokens: 16,
            seed: 0,
        };
        let batches = b.batches(&examples, 0);
        assert!(batches.contains(&vec![1]), "{batches:?}");
    }

    #[test]
    fn batch_tensors_have_bos_eos_and_padding() {
        let special = SpecialTokens::trained();
        let a = Example {
            src: vec![5, 6, 7],
            tgt: vec![9],
        };
        let b = Example {
            src: vec![5],
            tgt: vec![9, 10],
        };
        let batch = Seq2SeqBatch::<TestBackend>::new(&[&a, &b], special, &Default::default());
        let ints = |t: Tensor<TestBackend, 2, Int>| t.into_data().iter::<i64>().collect::<Vec<_>>();
        assert_eq!(ints(batch.src), vec![5, 6, 7, 5, 0, 0]);
        assert_eq!(ints(batch.tgt_in), vec![1, 9, 0, 1, 9, 10]);
        assert_eq!(ints(batch.tgt_out), vec![9, 2, 0, 9, 10, 2]);
        assert_eq!(batch.tgt_tokens, 5);
    }

    #[test]
    fn inference_batches_cover_every_sentence_once() {
        let lens = [5, 1, 9, 3, 7];
        let batches = inference_batches(&lens, 2);
        assert_eq!(batches, vec![vec![2, 4], vec![0, 3], vec![1]]);
    }
}
