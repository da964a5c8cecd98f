//! Fuzz targets: every reader of a file a user hands paragen, run on arbitrary bytes.
//!
//! Each target writes the bytes where paragen would find them (a corpus file, a run
//! directory's `tokenizer.json`, `run.json` or `model.mpk`, the text given to
//! `paragen translate`) and calls the same library code the commands call. A target may
//! return an error for bad input; it must never panic, hang or allocate without bound.
//! Where a reader succeeds, the target also checks what the result promises (pairs have
//! both sides, a loaded run translates).
//!
//! Two drivers run these functions: cargo-fuzz (`fuzz/`, nightly, coverage-guided, the
//! long runs reported in `docs/fuzzing.md`) and this crate's proptest tests (stable,
//! mutations of valid [`seeds`], a short smoke run in CI).
//!
//! **Depends on:** paragen-data, paragen-models, paragen-infer; nothing depends on it.

use std::cell::RefCell;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use paragen_data::Tokenizer;
use paragen_data::corpus::{CorpusSource, MalformedLines, read_corpus};
use paragen_infer::{
    DecodeRequest, LoadedRun, Model, ModelConfig, ModelKind, RunConfig, RunDir, TrainingJson,
    Translator, translate_lines,
};
use paragen_models::{LengthLimit, TransformerConfig};

/// The backend the targets run on.
pub type B = paragen_backend::FlexTestBackend;

/// Sentences the scratch tokenizer trains on.
const TEXT: &[&str] = &[
    "In the beginning God created the heavens and the earth.",
    "Au commencement, Dieu créa les cieux et la terre.",
    "The earth was formless and empty.",
    "La terre était informe et vide.",
    "God said, Let there be light, and there was light.",
    "Dieu dit: Que la lumière soit! Et la lumière fut.",
];

/// A scratch folder per thread, holding a valid tiny run that the targets copy or alter.
struct Scratch {
    _dir: tempfile::TempDir,
    /// The untouched run (run.json, tokenizer.json, model.mpk).
    run: PathBuf,
    /// A run whose files a target overwrites, one per call.
    work: PathBuf,
    /// The untouched run, opened once: the targets that do not alter it reuse it.
    loaded: LoadedRun<B>,
    /// The untouched run's files, to restore the one a target altered.
    pristine: Vec<(&'static str, Vec<u8>)>,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

fn with_scratch<R>(f: impl FnOnce(&Scratch) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut cell = cell.borrow_mut();
        let scratch = cell.get_or_insert_with(|| make_scratch().expect("scratch run builds"));
        f(scratch)
    })
}

fn make_scratch() -> Result<Scratch, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let run = dir.path().join("run");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&run)?;
    std::fs::create_dir_all(&work)?;
    let tokenizer = Tokenizer::train(TEXT.iter().copied(), 120)?;
    let config = tiny_config(&tokenizer);
    let files = RunDir::new(&run);
    files.save_config(&config)?;
    files.save_tokenizer(&tokenizer)?;
    let model = paragen_models::Transformer::<B>::new(config.transformer(), &Default::default())?;
    files.save_module::<B, _>("model.mpk", &model)?;
    let mut pristine = Vec::new();
    for file in RUN_FILES {
        std::fs::copy(run.join(file), work.join(file))?;
        pristine.push((file, std::fs::read(run.join(file))?));
    }
    // Tiny tensors: one thread saves the fuzzer the pool's synchronisation.
    paragen_backend::set_cpu_threads(1);
    let loaded = LoadedRun::open(&run, &request(), None, &Default::default())?;
    Ok(Scratch {
        _dir: dir,
        run,
        work,
        loaded,
        pristine,
    })
}

const RUN_FILES: [&str; 3] = ["run.json", "tokenizer.json", "model.mpk"];

