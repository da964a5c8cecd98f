//! A prepared data directory: the splits of a corpus and the tokenizer trained on its
//! training split, made once by `paragen prepare` and read by every later command.
//!
//! ```text
//! DATA/
//!   train.tsv valid.tsv test.tsv   id<TAB>src<TAB>tgt (or gzipped, train.tsv.gz ...)
//!   tokenizer.json                 joint BPE trained on train.tsv (both sides)
//!   prepare.json                   source, split shares, vocabulary, pair counts
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::DataError;
use crate::batch::Example;
use crate::corpus::{CorpusSource, MalformedLines, Pair, read_corpus, read_tsv, write_tsv};
use crate::fsio::write_atomic;
use crate::split::{Split, SplitConfig};
use crate::tokenizer::Tokenizer;

/// What `prepare` did, saved as `prepare.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrepareReport {
    pub source: String,
    pub split: SplitConfig,
    pub vocab_size: usize,
    pub train_pairs: usize,
    pub valid_pairs: usize,
    pub test_pairs: usize,
    pub skipped_lines: usize,
}

/// Splits `source`, trains the tokenizer on the training split, and writes `out`.
pub fn prepare(
    source: &CorpusSource,
    out: &Path,
    vocab_size: usize,
    split: SplitConfig,
    policy: MalformedLines,
) -> Result<PrepareReport, DataError> {
    let corpus = read_corpus(source, policy)?;
    let (train, valid, test) = split.partition(corpus.pairs);
    if train.is_empty() {
        return Err(DataError::Empty {
            path: format!("{} (training split)", describe(source)),
        });
    }
    // Training validates on `valid` and reports on `test`: empty, both would be silent.
    let pairs = train.len() + valid.len() + test.len();
    for (name, held_out, per_mille) in [
        ("valid", &valid, split.valid_per_mille),
        ("test", &test, split.test_per_mille),
    ] {
        if held_out.is_empty() {
            return Err(DataError::EmptySplit {
                path: describe(source),
                split: name,
                pairs,
                per_mille,
            });
        }
    }
    let sentences = train.iter().flat_map(|p| [p.src.as_str(), p.tgt.as_str()]);
    let tokenizer = Tokenizer::train(sentences, vocab_size)?;
    for (split, pairs) in [
        (Split::Train, &train),
        (Split::Valid, &valid),
        (Split::Test, &test),
    ] {
        write_tsv(&out.join(format!("{}.tsv", split.name())), pairs)?;
    }
    tokenizer.save(&out.join("tokenizer.json"))?;
    let report = PrepareReport {
        source: describe(source),
        split,
        vocab_size: tokenizer.vocab_size(),
        train_pairs: train.len(),
        valid_pairs: valid.len(),
        test_pairs: test.len(),
        skipped_lines: corpus.skipped,
    };
    let json = serde_json::to_vec_pretty(&report).expect("report serializes");
    write_atomic(&out.join("prepare.json"), &json)?;
    Ok(report)
}

fn describe(source: &CorpusSource) -> String {
    match source {
        CorpusSource::Tsv(p) => p.display().to_string(),
        CorpusSource::Parallel { src, tgt } => format!("{} + {}", src.display(), tgt.display()),
    }
}

/// A prepared data directory.
#[derive(Clone, Debug)]
pub struct PreparedData {
    pub dir: PathBuf,
}

impl PreparedData {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn tokenizer(&self) -> Result<Tokenizer, DataError> {
        let path = self.dir.join("tokenizer.json");
        if !path.exists() {
            return Err(DataError::Read {
                path: path.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not found; run `paragen prepare` first",
                ),
            });
        }
        Ok(Tokenizer::load(&path)?)
    }

    /// The pairs of one split, from `<split>.tsv`, or `<split>.tsv.gz` when only that
    /// exists (how a prepared directory is shipped in the repository).
    pub fn pairs(&self, split: Split) -> Result<Vec<Pair>, DataError> {
        Ok(read_tsv(&self.split_path(split), MalformedLines::Error)?.pairs)
    }

    /// The file that holds a split: `<split>.tsv`, or its gzipped form when only that
    /// exists.
    pub fn split_path(&self, split: Split) -> PathBuf {
        let plain = self.dir.join(format!("{}.tsv", split.name()));
        let gzipped = self.dir.join(format!("{}.tsv.gz", split.name()));
        if !plain.exists() && gzipped.exists() {
            gzipped
        } else {
            plain
        }
    }
}

