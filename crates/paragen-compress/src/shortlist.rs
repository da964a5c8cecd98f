//! Learning a lexical shortlist ([`paragen_models::Shortlist`]) from training pairs.
//!
//! Sentence-level co-occurrence, as in the lexical shortlists of Marian and
//! CTranslate2's vocabulary maps, without an alignment model: the `frequent` most
//! frequent target tokens are always allowed, and each source token adds the
//! `per_source` target tokens with the highest Dice coefficient
//! `2 c(s, t) / (c(s) + c(t))` over the pairs (`c` counts the pairs a token occurs in).
//! Dice prefers pairs that occur together and rarely apart, which is what a
//! translation of a content word does; frequent target tokens are left out of the
//! per-source lists because they are always allowed already.

use std::collections::HashMap;
use std::path::Path;

use paragen_data::batch::Example;
use paragen_data::{PreparedData, Split, encode_pairs};
use paragen_infer::{CheckpointError, ModelKind, RunConfig, RunDir, write_shortlist_run};
use paragen_models::Shortlist;

/// How large a learned shortlist is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShortlistConfig {
    /// Most frequent target tokens (by occurrences) that every batch may produce.
    pub frequent: usize,
    /// Target tokens each source token adds.
    pub per_source: usize,
    /// Pairs a source and target token must share to count as translations.
    pub min_cooccurrence: u32,
}

impl Default for ShortlistConfig {
    fn default() -> Self {
        Self {
            frequent: 500,
            per_source: 20,
            min_cooccurrence: 2,
        }
    }
}

/// Learns a shortlist for a vocabulary of `vocab_size` from encoded training pairs.
pub fn learn_shortlist(pairs: &[Example], vocab_size: usize, config: ShortlistConfig) -> Shortlist {
    let mut occurrences = vec![0u64; vocab_size];
    let mut src_pairs = vec![0u32; vocab_size];
    let mut tgt_pairs = vec![0u32; vocab_size];
    let mut together: Vec<HashMap<u32, u32>> = vec![HashMap::new(); vocab_size];
    for pair in pairs {
        let src = distinct(&pair.src, vocab_size);
        let tgt = distinct(&pair.tgt, vocab_size);
        for &t in pair.tgt.iter().filter(|&&t| (t as usize) < vocab_size) {
            occurrences[t as usize] += 1;
        }
        for &t in &tgt {
            tgt_pairs[t as usize] += 1;
        }
        for &s in &src {
            src_pairs[s as usize] += 1;
            let row = &mut together[s as usize];
            for &t in &tgt {
                *row.entry(t).or_default() += 1;
            }
        }
    }
    let mut by_frequency: Vec<u32> = (0..vocab_size as u32)
        .filter(|&t| occurrences[t as usize] > 0)
        .collect();
    // Most frequent first; ties by id, so the result does not depend on hashing.
    by_frequency.sort_by(|&a, &b| {
        occurrences[b as usize]
            .cmp(&occurrences[a as usize])
            .then(a.cmp(&b))
    });
    let mut always: Vec<u32> = by_frequency.into_iter().take(config.frequent).collect();
    always.sort_unstable();
    let mut is_always = vec![false; vocab_size];
    for &t in &always {
        is_always[t as usize] = true;
    }
    let by_source = together
        .into_iter()
        .enumerate()
        .map(|(s, row)| {
            let mut scored: Vec<(f64, u32)> = row
                .into_iter()
                .filter(|&(t, n)| n >= config.min_cooccurrence && !is_always[t as usize])
                .map(|(t, n)| {
                    let dice = 2.0 * f64::from(n)
                        / (f64::from(src_pairs[s]) + f64::from(tgt_pairs[t as usize]));
                    (dice, t)
                })
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut kept: Vec<u32> = scored
                .into_iter()
                .take(config.per_source)
                .map(|(_, t)| t)
                .collect();
            kept.sort_unstable();
            kept
        })
        .collect();
    Shortlist {
        vocab_size,
        always,
        by_source,
    }
}

