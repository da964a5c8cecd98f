//! Corpus BLEU and chrF computed exactly as sacrebleu 2.x computes them.
//!
//! - BLEU (Papineni et al. 2002): `13a` tokenization, n-grams up to 4, clipped counts
//!   summed over the corpus, brevity penalty, and sacrebleu's default `exp` smoothing
//!   (an order with no match gets precision `100 / (2^k * total)`).
//! - chrF (Popović 2015): character n-grams up to 6, whitespace removed, beta = 2;
//!   statistics summed over the corpus before the F-score, as sacrebleu does.
//!
//! Both are checked against numbers produced by sacrebleu on fixed inputs
//! (`tests/fixtures/sacrebleu.json`).

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

const MAX_NGRAM: usize = 4;
const CHRF_ORDER: usize = 6;
const CHRF_BETA: f64 = 2.0;

/// A corpus score with the statistics behind it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bleu {
    pub score: f64,
    /// Modified n-gram precisions in percent, orders 1 to 4.
    pub precisions: [f64; MAX_NGRAM],
    pub brevity_penalty: f64,
    pub sys_len: usize,
    pub ref_len: usize,
}

static TOKENIZE_13A: LazyLock<[(Regex, &'static str); 4]> = LazyLock::new(|| {
    [
        // Symbols and punctuation (sacrebleu's "language-dependent part").
        (Regex::new(r"([\{-~\[-` -&\(-\+:-@/])").unwrap(), " $1 "),
        // Period and comma unless preceded by a digit.
        (Regex::new(r"([^0-9])([\.,])").unwrap(), "$1 $2 "),
        // Period and comma unless followed by a digit.
        (Regex::new(r"([\.,])([^0-9])").unwrap(), " $1 $2"),
        // Dash when preceded by a digit.
        (Regex::new(r"([0-9])(-)").unwrap(), "$1 $2 "),
    ]
});

/// Python's `str.split()` with no argument, which sacrebleu uses to cut words: Rust's
/// `split_whitespace` plus the separators U+001C to U+001F, which Python counts as
/// whitespace and Unicode's White_Space property does not.
fn python_split(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|word| !word.is_empty())
}

/// sacrebleu's `13a` tokenizer (the mteval-v13a rules).
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut line = format!(" {line} ");
    for (re, replacement) in TOKENIZE_13A.iter() {
        line = re.replace_all(&line, *replacement).into_owned();
    }
    python_split(&line).collect::<Vec<_>>().join(" ")
}