/// Encodes pairs with the tokenizer (in parallel).
pub fn encode_pairs(tokenizer: &Tokenizer, pairs: &[Pair]) -> Result<Vec<Example>, DataError> {
    let src: Vec<&str> = pairs.iter().map(|p| p.src.as_str()).collect();
    let tgt: Vec<&str> = pairs.iter().map(|p| p.tgt.as_str()).collect();
    let src = tokenizer.encode_batch(&src)?;
    let tgt = tokenizer.encode_batch(&tgt)?;
    Ok(src
        .into_iter()
        .zip(tgt)
        .map(|(src, tgt)| Example { src, tgt })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prepares a corpus of `n` numbered verse pairs into `dir/prepared`.
    fn prepare_numbered(dir: &Path, n: usize) -> (PathBuf, Result<PrepareReport, DataError>) {
        let corpus = dir.join("c.tsv");
        let lines: String = (0..n)
            .map(|i| format!("{i}\tthe verse number {i} speaks\tle verset numéro {i} parle\n"))
            .collect();
        std::fs::write(&corpus, lines).unwrap();
        let out = dir.join("prepared");
        let report = prepare(
            &CorpusSource::Tsv(corpus),
            &out,
            120,
            SplitConfig::default(),
            MalformedLines::Error,
        );
        (out, report)
    }

    #[test]
    fn prepare_writes_splits_tokenizer_and_report() {
        let dir = tempfile::tempdir().unwrap();
        let (out, report) = prepare_numbered(dir.path(), 300);
        let report = report.unwrap();
        assert_eq!(
            report.train_pairs + report.valid_pairs + report.test_pairs,
            300
        );
        let data = PreparedData::new(&out);
        let tok = data.tokenizer().unwrap();
        let test = data.pairs(Split::Test).unwrap();
        assert_eq!(test.len(), report.test_pairs);
        assert!(
            test.iter()
                .all(|p| SplitConfig::default().split_of(&p.id) == Split::Test)
        );
        let encoded = encode_pairs(&tok, &test).unwrap();
        assert_eq!(tok.decode(&encoded[0].tgt).unwrap(), test[0].tgt);
    }

    #[test]
    fn a_gzipped_split_reads_like_the_plain_one_and_plain_wins_when_both_exist() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (out, report) = prepare_numbered(dir.path(), 300);
        report.unwrap();
        let data = PreparedData::new(&out);
        let plain = data.pairs(Split::Train).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&std::fs::read(out.join("train.tsv")).unwrap())
            .unwrap();
        std::fs::write(out.join("train.tsv.gz"), gz.finish().unwrap()).unwrap();
        assert_eq!(data.split_path(Split::Train), out.join("train.tsv"));
        std::fs::remove_file(out.join("train.tsv")).unwrap();
        assert_eq!(data.split_path(Split::Train), out.join("train.tsv.gz"));
        assert_eq!(data.pairs(Split::Train).unwrap(), plain);
    }

    #[test]
    fn a_corpus_too_small_for_a_held_out_split_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (out, report) = prepare_numbered(dir.path(), 5);
        let err = report.unwrap_err().to_string();
        assert!(err.contains("split would be empty (5 pairs"), "{err}");
        assert!(
            err.contains("--valid-per-mille") || err.contains("--test-per-mille"),
            "{err}"
        );
        assert!(!out.exists());
    }
}