fn tiny_config(tokenizer: &Tokenizer) -> RunConfig {
    RunConfig {
        kind: ModelKind::Ar,
        preset: "tiny".into(),
        model: ModelConfig::Ar(TransformerConfig::tiny(
            tokenizer.vocab_size(),
            tokenizer.special(),
        )),
        data_dir: PathBuf::from("data"),
        paragen_version: env!("CARGO_PKG_VERSION").into(),
        training: TrainingJson::new(),
    }
}

/// Runs `check` on the work run with `file` replaced by `data`, then puts the valid
/// file back.
fn with_altered_run(scratch: &Scratch, file: &str, data: &[u8], check: impl FnOnce(&Path)) {
    let path = scratch.work.join(file);
    std::fs::write(&path, data).expect("scratch run is writable");
    check(&scratch.work);
    let (_, valid) = scratch
        .pristine
        .iter()
        .find(|(name, _)| *name == file)
        .expect("a file of the run");
    std::fs::write(&path, valid).expect("scratch run is writable");
}

/// Greedy decoding of at most two tokens: the targets fuzz what reads the input, and a
/// random tiny model decoding to its length limit would only spend the fuzzer's time.
fn request() -> DecodeRequest {
    DecodeRequest {
        limit: LengthLimit {
            ratio: 0.01,
            extra: 1,
        },
        ..DecodeRequest::default()
    }
}

/// Opens a run and, when it opens, translates a fixed text with it.
fn open_and_translate(dir: &Path) {
    let device = Default::default();
    if let Ok(loaded) = LoadedRun::<B>::open(dir, &request(), None, &device) {
        // An altered tokenizer may make the text untranslatable (empty or too long once
        // tokenized): an error, but never a panic or a short answer.
        if let Ok(out) = translate_lines(&loaded.translator(), &loaded.tokenizer, TEXT, 8, false) {
            assert_eq!(out.len(), TEXT.len());
        }
    }
}

/// The corpus reader on a TSV (plain, or gzipped when the first byte is odd), in both
/// malformed-line policies.
pub fn corpus(data: &[u8]) {
    with_scratch(|scratch| {
        let gz = data.first().is_some_and(|b| b % 2 == 1);
        let path = scratch
            .work
            .join(if gz { "corpus.tsv.gz" } else { "corpus.tsv" });
        std::fs::write(&path, data.get(1..).unwrap_or_default()).expect("scratch is writable");
        for policy in [MalformedLines::Error, MalformedLines::Skip] {
            if let Ok(corpus) = read_corpus(&CorpusSource::Tsv(path.clone()), policy) {
                for pair in &corpus.pairs {
                    assert!(
                        !pair.src.trim().is_empty() && !pair.tgt.trim().is_empty(),
                        "a pair with an empty side was accepted: {pair:?}"
                    );
                }
            }
        }
    })
}

/// `tokenizer.json` of a run: the tokenizer loads or is refused, and a run with it
/// either opens and translates or is refused.
pub fn tokenizer(data: &[u8]) {
    with_scratch(|scratch| {
        with_altered_run(scratch, "tokenizer.json", data, |dir| {
            if let Ok(tokenizer) = Tokenizer::load(&dir.join("tokenizer.json")) {
                for text in TEXT {
                    if let Ok(ids) = tokenizer.encode(text) {
                        let _ = tokenizer.decode(&ids);
                    }
                }
            }
            open_and_translate(dir);
        })
    })
}

/// `run.json` of a run: its config is read or refused, and the run opens or is refused.
pub fn run_file(data: &[u8]) {
    with_scratch(|scratch| {
        with_altered_run(scratch, "run.json", data, |dir| {
            let _ = RunDir::new(dir).load_config::<TrainingJson>();
            open_and_translate(dir);
        })
    })
}

