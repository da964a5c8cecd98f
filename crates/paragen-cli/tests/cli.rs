//! End-to-end tests of the `paragen` binary on a slice of the shipped corpus.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

mod common;

use common::*;

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
fn out_of_range_options_are_refused_before_any_work() {
    for (args, expect) in [
        (&["eval", "--beam", "100000"][..], "outside 1..=64"),
        (
            &["eval", "--max-len-ratio", "NaN"][..],
            "not a finite number",
        ),
        (&["eval", "--length-penalty=-1"][..], "must not be negative"),
        (&["--threads", "0", "eval"][..], "outside 1..=256"),
        (&["train-teacher", "--lr=-0.1"][..], "greater than 0"),
        (
            &["train-teacher", "--epochs", "0"][..],
            "outside 1..=100000",
        ),
        (
            &["prepare", "--vocab-size", "0"][..],
            "outside 16..=1000000",
        ),
    ] {
        let out = paragen(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
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
    let set = run.join(format!(
        "checkpoints/step-{:09}",
        paragen_infer::RunDir::new(&run).load_state().unwrap().step
    ));
    for file in [
        run.join("run.json"),
        run.join("tokenizer.json"),
        run.join("model.mpk"),
        set.join("last.mpk"),
        set.join("optimizer.mpk"),
        set.join("trainer.json"),
    ] {
        assert!(file.exists(), "{} missing", file.display());
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

    // Output that cannot be written is an error, not a panic.
    if let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
        let out = Command::new(env!("CARGO_BIN_EXE_paragen"))
            .args(["--quiet", "--backend", "ndarray", "eval", "--model", run_s])
            .args(["--limit", "2"])
            .stdout(full)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("cannot write the output"),
            "{}",
            stderr(&out)
        );
    }

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
        .write_all(b"In the beginning God created the heavens and the earth.\n\nGod is love.\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // A blank input line is a blank output line: line N translates line N.
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[1].is_empty(), "{lines:?}");

    release_demo_and_init_from(dir.path(), data_s, run_s);
}

/// A release of the run is a run directory of its own: `demo` scores it, a new run
/// starts from its weights, and the page that documents it names the commands.
fn release_demo_and_init_from(dir: &Path, data: &str, run: &str) {
    let models = dir.join("models");
    let release = models.join("teacher");
    let out = paragen(&[
        "release",
        "--model",
        run,
        "--out",
        release.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = std::fs::read_to_string(release.join("TRAINING.md")).unwrap();
    assert!(page.contains("train-teacher --preset tiny"), "{page}");
    assert!(page.contains("--resume --epochs 2"), "{page}");
    let out = paragen(&[
        "demo",
        "--models",
        models.to_str().unwrap(),
        "--data",
        data,
        "--limit",
        "6",
        "--show",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("teacher") && table.contains("beam4"),
        "{table}"
    );

    let next = dir.join("next");
    let out = paragen(&[
        "train-teacher",
        "--preset",
        "tiny",
        "--data",
        data,
        "--out",
        next.to_str().unwrap(),
        "--epochs",
        "1",
        "--init-from",
        release.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(next.join("run.json")).unwrap()).unwrap();
    assert_eq!(config["init_from"], release.to_str().unwrap());
    // Other shapes cannot start from it.
    let out = paragen(&[
        "train-teacher",
        "--preset",
        "quick",
        "--data",
        data,
        "--out",
        dir.join("other").to_str().unwrap(),
        "--init-from",
        release.to_str().unwrap(),
    ]);
    assert!(stderr(&out).contains("other shapes"), "{}", stderr(&out));

    // A tokenizer of another vocabulary is refused by name, not a panic in a kernel.
    let swapped = dir.join("swapped");
    std::fs::create_dir_all(&swapped).unwrap();
    for file in ["run.json", "model.mpk"] {
        std::fs::copy(Path::new(run).join(file), swapped.join(file)).unwrap();
    }
    let small = dir.join("small-data");
    let corpus = corpus_slice(dir, 100);
    let out = paragen(&[
        "prepare",
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        small.to_str().unwrap(),
        "--vocab-size",
        "200",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::copy(small.join("tokenizer.json"), swapped.join("tokenizer.json")).unwrap();
    let out = paragen(&["eval", "--model", swapped.to_str().unwrap(), "--data", data]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("tokenizer.json") && stderr(&out).contains("another model"),
        "{}",
        stderr(&out)
    );
}

/// Prepares 300 pairs of the shipped corpus into `data` and trains a tiny teacher on
/// them for one epoch into `teacher`.
fn tiny_teacher(dir: &Path, data: &str, teacher: &str) {
    let corpus = corpus_slice(dir, 300);
    ok(&paragen(&[
        "prepare",
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        data,
        "--vocab-size",
        "400",
    ]));
    ok(&paragen(&[
        "train-teacher",
        "--preset",
        "tiny",
        "--data",
        data,
        "--out",
        teacher,
        "--epochs",
        "1",
    ]));
}

#[test]
fn distill_train_students_and_decode_them_every_way() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (data, teacher, distilled) = (path("data"), path("teacher"), path("distilled"));
    let (nat, ctc, shallow) = (path("nat"), path("ctc"), path("shallow"));
    tiny_teacher(dir.path(), &data, &teacher);
    ok(&paragen(&[
        "distill",
        "--teacher",
        &teacher,
        "--out",
        &distilled,
        "--beam",
        "2",
        "--limit",
        "50",
    ]));
    let distilled_train = std::fs::read_to_string(dir.path().join("distilled/train.tsv")).unwrap();
    assert_eq!(distilled_train.lines().count(), 50);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("distilled/distill.json")).unwrap())
            .unwrap();
    assert_eq!(report["decoding"], "beam2");

    let student = |kind: &str, out: &str, extra: &[&str]| {
        let args = [
            &[
                "train-student",
                "--kind",
                kind,
                "--preset",
                "tiny",
                "--data",
                &distilled,
                "--teacher",
                &teacher,
                "--out",
                out,
                "--epochs",
                "1",
            ][..],
            extra,
        ]
        .concat();
        ok(&paragen(&args));
    };
    student("nat", &nat, &["--init-from-teacher"]);
    student("nat-ctc", &ctc, &["--init-from-teacher", "--upsample", "3"]);
    student(
        "ar-shallow",
        &shallow,
        &["--kd-weight", "0.5", "--kd-temperature", "2"],
    );
    let run_json = |run: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(Path::new(run).join("run.json")).unwrap()).unwrap()
    };
    let nat_config = run_json(&nat);
    assert_eq!(nat_config["kind"], "nat");
    assert_eq!(nat_config["student"]["glance_ratio"], 0.5);
    assert_eq!(nat_config["model"]["nat"]["decoder"], "cmlm");
    let ctc_config = run_json(&ctc);
    assert_eq!(ctc_config["kind"], "nat-ctc");
    assert_eq!(ctc_config["model"]["nat"]["decoder"]["ctc"]["upsample"], 3);
    let shallow_config = run_json(&shallow);
    assert_eq!(shallow_config["kind"], "ar-shallow");
    assert_eq!(shallow_config["model"]["ar"]["decoder_layers"], 1);
    assert_eq!(shallow_config["model"]["ar"]["encoder_layers"], 3);

    let eval = |model: &str, extra: &[&str]| -> Output {
        let args = [
            &["eval", "--model", model, "--json", "--limit", "10"][..],
            extra,
        ]
        .concat();
        paragen(&args)
    };
    for (extra, name) in [
        (&[][..], "one-pass"),
        (&["--length-beam", "3"][..], "one-pass-lb3"),
        (&["--iterations", "4"][..], "mask-predict-4"),
        (
            &["--length-beam", "2", "--rescore-with", teacher.as_str()][..],
            "one-pass-lb2-rescored",
        ),
    ] {
        let out = eval(&nat, extra);
        ok(&out);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["decoding"], name);
        assert!(
            report["bleu"].as_f64().is_some_and(f64::is_finite),
            "{report}"
        );
    }
    let out = eval(&shallow, &["--beam", "2"]);
    ok(&out);
    let out = eval(&ctc, &[]);
    ok(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["decoding"], "ctc3-one-pass");
    let out = eval(&ctc, &["--iterations", "2"]);
    assert!(stderr(&out).contains("CTC student"), "{}", stderr(&out));

    // A shortlist run decodes like any other; only NAT students take one, and a
    // shortlist of another vocabulary is refused by name.
    let listed = path("ctc-shortlist");
    let out = paragen(&[
        "shortlist",
        "--model",
        &ctc,
        "--out",
        &listed,
        "--frequent",
        "50",
    ]);
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("allows"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = eval(&listed, &[]);
    ok(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["bleu"].as_f64().is_some_and(f64::is_finite),
        "{report}"
    );
    // A release of it keeps (and is scored with) its shortlist.
    let out = paragen(&["release", "--model", &listed, "--out", &path("released")]);
    ok(&out);
    assert!(dir.path().join("released/shortlist.json").exists());
    let out = paragen(&["shortlist", "--model", &teacher, "--out", &path("t-sl")]);
    assert!(stderr(&out).contains("NAT students"), "{}", stderr(&out));
    let shortlist_file = dir.path().join("ctc-shortlist/shortlist.json");
    let mut shortlist: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&shortlist_file).unwrap()).unwrap();
    shortlist["vocab_size"] = serde_json::json!(7);
    std::fs::write(&shortlist_file, shortlist.to_string()).unwrap();
    let out = eval(&listed, &[]);
    assert!(
        stderr(&out).contains("shortlist.json") && stderr(&out).contains("vocabulary of 7"),
        "{}",
        stderr(&out)
    );

    // A quantized run decodes like any other, also with a shortlist, and ships as a
    // release; its weights cannot start training, and bad bits are refused by name.
    for (model, bits) in [(&teacher, "8"), (&ctc, "4")] {
        let quantized = path(&format!("q{bits}"));
        let out = paragen(&[
            "quantize", "--model", model, "--out", &quantized, "--bits", bits,
        ]);
        ok(&out);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("int{bits} weights")),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let out = eval(&quantized, &[]);
        ok(&out);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            report["bleu"].as_f64().is_some_and(f64::is_finite),
            "{report}"
        );
    }
    let out = paragen(&[
        "shortlist",
        "--model",
        &path("q4"),
        "--out",
        &path("q4-listed"),
    ]);
    ok(&out);
    ok(&eval(&path("q4-listed"), &[]));
    let out = paragen(&[
        "release",
        "--model",
        &path("q8"),
        "--out",
        &path("q8-release"),
    ]);
    ok(&out);
    let page = std::fs::read_to_string(dir.path().join("q8-release/TRAINING.md")).unwrap();
    assert!(page.contains("int8 weights"), "{page}");
    let out = paragen(&[
        "quantize",
        "--model",
        &path("q8"),
        "--out",
        &path("q8-again"),
    ]);
    assert!(
        stderr(&out).contains("already quantized"),
        "{}",
        stderr(&out)
    );
    let out = paragen(&[
        "quantize",
        "--model",
        &teacher,
        "--out",
        &path("q3"),
        "--bits",
        "3",
    ]);
    assert!(
        stderr(&out).contains("`3` is not 8 or 4"),
        "{}",
        stderr(&out)
    );
    let out = paragen(&[
        "train-teacher",
        "--data",
        &data,
        "--out",
        &path("from-q8"),
        "--preset",
        "tiny",
        "--init-from",
        &path("q8"),
    ]);
    assert!(
        stderr(&out).contains("quantized to 8 bits"),
        "{}",
        stderr(&out)
    );

    // Flags of one kind of model are refused on the other, with the reason.
    let out = eval(&teacher, &["--iterations", "2"]);
    assert!(
        stderr(&out).contains("apply to NAT models"),
        "{}",
        stderr(&out)
    );
    let out = eval(&nat, &["--beam", "4"]);
    assert!(stderr(&out).contains("--length-beam"), "{}", stderr(&out));

    let out = paragen(&[
        "profile",
        "--model",
        &nat,
        "--quality-sentences",
        "5",
        "--time-sentences",
        "4",
        "--batch-sizes",
        "1,4",
        "--runs",
        "1",
        "--iterations",
        "2",
        "--roofline",
    ]);
    ok(&out);
    let profile: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(profile["kind"], "nat");
    assert_eq!(profile["decoding"], "mask-predict-2");
    assert!(profile["roofline"]["forward_gflops"].as_f64().unwrap() > 0.0);
}

