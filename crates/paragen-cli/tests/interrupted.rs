//! Runs that are interrupted or moved: a training run killed with SIGKILL at random
//! moments resumes from a complete checkpoint set every time, and a run directory finds
//! its data from wherever it is used.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use paragen_backend::TestBackend;
use paragen_infer::{Model, RunConfig, RunDir};

mod common;

use common::*;

/// `paragen` run from `cwd`, quietly, on flex: the fastest CPU backend, so that kills
/// land in every phase of several epochs, checkpoint writes included.
fn paragen_in(cwd: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_paragen"));
    command
        .current_dir(cwd)
        .args(["--quiet", "--backend", "flex"])
        .args(args);
    command
}

/// Every complete line of `metrics.jsonl` (a kill may leave one partial last line, which
/// the next writer cuts) must be a JSON object; returns their epochs.
fn metric_epochs(run: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("metrics line {line:?} is not JSON: {e}"));
            value["epoch"].as_u64().expect("an epoch")
        })
        .collect()
}

/// The step of the run's newest checkpoint set, after checking that the set is whole:
/// its state parses and its weights load into the model its `run.json` describes.
fn checkpoint_step(run: &Path) -> Option<usize> {
    let dir = RunDir::new(run);
    let checkpoint = dir.latest_checkpoint().expect("readable checkpoints")?;
    let config: RunConfig = dir.load_config().expect("run.json is whole");
    let device = Default::default();
    match Model::<TestBackend>::new(&config.model, &device).unwrap() {
        Model::Ar(model) => {
            checkpoint
                .load_weights(model, &device)
                .expect("whole weights");
        }
        Model::Nat(_) => panic!("a teacher run"),
    }
    Some(checkpoint.state.step)
}

#[test]
fn twenty_kills_at_random_moments_never_lose_a_committed_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    corpus_slice(dir.path(), 300);
    let out = paragen_in(
        dir.path(),
        &["prepare", "--corpus", "slice.tsv", "--out", "data"],
    )
    .args(["--vocab-size", "400"])
    .output()
    .unwrap();
    ok(&out);
    let run = dir.path().join("run");
    let train = |resume: bool| {
        let mut command = paragen_in(
            dir.path(),
            &["train-teacher", "--preset", "tiny", "--data", "data"],
        );
        command.args(["--out", "run", "--epochs", "10000", "--max-tokens", "4096"]);
        if resume {
            command.arg("--resume");
        }
        command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The kill moments scale with how long start-up and one epoch take on this machine
    // now (a loaded machine is several times slower): a first run is timed to its first
    // checkpoint, then killed.
    let started = std::time::Instant::now();
    let mut child = train(false);
    while checkpoint_step(&run).is_none() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "training ended by itself"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint in 5 min"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let first_checkpoint = started.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();
    // A fixed pseudo-random sequence of moments, from inside start-up to a few epochs in.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut last_step = checkpoint_step(&run);
    let mut moved = 0;
    for kill in 0..20 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let share = 0.2 + ((seed >> 33) % 1_000) as f64 / 1_000.0 * 2.8;
        let delay = first_checkpoint.mul_f64(share);
        let mut child = train(true);
        std::thread::sleep(delay);
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "kill {kill}: training ended by itself ({status}): {}",
                stderr(&out)
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let step = checkpoint_step(&run);
        assert!(
            step >= last_step,
            "kill {kill} after {delay:?}: the checkpoint went back from {last_step:?} to {step:?}"
        );
        moved += usize::from(step > last_step);
        last_step = step;
        let epochs = metric_epochs(&run);
        assert!(
            epochs.windows(2).all(|w| w[0] < w[1]),
            "kill {kill}: metrics epochs {epochs:?}"
        );
    }
    assert!(
        moved >= 3,
        "only {moved} of 20 runs got to a new checkpoint (first one after {first_checkpoint:?})"
    );

    // Finished from the last set: no temp file or partial set of the dead writers stays.
    let done = metric_epochs(&run).last().copied().unwrap_or(0) + 1;
    let out = paragen_in(dir.path(), &["train-teacher", "--out", "run", "--resume"])
        .args(["--epochs", &(done + 1).to_string()])
        .output()
        .unwrap();
    ok(&out);
    let leftovers: Vec<String> = [run.clone(), run.join("checkpoints")]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(
        std::fs::read_dir(run.join("checkpoints")).unwrap().count(),
        1
    );
}

#[test]
fn a_run_finds_its_data_from_any_directory() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    corpus_slice(&work, 200);
    let steps: [&[&str]; 2] = [
        &[
            "prepare",
            "--corpus",
            "slice.tsv",
            "--out",
            "data",
            "--vocab-size",
            "300",
        ],
        &[
            "train-teacher",
            "--preset",
            "tiny",
            "--data",
            "data",
            "--out",
            "run",
            "--epochs",
            "1",
        ],
    ];
    for args in steps {
        ok(&paragen_in(&work, args).output().unwrap());
    }
    // From elsewhere, `eval` scores the run's own test split (it used to look for
    // `data` under the current directory). A decoy `data` there must not be read.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(elsewhere.join("data")).unwrap();
    let out = paragen_in(
        &elsewhere,
        &["eval", "--model", "../work/run", "--limit", "3"],
    )
    .arg("--json")
    .output()
    .unwrap();
    ok(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sentences"], 3);
}
