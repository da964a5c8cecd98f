//! The fuzz targets on stable Rust: mutations of valid inputs (truncations, flipped and
//! inserted bytes, huge numbers, repeated slices) and plain random bytes. CI runs a short
//! smoke run of each (`PROPTEST_CASES` sets how many inputs); the coverage-guided long
//! runs are cargo-fuzz's (`fuzz/`).

use paragen_fuzz::seeds;
use proptest::prelude::*;
use proptest::sample::Index;

#[derive(Clone, Debug)]
enum Edit {
    Truncate(Index),
    Flip(Index, u8),
    Insert(Index, Vec<u8>),
    Remove(Index, Index),
    Repeat(Index, Index, u8),
    /// A number where the input has a digit: sizes and counts out of every bound.
    Number(Index, u64),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<Index>().prop_map(Edit::Truncate),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Edit::Remove(i, j)),
        (any::<Index>(), any::<Index>(), 1..4u8).prop_map(|(i, j, n)| Edit::Repeat(i, j, n)),
        (
            any::<Index>(),
            prop_oneof![
                Just(0u64),
                Just(u32::MAX as u64 + 1),
                Just(u64::MAX),
                any::<u64>()
            ]
        )
            .prop_map(|(i, n)| Edit::Number(i, n)),
    ]
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for edit in edits {
        let len = data.len().max(1);
        match edit {
            Edit::Truncate(i) => data.truncate(i.index(len)),
            Edit::Flip(i, b) if !data.is_empty() => data[i.index(len)] ^= b | 1,
            Edit::Flip(..) => {}
            Edit::Insert(i, bytes) => {
                let at = i.index(len + 1).min(data.len());
                data.splice(at..at, bytes.iter().copied());
            }
            Edit::Remove(i, j) => {
                let (a, b) = (i.index(len).min(data.len()), j.index(len).min(data.len()));
                data.drain(a.min(b)..a.max(b));
            }
            Edit::Repeat(i, j, n) => {
                let (a, b) = (i.index(len).min(data.len()), j.index(len).min(data.len()));
                let slice = data[a.min(b)..a.max(b)].to_vec();
                for _ in 0..*n {
                    data.splice(a.max(b)..a.max(b), slice.iter().copied());
                }
            }
            Edit::Number(i, n) => {
                let digits: Vec<usize> = (0..data.len())
                    .filter(|&k| data[k].is_ascii_digit())
                    .collect();
                if !digits.is_empty() {
                    let at = digits[i.index(digits.len())];
                    let end = (at..data.len())
                        .find(|&k| !data[k].is_ascii_digit())
                        .unwrap_or(data.len());
                    data.splice(at..end, n.to_string().into_bytes());
                }
            }
        }
    }
    data
}

/// Mutations of the given seeds, and random bytes one time in eight.
fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        7 => (0..seeds.len(), prop::collection::vec(edit(), 0..6))
            .prop_map(move |(s, edits)| apply(&seeds[s], &edits)),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

proptest! {
    #[test]
    fn corpus_reader(data in inputs(seeds::corpus())) {
        paragen_fuzz::corpus(&data);
    }

    #[test]
    fn tokenizer_file(data in inputs(seeds::tokenizer())) {
        paragen_fuzz::tokenizer(&data);
    }

    #[test]
    fn run_file(data in inputs(seeds::run_file())) {
        paragen_fuzz::run_file(&data);
    }

    #[test]
    fn checkpoint_file(data in inputs(seeds::checkpoint())) {
        paragen_fuzz::checkpoint(&data);
    }

    #[test]
    fn translate_input(data in inputs(seeds::translate_input())) {
        paragen_fuzz::translate_input(&data);
    }
}

#[test]
fn every_seed_is_accepted_as_it_is() {
    // The seeds must be valid, or mutating them explores only the error paths.
    use paragen_data::corpus::{CorpusSource, MalformedLines, read_corpus};
    for seed in seeds::corpus() {
        let dir = tempfile::tempdir().unwrap();
        let name = if seed[0] % 2 == 1 {
            "c.tsv.gz"
        } else {
            "c.tsv"
        };
        std::fs::write(dir.path().join(name), &seed[1..]).unwrap();
        let corpus = read_corpus(
            &CorpusSource::Tsv(dir.path().join(name)),
            MalformedLines::Error,
        )
        .unwrap();
        assert_eq!(corpus.pairs.len(), 3);
    }
    for seed in seeds::run_file() {
        let value: serde_json::Value = serde_json::from_slice(&seed).unwrap();
        assert!(value["model"].is_object());
    }
    assert!(!seeds::tokenizer()[0].is_empty() && !seeds::checkpoint()[0].is_empty());
}
