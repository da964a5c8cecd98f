//! End-to-end tests of the `paragen` binary on a slice of the shipped corpus.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Runs `paragen` with exactly these arguments.
fn paragen_raw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paragen"))
        .args(args)
        .output()
        .expect("paragen runs")
}

/// Runs `paragen` quietly on the ndarray backend.
fn paragen(args: &[&str]) -> Output {
    paragen_raw(&[&["--quiet", "--backend", "ndarray"], args].concat())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn shipped_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/bible-en-fr.tsv.gz")
}

/// The first `n` verse pairs of the shipped corpus as a plain TSV.
fn corpus_slice(dir: &Path, n: usize) -> PathBuf {
    let pairs =
        paragen_data::read_tsv(&shipped_corpus(), paragen_data::MalformedLines::Error).unwrap();
    let path = dir.join("slice.tsv");
    paragen_data::write_tsv(&path, &pairs.pairs[..n]).unwrap();
    path
}

#[test]
fn unknown_backend_is_a_clear_error() {
    let out = paragen_raw(&["--backend", "tpu", "eval"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown backend `tpu`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn backend_not_compiled_in_names_the_feature() {
    let out = paragen_raw(&["--backend", "cuda", "eval"]);
    if !cfg!(feature = "cuda") {
        assert!(stderr(&out).contains("--features cuda"), "{}", stderr(&out));
    }
}

#[test]
fn missing_model_is_a_clear_error() {
    let out = paragen(&["eval", "--model", "/nonexistent/run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/run/run.json` is missing"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn malformed_corpus_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.tsv");
    std::fs::write(&bad, "hello\tbonjour\nno tab on this line\n").unwrap();
    let out_dir = dir.path().join("data");
    let out = paragen(&[
        "prepare",
        "--corpus",
        bad.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad.tsv:2:"), "{}", stderr(&out));
}

#[test]
fn prepare_train_resume_eval_translate() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_slice(dir.path(), 400);
    let data = dir.path().join("data");
    let run = dir.path().join("run");
    let (data_s, run_s) = (data.to_str().unwrap(), run.to_str().unwrap());

    let out = paragen(&[
        "prepare",
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        data_s,
        "--vocab-size",
        "500",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = paragen(&[
        "train-teacher",
        "--preset",
        "tiny",
        "--data",
        data_s,
        "--out",
        run_s,
        "--epochs",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for file in [
        "run.json",
        "tokenizer.json",
        "model.mpk",
        "last.mpk",
        "optimizer.mpk",
        "trainer.json",
    ] {
        assert!(run.join(file).exists(), "{file} missing");
    }

    // A second run into the same directory must not silently overwrite it.
    let out = paragen(&[
        "train-teacher",
        "--preset",
        "tiny",
        "--data",
        data_s,
        "--out",
        run_s,
    ]);
    assert!(
        stderr(&out).contains("already holds a run"),
        "{}",
        stderr(&out)
    );

    let out = paragen(&["train-teacher", "--out", run_s, "--resume", "--epochs", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let epochs: Vec<u64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(epochs, vec![1, 2]);

    let out = paragen(&[
        "eval", "--model", run_s, "--json", "--limit", "12", "--beam", "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["bleu", "chrf", "seconds"] {
        assert!(
            report[key].as_f64().is_some_and(f64::is_finite),
            "{key}: {report}"
        );
    }
    assert_eq!(report["sentences"], 12);
    assert_eq!(report["decoding"], "beam2");

    let mut child = Command::new(env!("CARGO_BIN_EXE_paragen"))
        .args([
            "--quiet",
            "--backend",
            "ndarray",
            "translate",
            "--model",
            run_s,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"In the beginning God created the heavens and the earth.\nGod is love.\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 2);
}