/// `model.mpk` of a run: the weights load into the model of `run.json` or are refused;
/// weights that load translate.
pub fn checkpoint(data: &[u8]) {
    with_scratch(|scratch| {
        with_altered_run(scratch, "model.mpk", data, |dir| {
            let files = RunDir::new(dir);
            let device = Default::default();
            let model = match &scratch.loaded.model {
                Model::Ar(m) => m.clone(),
                Model::Nat(_) => unreachable!("the scratch run is AR"),
            };
            if let Ok(model) = files.load_module::<B, _>("model.mpk", model, &device) {
                let model = Model::Ar(model);
                let translator = Translator {
                    model: &model,
                    decoding: scratch.loaded.decoding,
                    rescorer: None,
                };
                let out = translate_lines(&translator, &scratch.loaded.tokenizer, TEXT, 8, false);
                assert_eq!(out.expect("loaded weights translate").len(), TEXT.len());
            }
        })
    })
}

/// The text given to `paragen translate`: read as lines (invalid UTF-8 is refused) and
/// translated by the tiny run; blank lines stay blank.
pub fn translate_input(data: &[u8]) {
    with_scratch(|scratch| {
        let Ok(lines) = data.lines().collect::<Result<Vec<String>, _>>() else {
            return;
        };
        let loaded = &scratch.loaded;
        if let Ok(out) = translate_lines(&loaded.translator(), &loaded.tokenizer, &lines, 8, false)
        {
            assert_eq!(out.len(), lines.len(), "one output line per input line");
            for (line, output) in lines.iter().zip(&out) {
                if line.trim().is_empty() {
                    assert!(output.is_empty(), "a blank line gave {output:?}");
                }
            }
        }
    })
}

/// Valid inputs of each target, the starting points of mutation.
pub mod seeds {
    use super::*;

    /// Every target's name (as in `fuzz/Cargo.toml`) with its seeds.
    pub fn by_target() -> Vec<(&'static str, Vec<Vec<u8>>)> {
        vec![
            ("corpus", corpus()),
            ("tokenizer", tokenizer()),
            ("run_file", run_file()),
            ("checkpoint", checkpoint()),
            ("translate_input", translate_input()),
        ]
    }

    pub fn corpus() -> Vec<Vec<u8>> {
        let pairs: Vec<paragen_data::Pair> = TEXT
            .chunks(2)
            .enumerate()
            .map(|(i, pair)| paragen_data::Pair {
                id: (i + 1).to_string(),
                src: pair[0].into(),
                tgt: pair[1].into(),
            })
            .collect();
        let tsv: String = pairs
            .iter()
            .map(|p| format!("{}\t{}\t{}\n", p.id, p.src, p.tgt))
            .collect();
        // The gzipped seed is what paragen itself writes.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("seed.tsv.gz");
        paragen_data::corpus::write_tsv(&path, &pairs).expect("seed corpus writes");
        let gz = std::fs::read(path).expect("seed corpus reads");
        vec![
            [&[0u8][..], tsv.as_bytes()].concat(),
            [&[1u8][..], &gz].concat(),
        ]
    }

    fn scratch_file(file: &str) -> Vec<u8> {
        with_scratch(|s| std::fs::read(s.run.join(file)).expect("scratch run is readable"))
    }

    pub fn tokenizer() -> Vec<Vec<u8>> {
        vec![scratch_file("tokenizer.json")]
    }

    pub fn run_file() -> Vec<Vec<u8>> {
        let ar = scratch_file("run.json");
        let mut nat: serde_json::Value = serde_json::from_slice(&ar).expect("run.json is JSON");
        let transformer = nat["model"]["ar"].take();
        nat["kind"] = "nat".into();
        nat["model"] = serde_json::json!({
            "nat": { "transformer": transformer, "max_length_offset": 8,
                     "length_loss_weight": 0.1, "decoder": "cmlm" }
        });
        vec![
            ar,
            serde_json::to_vec_pretty(&nat).expect("JSON serializes"),
        ]
    }

    pub fn checkpoint() -> Vec<Vec<u8>> {
        vec![scratch_file("model.mpk")]
    }

    pub fn translate_input() -> Vec<Vec<u8>> {
        vec![
            TEXT.join("\n").into_bytes(),
            b"\n  \nGod said.\n\n".to_vec(),
            "é\u{1f}\u{200b}\t x\r\n".as_bytes().to_vec(),
        ]
    }
}
