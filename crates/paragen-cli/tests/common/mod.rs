//! Helpers of the end-to-end tests: run the real binary, slice the shipped corpus.
#![allow(dead_code)] // each test binary uses its own share of them

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `paragen` with exactly these arguments.
pub fn paragen_raw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paragen"))
        .args(args)
        .output()
        .expect("paragen runs")
}

/// Runs `paragen` quietly on the ndarray backend.
pub fn paragen(args: &[&str]) -> Output {
    paragen_raw(&[&["--quiet", "--backend", "ndarray"], args].concat())
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A path inside the repository, as a string for an argument list.
pub fn repo_path(relative: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
        .display()
        .to_string()
}

pub fn shipped_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/bible-en-fr.tsv.gz")
}

/// The first `n` verse pairs of the shipped corpus as a plain TSV.
pub fn corpus_slice(dir: &Path, n: usize) -> PathBuf {
    let pairs =
        paragen_data::read_tsv(&shipped_corpus(), paragen_data::MalformedLines::Error).unwrap();
    let path = dir.join("slice.tsv");
    paragen_data::write_tsv(&path, &pairs.pairs[..n]).unwrap();
    path
}

pub fn ok(out: &Output) {
    assert!(out.status.success(), "{}", stderr(out));
}