#[test]
fn prune_removes_heads_neurons_and_layers_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (data, teacher, pruned) = (path("data"), path("teacher"), path("pruned"));
    tiny_teacher(dir.path(), &data, &teacher);
    let out = paragen(&[
        "prune",
        "--model",
        &teacher,
        "--out",
        &pruned,
        "--heads",
        "0.5",
        "--ffn",
        "0.3",
        "--drop-layers",
        "encoder.0",
        "--recover-minutes",
        "0.02",
    ]);
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    // Tiny: 2+2 layers of 4 heads (decoder layers have two attentions); half of the 20
    // heads of the layers that stay go.
    assert!(
        stdout.contains("heads 24 -> 10") && stdout.contains("layers 4 -> 3"),
        "{stdout}"
    );
    assert!(stdout.contains("fine-tuned"), "{stdout}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("pruned/run.json")).unwrap())
            .unwrap();
    let shapes = &config["model"]["ar"];
    assert_eq!(shapes["encoder_layers"], 1);
    assert_eq!(shapes["pruned"]["encoder"].as_array().unwrap().len(), 1);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("pruned/prune.json")).unwrap())
            .unwrap();
    assert!(
        record["parameters"]["after"].as_u64() < record["parameters"]["before"].as_u64(),
        "{record}"
    );
    let out = paragen(&["eval", "--model", &pruned, "--json", "--limit", "10"]);
    ok(&out);
    // An interrupted or short recovery continues; the pruned run quantizes like any run.
    ok(&paragen(&[
        "prune",
        "--out",
        &pruned,
        "--resume",
        "--recover-minutes",
        "0.02",
    ]));
    let out = paragen(&[
        "prune",
        "--model",
        &pruned,
        "--out",
        &path("again"),
        "--heads",
        "0.2",
    ]);
    ok(&out);
    ok(&paragen(&[
        "quantize",
        "--model",
        &pruned,
        "--out",
        &path("pruned-q8"),
    ]));
    ok(&paragen(&[
        "eval",
        "--model",
        &path("pruned-q8"),
        "--limit",
        "5",
    ]));
    assert!(dir.path().join("pruned-q8/prune.json").exists());

    // A release of it says what was removed, and descends from the unpruned model.
    ok(&paragen(&[
        "release",
        "--model",
        &pruned,
        "--out",
        &path("pruned-release"),
    ]));
    let page = std::fs::read_to_string(dir.path().join("pruned-release/TRAINING.md")).unwrap();
    assert!(
        page.contains("pruned by `paragen prune`") && page.contains("heads 24 -> 10"),
        "{page}"
    );
    assert!(dir.path().join("pruned-release/prune.json").exists());

    // Magnitude pruning zeroes weights in place and reports its sparse size; it cannot
    // be fine-tuned.
    let out = paragen(&[
        "prune",
        "--model",
        &teacher,
        "--out",
        &path("sparse"),
        "--sparsity",
        "0.5",
    ]);
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        stdout.contains("as CSR") && stdout.contains("heads 24 -> 24"),
        "{stdout}"
    );
    ok(&paragen(&[
        "eval",
        "--model",
        &path("sparse"),
        "--limit",
        "5",
    ]));
    let out = paragen(&[
        "prune",
        "--out",
        &path("sparse"),
        "--resume",
        "--recover-minutes",
        "1",
    ]);
    assert!(
        stderr(&out).contains("fill its zeroed weights"),
        "{}",
        stderr(&out)
    );

    // One command chains the steps; each step's run stays, the last is the result.
    let small = path("small");
    let out = paragen(&[
        "compress", "--model", &teacher, "--out", &small, "--heads", "0.25", "--bits", "4",
    ]);
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        stdout.contains("the compressed model is") && stdout.contains("pruned-int4"),
        "{stdout}"
    );
    assert!(dir.path().join("small/pruned/prune.json").exists());
    ok(&paragen(&[
        "eval",
        "--model",
        &format!("{small}/pruned-int4"),
        "--limit",
        "5",
    ]));
    let out = paragen(&[
        "compress", "--model", &teacher, "--out", &small, "--bits", "none",
    ]);
    assert!(stderr(&out).contains("nothing to do"), "{}", stderr(&out));

    // Bad requests name the value.
    for (args, message) in [
        (&["--heads", "1"][..], "not below 1"),
        (&["--drop-layers", "decoder.7"][..], "has 2 layers"),
        (
            &["--drop-layers", "middle.0"][..],
            "not `encoder` or `decoder`",
        ),
        (
            &["--drop-layers", "decoder.0,decoder.1"][..],
            "every decoder layer",
        ),
        (&["--heads", "0.99"][..], "keep one in every attention"),
    ] {
        let out = paragen(
            &[
                &["prune", "--model", &teacher, "--out", &path("bad")][..],
                args,
            ]
            .concat(),
        );
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
    let out = paragen(&[
        "prune",
        "--model",
        &path("pruned-q8"),
        "--out",
        &path("bad"),
        "--heads",
        "0.2",
    ]);
    assert!(
        stderr(&out).contains("prune its float source"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_decode_that_cannot_fit_in_memory_is_refused_before_it_starts() {
    // 4096 long sentences at beam 64 with the shipped teacher: hundreds of GiB of KV
    // cache. Without the estimate this was OOM-killed after filling the machine.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("long.txt");
    let line = "And God said, Let there be light: and there was light. ".repeat(10);
    std::fs::write(&input, format!("{line}\n").repeat(4096)).unwrap();
    let started = std::time::Instant::now();
    let out = paragen(&[
        "translate",
        "--model",
        &repo_path("models/teacher"),
        "--beam",
        "64",
        "--batch-size",
        "4096",
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains("GiB is available") && text.contains("--batch-size"),
        "{text}"
    );
    assert!(
        started.elapsed().as_secs() < 60,
        "refused only after decoding"
    );
}

/// One HTTP/1.1 request over a plain socket: the status line's code and the body.
fn http(address: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn serve_answers_over_http_and_stops_on_sigterm_and_workers_translate_alike() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let (data, teacher) = (dir.path().join("data"), dir.path().join("teacher"));
    let (data, teacher) = (data.to_str().unwrap(), teacher.to_str().unwrap());
    tiny_teacher(dir.path(), data, teacher);

    let input = dir.path().join("input.txt");
    std::fs::write(
        &input,
        "God is love.\n\nIn the beginning.\nLight.\nAnd darkness.\n",
    )
    .unwrap();
    let translate = |workers: &str| {
        let out = paragen(&[
            "translate",
            "--model",
            teacher,
            "--input",
            input.to_str().unwrap(),
            "--workers",
            workers,
            "--batch-size",
            "2",
        ]);
        ok(&out);
        String::from_utf8(out.stdout).unwrap()
    };
    let one = translate("1");
    assert_eq!(one.lines().count(), 5);
    assert_eq!(translate("3"), one);

    let mut server = Command::new(env!("CARGO_BIN_EXE_paragen"))
        .args([
            "--backend",
            "ndarray",
            "serve",
            "--models",
            teacher,
            "--data",
            data,
        ])
        .args(["--addr", "127.0.0.1:0", "--profile-sentences", "8"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = std::io::BufReader::new(server.stderr.take().unwrap());
    let address = loop {
        let mut line = String::new();
        assert!(
            log.read_line(&mut line).unwrap() > 0,
            "the server exited before listening"
        );
        if let Some(at) = line.find("listening on http://") {
            break line[at + "listening on http://".len()..].trim().to_string();
        }
    };
    let (status, body) = http(
        &address,
        "POST",
        "/v1/translate",
        r#"{"text": "God is love."}"#,
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer["variant"].as_str().unwrap().starts_with("teacher/"),
        "{body}"
    );
    let greedy = r#"{"text": "God is love.", "variant": "teacher/greedy"}"#;
    let (status, body) = http(&address, "POST", "/v1/translate", greedy);
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["translation"], one.lines().next().unwrap());
    let (status, body) = http(&address, "POST", "/v1/translate", "{not json");
    assert_eq!(status, 400, "{body}");
    // The profile is kept beside the model for the next start.
    assert!(Path::new(teacher).join("variants.json").is_file());

    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = server.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM must stop the server cleanly: {status}"
    );
}