/// The distinct ids of `tokens` below `vocab_size`.
fn distinct(tokens: &[u32], vocab_size: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = tokens
        .iter()
        .copied()
        .filter(|&t| (t as usize) < vocab_size)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Errors of [`shortlist_run`].
#[derive(Debug, thiserror::Error)]
pub enum ShortlistError {
    #[error(
        "{run} holds a {kind} model; shortlists decode NAT students (nat, nat-ctc) only so far"
    )]
    NotNat { run: String, kind: &'static str },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Data(#[from] paragen_data::DataError),
}

/// What [`shortlist_run`] learned.
#[derive(Clone, Debug, PartialEq)]
pub struct ShortlistReport {
    pub training_pairs: usize,
    pub always_allowed: usize,
    /// Tokens a valid sentence allows on average, of `vocab_size`.
    pub mean_allowed: f64,
    pub vocab_size: usize,
}

/// Learns a shortlist for the NAT run `from` from the training pairs of `data` (default:
/// the data it trained on) and writes a copy of the run that decodes onto it to `out`.
pub fn shortlist_run(
    from: &RunDir,
    out: &Path,
    data: Option<&Path>,
    config: ShortlistConfig,
) -> Result<(RunDir, ShortlistReport), ShortlistError> {
    let run_config: RunConfig = from.load_config()?;
    if !matches!(run_config.kind, ModelKind::Nat | ModelKind::NatCtc) {
        return Err(ShortlistError::NotNat {
            run: from.root().display().to_string(),
            kind: run_config.kind.name(),
        });
    }
    let tokenizer = from.load_tokenizer()?;
    let data =
        PreparedData::new(data.map_or_else(|| run_config.data_dir.clone(), Path::to_path_buf));
    let train = encode_pairs(&tokenizer, &data.pairs(Split::Train)?)?;
    let vocab_size = run_config.transformer().vocab_size;
    let shortlist = learn_shortlist(&train, vocab_size, config);
    let run = write_shortlist_run(from, out, &shortlist)?;
    let valid = encode_pairs(&tokenizer, &data.pairs(Split::Valid)?)?;
    let sources: Vec<&[u32]> = valid.iter().map(|e| e.src.as_slice()).collect();
    let report = ShortlistReport {
        training_pairs: train.len(),
        always_allowed: shortlist.always.len(),
        mean_allowed: shortlist.mean_allowed(&sources, tokenizer.special()),
        vocab_size,
    };
    Ok((run, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(src: &[u32], tgt: &[u32]) -> Example {
        Example {
            src: src.to_vec(),
            tgt: tgt.to_vec(),
        }
    }

    #[test]
    fn each_source_token_keeps_the_targets_it_occurs_with_and_frequent_ones_are_always_allowed() {
        // Source 10 always comes with target 20, source 11 with 21; target 30 is in
        // every pair (a function word), so it is always allowed and in no list.
        let pairs = vec![
            example(&[10, 12], &[20, 30, 30]),
            example(&[10], &[20, 30]),
            example(&[11, 12], &[21, 30]),
            example(&[11], &[21, 30, 22]),
        ];
        let config = ShortlistConfig {
            frequent: 1,
            per_source: 1,
            min_cooccurrence: 2,
        };
        let s = learn_shortlist(&pairs, 40, config);
        assert_eq!(s.always, vec![30]);
        assert_eq!(s.by_source[10], vec![20]);
        assert_eq!(s.by_source[11], vec![21]);
        // 12 occurs once with each of 20 and 21: below the minimum co-occurrence.
        assert!(s.by_source[12].is_empty());
        assert!(s.validate(40).is_ok());
        let wider = learn_shortlist(
            &pairs,
            40,
            ShortlistConfig {
                min_cooccurrence: 1,
                per_source: 3,
                ..config
            },
        );
        assert_eq!(wider.by_source[11], vec![21, 22]);
        assert_eq!(wider.by_source[12], vec![20, 21]);
    }
}
