//! Parallel corpora: reading them line by line with precise errors, and writing them.
//!
//! Two layouts are accepted, plain or gzipped (by a `.gz` suffix):
//! - a TSV with `src<TAB>tgt` or `id<TAB>src<TAB>tgt` on every line;
//! - two line-aligned files, one sentence per line.
//!
//! A malformed line (wrong column count, empty side, invalid UTF-8) is an error naming the
//! file and line, unless the caller asks for [`MalformedLines::Skip`], in which case it is
//! skipped and counted in [`Corpus::skipped`].

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

use crate::DataError;
use crate::fsio::write_atomic;

/// One aligned sentence pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// Stable identifier (verse id for the shipped corpus, line number otherwise).
    pub id: String,
    pub src: String,
    pub tgt: String,
}

/// What to do with a malformed line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MalformedLines {
    /// Stop with an error naming the file and line (the default).
    #[default]
    Error,
    /// Skip the line and count it.
    Skip,
}

/// Where a corpus comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorpusSource {
    Tsv(PathBuf),
    Parallel { src: PathBuf, tgt: PathBuf },
}

/// Pairs read from a source, plus how many malformed lines were skipped.
#[derive(Clone, Debug, Default)]
pub struct Corpus {
    pub pairs: Vec<Pair>,
    pub skipped: usize,
}

/// Reads a corpus from either layout.
pub fn read_corpus(source: &CorpusSource, policy: MalformedLines) -> Result<Corpus, DataError> {
    match source {
        CorpusSource::Tsv(path) => read_tsv(path, policy),
        CorpusSource::Parallel { src, tgt } => read_parallel(src, tgt, policy),
    }
}

fn open_lines(path: &Path) -> Result<impl Iterator<Item = std::io::Result<Vec<u8>>>, DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::read(path, source))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(BufReader::new(reader).split(b'\n'))
}

/// Reads lines as UTF-8, with trailing `\r` removed; errors name file and line.
fn read_text_lines(path: &Path) -> Result<Vec<Result<String, DataError>>, DataError> {
    let mut out = Vec::new();
    for (i, line) in open_lines(path)?.enumerate() {
        let bytes = line.map_err(|source| DataError::read(path, source))?;
        out.push(match String::from_utf8(bytes) {
            Ok(mut s) => {
                if s.ends_with('\r') {
                    s.pop();
                }
                Ok(s)
            }
            Err(_) => Err(malformed(path, i + 1, "invalid UTF-8")),
        });
    }
    Ok(out)
}

fn malformed(path: &Path, line: usize, reason: impl Into<String>) -> DataError {
    DataError::Malformed {
        path: path.display().to_string(),
        line,
        reason: reason.into(),
    }
}

/// Handles a malformed line according to the policy: `Ok(())` means "skipped".
fn on_malformed(
    policy: MalformedLines,
    err: DataError,
    skipped: &mut usize,
) -> Result<(), DataError> {
    match policy {
        MalformedLines::Error => Err(err),
        MalformedLines::Skip => {
            tracing::debug!("skipping malformed line: {err}");
            *skipped += 1;
            Ok(())
        }
    }
}

