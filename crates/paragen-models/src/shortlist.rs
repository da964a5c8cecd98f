//! A lexical shortlist (Marian's lexical shortlist, CTranslate2's `vmap`): for each
//! source token, the target tokens it tends to translate to, plus the target tokens that
//! are always allowed (the most frequent ones and the special tokens).
//!
//! The output projection onto the whole vocabulary is about a third of a small model's
//! work; with a shortlist, decoding projects onto the union of the batch's allowed
//! tokens only. `paragen-compress` learns one from training pairs; a model uses it once
//! given one ([`crate::nat::NatStudent::set_shortlist`]).

use paragen_data::SpecialTokens;
use serde::{Deserialize, Serialize};

/// The target tokens a batch of sources may produce.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shortlist {
    /// Size of the vocabulary the ids index (the model's).
    pub vocab_size: usize,
    /// Target tokens every batch may produce, in increasing order.
    pub always: Vec<u32>,
    /// Per source token id (`vocab_size` entries), the target tokens it adds.
    pub by_source: Vec<Vec<u32>>,
}

impl Shortlist {
    /// Checks that it indexes a vocabulary of `vocab_size` and holds no id outside it.
    pub fn validate(&self, vocab_size: usize) -> Result<(), String> {
        if self.vocab_size != vocab_size {
            return Err(format!(
                "a shortlist for a vocabulary of {} tokens, the model's has {vocab_size}",
                self.vocab_size
            ));
        }
        if self.by_source.len() != vocab_size {
            return Err(format!(
                "{} source entries for a vocabulary of {vocab_size}",
                self.by_source.len()
            ));
        }
        let outside = self
            .always
            .iter()
            .chain(self.by_source.iter().flatten())
            .find(|&&id| id as usize >= vocab_size);
        match outside {
            Some(id) => Err(format!(
                "token id {id} is outside the vocabulary of {vocab_size}"
            )),
            None => Ok(()),
        }
    }

    /// The sorted union of what `sources` allow, the always-allowed tokens and every
    /// special token (CTC's blank is `<mask>`; `</s>` ends an AR hypothesis).
    pub fn allowed(&self, sources: &[&[u32]], special: SpecialTokens) -> Vec<u32> {
        let mut seen = vec![false; self.vocab_size];
        let specials = [
            special.pad,
            special.bos,
            special.eos,
            special.unk,
            special.mask,
        ];
        let by_source = sources
            .iter()
            .flat_map(|s| s.iter())
            .filter_map(|&s| self.by_source.get(s as usize))
            .flatten();
        for &id in specials.iter().chain(&self.always).chain(by_source) {
            if let Some(slot) = seen.get_mut(id as usize) {
                *slot = true;
            }
        }
        (0..self.vocab_size as u32)
            .filter(|&id| seen[id as usize])
            .collect()
    }

    /// Mean number of target tokens that one sentence of `sources` allows: the share of
    /// the vocabulary a batch-1 projection keeps.
    pub fn mean_allowed(&self, sources: &[&[u32]], special: SpecialTokens) -> f64 {
        if sources.is_empty() {
            return 0.0;
        }
        let total: usize = sources
            .iter()
            .map(|s| self.allowed(&[s], special).len())
            .sum();
        total as f64 / sources.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shortlist() -> Shortlist {
        let mut by_source = vec![Vec::new(); 12];
        by_source[7] = vec![9, 10];
        by_source[8] = vec![10, 11];
        Shortlist {
            vocab_size: 12,
            always: vec![5],
            by_source,
        }
    }

    #[test]
    fn a_batch_allows_the_union_of_its_sources_the_always_set_and_the_specials() {
        let s = shortlist();
        let special = SpecialTokens::trained();
        assert_eq!(s.allowed(&[&[7]], special), vec![0, 1, 2, 3, 4, 5, 9, 10]);
        assert_eq!(
            s.allowed(&[&[7], &[8, 6]], special),
            vec![0, 1, 2, 3, 4, 5, 9, 10, 11]
        );
        assert_eq!(s.mean_allowed(&[&[7], &[6]], special), (8.0 + 6.0) / 2.0);
    }

    #[test]
    fn a_shortlist_of_another_vocabulary_or_with_ids_outside_it_is_refused() {
        let s = shortlist();
        assert!(s.validate(12).is_ok());
        assert!(s.validate(13).unwrap_err().contains("vocabulary of 12"));
        let mut bad = shortlist();
        bad.by_source[3] = vec![40];
        assert!(bad.validate(12).unwrap_err().contains("40"));
        let mut short = shortlist();
        short.by_source.pop();
        assert!(
            short
                .validate(12)
                .unwrap_err()
                .contains("11 source entries")
        );
    }
}