fn ngram_counts<'a>(tokens: &'a [&'a str], n: usize) -> HashMap<&'a [&'a str], usize> {
    let mut counts = HashMap::new();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    counts
}

/// Corpus BLEU of hypotheses against one reference each.
///
/// # Panics
/// If the two slices differ in length (a programming error, not bad input).
pub fn corpus_bleu(hypotheses: &[impl AsRef<str>], references: &[impl AsRef<str>]) -> Bleu {
    assert_eq!(
        hypotheses.len(),
        references.len(),
        "one reference per hypothesis"
    );
    let mut correct = [0usize; MAX_NGRAM];
    let mut total = [0usize; MAX_NGRAM];
    let (mut sys_len, mut ref_len) = (0usize, 0usize);
    for (hyp, reference) in hypotheses.iter().zip(references) {
        let hyp = tokenize_13a(hyp.as_ref());
        let reference = tokenize_13a(reference.as_ref());
        let hyp_tokens: Vec<&str> = hyp.split(' ').filter(|t| !t.is_empty()).collect();
        let ref_tokens: Vec<&str> = reference.split(' ').filter(|t| !t.is_empty()).collect();
        sys_len += hyp_tokens.len();
        ref_len += ref_tokens.len();
        for n in 1..=MAX_NGRAM {
            let ref_counts = ngram_counts(&ref_tokens, n);
            for (gram, count) in ngram_counts(&hyp_tokens, n) {
                correct[n - 1] += count.min(ref_counts.get(gram).copied().unwrap_or(0));
                total[n - 1] += count;
            }
        }
    }
    bleu_from_stats(correct, total, sys_len, ref_len)
}

fn bleu_from_stats(
    correct: [usize; MAX_NGRAM],
    total: [usize; MAX_NGRAM],
    sys_len: usize,
    ref_len: usize,
) -> Bleu {
    let mut precisions = [0.0; MAX_NGRAM];
    let brevity_penalty = if sys_len < ref_len {
        if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    // Without a single matching n-gram sacrebleu reports 0 and skips smoothing.
    if correct.iter().all(|&c| c == 0) {
        return Bleu {
            score: 0.0,
            precisions,
            brevity_penalty,
            sys_len,
            ref_len,
        };
    }
    let mut smooth = 1.0;
    for n in 0..MAX_NGRAM {
        if total[n] == 0 {
            break;
        }
        if correct[n] == 0 {
            smooth *= 2.0;
            precisions[n] = 100.0 / (smooth * total[n] as f64);
        } else {
            precisions[n] = 100.0 * correct[n] as f64 / total[n] as f64;
        }
    }
    // sacrebleu's `my_log` maps 0 to -9999999999 so that the score becomes 0.
    let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
    let mean_log = precisions.iter().map(|&p| log(p)).sum::<f64>() / MAX_NGRAM as f64;
    Bleu {
        score: brevity_penalty * mean_log.exp(),
        precisions,
        brevity_penalty,
        sys_len,
        ref_len,
    }
}

/// Character n-gram counts of a sentence with all whitespace removed.
fn char_ngrams(text: &str, n: usize) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    let boundaries: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    if boundaries.len() > n {
        for start in 0..boundaries.len() - n {
            *counts
                .entry(&text[boundaries[start]..boundaries[start + n]])
                .or_insert(0) += 1;
        }
    }
    counts
}

/// Corpus chrF (character 6-grams, beta 2), as sacrebleu's `CHRF()` default.
pub fn corpus_chrf(hypotheses: &[impl AsRef<str>], references: &[impl AsRef<str>]) -> f64 {
    assert_eq!(
        hypotheses.len(),
        references.len(),
        "one reference per hypothesis"
    );
    // Per order: [hypothesis n-grams, reference n-grams, matches].
    let mut stats = [[0usize; 3]; CHRF_ORDER];
    for (hyp, reference) in hypotheses.iter().zip(references) {
        let hyp: String = python_split(hyp.as_ref()).collect();
        let reference: String = python_split(reference.as_ref()).collect();
        for (n, stat) in stats.iter_mut().enumerate() {
            let h = char_ngrams(&hyp, n + 1);
            let r = char_ngrams(&reference, n + 1);
            stat[0] += h.values().sum::<usize>();
            stat[1] += r.values().sum::<usize>();
            stat[2] += h
                .iter()
                .map(|(g, c)| (*c).min(r.get(g).copied().unwrap_or(0)))
                .sum::<usize>();
        }
    }
    chrf_from_stats(&stats)
}

fn chrf_from_stats(stats: &[[usize; 3]; CHRF_ORDER]) -> f64 {
    let factor = CHRF_BETA * CHRF_BETA;
    let (mut avg_precision, mut avg_recall, mut effective_order) = (0.0, 0.0, 0usize);
    for &[n_hyp, n_ref, n_match] in stats {
        if n_hyp > 0 && n_ref > 0 {
            avg_precision += n_match as f64 / n_hyp as f64;
            avg_recall += n_match as f64 / n_ref as f64;
            effective_order += 1;
        }
    }
    if effective_order == 0 {
        return 0.0;
    }
    avg_precision /= effective_order as f64;
    avg_recall /= effective_order as f64;
    if avg_precision + avg_recall == 0.0 {
        return 0.0;
    }
    100.0 * (1.0 + factor) * avg_precision * avg_recall / (factor * avg_precision + avg_recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_13a_splits_punctuation_but_not_numbers() {
        assert_eq!(
            tokenize_13a("Hello, world! It's 3.14 and 1,000."),
            "Hello , world ! It's 3.14 and 1,000 ."
        );
        assert_eq!(tokenize_13a("a&amp;b (c) 5-6"), "a & b ( c ) 5 - 6");
    }

    #[test]
    fn words_are_cut_where_python_cuts_them() {
        // sacrebleu 2.6 scores this pair 100 (BLEU and chrF): `\x1f` splits words in
        // Python's `str.split`.
        let (hyp, reference) = (
            ["le\x1fchat dort sur le tapis"],
            ["le chat dort sur le tapis"],
        );
        assert!((corpus_bleu(&hyp, &reference).score - 100.0).abs() < 1e-9);
        assert!((corpus_chrf(&hyp, &reference) - 100.0).abs() < 1e-9);
        assert_eq!(tokenize_13a("a\u{1c}b\u{85}c\u{a0}d\u{3000}e"), "a b c d e");
        assert_eq!(tokenize_13a("a\u{200b}b"), "a\u{200b}b");
    }

    #[test]
    fn identical_corpus_scores_100() {
        let text = ["the cat sat on the mat today", "a b c d e"];
        assert!((corpus_bleu(&text, &text).score - 100.0).abs() < 1e-9);
        assert!((corpus_chrf(&text, &text) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn empty_hypotheses_score_zero() {
        assert_eq!(corpus_bleu(&[""], &["some words here"]).score, 0.0);
        assert_eq!(corpus_chrf(&[""], &["some words here"]), 0.0);
    }
}