fn clean(side: &str) -> String {
    side.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reads a TSV corpus (`src<TAB>tgt` or `id<TAB>src<TAB>tgt`).
pub fn read_tsv(path: &Path, policy: MalformedLines) -> Result<Corpus, DataError> {
    let mut corpus = Corpus::default();
    for (i, line) in read_text_lines(path)?.into_iter().enumerate() {
        let line_no = i + 1;
        let parsed = line.and_then(|line| {
            if line.trim().is_empty() {
                return Ok(None);
            }
            let cols: Vec<&str> = line.split('\t').collect();
            let (id, src, tgt) = match cols.as_slice() {
                [src, tgt] => (line_no.to_string(), *src, *tgt),
                [id, src, tgt] => (id.trim().to_string(), *src, *tgt),
                _ => {
                    return Err(malformed(
                        path,
                        line_no,
                        format!(
                            "expected 2 tab-separated columns (src, tgt) or 3 (id, src, tgt), found {}",
                            cols.len()
                        ),
                    ));
                }
            };
            let (src, tgt) = (clean(src), clean(tgt));
            if src.is_empty() || tgt.is_empty() {
                return Err(malformed(path, line_no, "empty source or target side"));
            }
            Ok(Some(Pair { id, src, tgt }))
        });
        match parsed {
            Ok(Some(pair)) => corpus.pairs.push(pair),
            Ok(None) => {}
            Err(err) => on_malformed(policy, err, &mut corpus.skipped)?,
        }
    }
    finish(path, corpus)
}

/// Reads two line-aligned files; the id of a pair is its line number.
pub fn read_parallel(
    src_path: &Path,
    tgt_path: &Path,
    policy: MalformedLines,
) -> Result<Corpus, DataError> {
    let src_lines = read_text_lines(src_path)?;
    let tgt_lines = read_text_lines(tgt_path)?;
    if src_lines.len() != tgt_lines.len() {
        return Err(DataError::Misaligned {
            src_path: src_path.display().to_string(),
            tgt_path: tgt_path.display().to_string(),
            src_lines: src_lines.len(),
            tgt_lines: tgt_lines.len(),
        });
    }
    let mut corpus = Corpus::default();
    for (i, (src, tgt)) in src_lines.into_iter().zip(tgt_lines).enumerate() {
        let line_no = i + 1;
        let parsed = src
            .and_then(|s| tgt.map(|t| (clean(&s), clean(&t))))
            .and_then(|(s, t)| {
                if s.is_empty() || t.is_empty() {
                    let which = if s.is_empty() { src_path } else { tgt_path };
                    Err(malformed(which, line_no, "empty line in a parallel file"))
                } else {
                    Ok(Pair {
                        id: line_no.to_string(),
                        src: s,
                        tgt: t,
                    })
                }
            });
        match parsed {
            Ok(pair) => corpus.pairs.push(pair),
            Err(err) => on_malformed(policy, err, &mut corpus.skipped)?,
        }
    }
    finish(src_path, corpus)
}

fn finish(path: &Path, corpus: Corpus) -> Result<Corpus, DataError> {
    if corpus.skipped > 0 {
        tracing::warn!(
            "{}: skipped {} malformed line(s)",
            path.display(),
            corpus.skipped
        );
    }
    if corpus.pairs.is_empty() {
        return Err(DataError::Empty {
            path: path.display().to_string(),
        });
    }
    Ok(corpus)
}

/// Writes pairs as `id<TAB>src<TAB>tgt` lines, gzipped when the path ends in `.gz`.
pub fn write_tsv(path: &Path, pairs: &[Pair]) -> Result<(), DataError> {
    let mut text = String::new();
    for p in pairs {
        text.push_str(&p.id);
        text.push('\t');
        text.push_str(&p.src);
        text.push('\t');
        text.push_str(&p.tgt);
        text.push('\n');
    }
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut enc = GzEncoder::new(Vec::new(), Compression::best());
        std::io::Write::write_all(&mut enc, text.as_bytes())
            .and_then(|_| enc.finish())
            .map_err(|source| DataError::write(path, source))?
    } else {
        text.into_bytes()
    };
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_two_and_three_column_tsv() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "c.tsv", "a  b\tx\n\n1.1.1\tc\ty  z\r\n");
        let c = read_tsv(&p, MalformedLines::Error).unwrap();
        assert_eq!(
            c.pairs,
            vec![
                Pair {
                    id: "1".into(),
                    src: "a b".into(),
                    tgt: "x".into()
                },
                Pair {
                    id: "1.1.1".into(),
                    src: "c".into(),
                    tgt: "y z".into()
                },
            ]
        );
    }

    #[test]
    fn malformed_line_is_an_error_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "bad.tsv", "a\tb\nno tab here\nc\td\n");
        let msg = read_tsv(&p, MalformedLines::Error).unwrap_err().to_string();
        assert!(msg.contains("bad.tsv:2:"), "{msg}");
        assert!(msg.contains("found 1"), "{msg}");
    }

    #[test]
    fn malformed_lines_can_be_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "bad.tsv", "a\tb\nno tab\nx\t \nc\td\n");
        let c = read_tsv(&p, MalformedLines::Skip).unwrap();
        assert_eq!(c.pairs.len(), 2);
        assert_eq!(c.skipped, 2);
    }

    #[test]
    fn invalid_utf8_is_reported_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bin.tsv");
        std::fs::write(&p, b"a\tb\n\xff\xfe\tc\n").unwrap();
        let msg = read_tsv(&p, MalformedLines::Error).unwrap_err().to_string();
        assert!(msg.contains("bin.tsv:2: invalid UTF-8"), "{msg}");
    }

    #[test]
    fn parallel_files_must_align() {
        let dir = tempfile::tempdir().unwrap();
        let s = write(dir.path(), "s.txt", "a\nb\n");
        let t = write(dir.path(), "t.txt", "x\n");
        let err = read_parallel(&s, &t, MalformedLines::Error).unwrap_err();
        assert!(matches!(
            err,
            DataError::Misaligned {
                src_lines: 2,
                tgt_lines: 1,
                ..
            }
        ));
        let t = write(dir.path(), "t.txt", "x\ny\n");
        let c = read_parallel(&s, &t, MalformedLines::Error).unwrap();
        assert_eq!(
            c.pairs[1],
            Pair {
                id: "2".into(),
                src: "b".into(),
                tgt: "y".into()
            }
        );
    }

    #[test]
    fn gzip_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.tsv.gz");
        let pairs = vec![Pair {
            id: "7".into(),
            src: "é".into(),
            tgt: "ü".into(),
        }];
        write_tsv(&p, &pairs).unwrap();
        assert_eq!(read_tsv(&p, MalformedLines::Error).unwrap().pairs, pairs);
    }

    #[test]
    fn missing_file_names_the_path() {
        let msg = read_tsv(Path::new("/nonexistent/x.tsv"), MalformedLines::Error)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("/nonexistent/x.tsv"), "{msg}");
    }
}
