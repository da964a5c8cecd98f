//! paragen's BLEU and chrF must equal sacrebleu's on fixed inputs. The numbers in
//! `fixtures/sacrebleu.json` were produced by sacrebleu itself
//! (`fixtures/make_sacrebleu_fixtures.py`), never typed by hand.

use paragen_infer::metrics::{corpus_bleu, corpus_chrf};
use serde_json::Value;

fn cases() -> Vec<Value> {
    let text = include_str!("fixtures/sacrebleu.json");
    let json: Value = serde_json::from_str(text).unwrap();
    json["cases"].as_array().unwrap().clone()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn bleu_equals_sacrebleu() {
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let bleu = corpus_bleu(&strings(&case["hypotheses"]), &strings(&case["references"]));
        let expected = case["bleu"].as_f64().unwrap();
        assert!(
            (bleu.score - expected).abs() < 1e-9,
            "{name}: BLEU {} vs sacrebleu {expected}",
            bleu.score
        );
        assert_eq!(
            bleu.sys_len as u64,
            case["sys_len"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            bleu.ref_len as u64,
            case["ref_len"].as_u64().unwrap(),
            "{name}"
        );
        assert!(
            (bleu.brevity_penalty - case["bleu_bp"].as_f64().unwrap()).abs() < 1e-9,
            "{name}"
        );
        for (p, e) in bleu
            .precisions
            .iter()
            .zip(case["bleu_precisions"].as_array().unwrap())
        {
            assert!(
                (p - e.as_f64().unwrap()).abs() < 1e-9,
                "{name}: precisions {:?} vs {e}",
                bleu.precisions
            );
        }
    }
}

#[test]
fn chrf_equals_sacrebleu() {
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let chrf = corpus_chrf(&strings(&case["hypotheses"]), &strings(&case["references"]));
        let expected = case["chrf"].as_f64().unwrap();
        assert!(
            (chrf - expected).abs() < 1e-9,
            "{name}: chrF {chrf} vs sacrebleu {expected}"
        );
    }
}

#[test]
fn fixtures_cover_the_smoothing_case() {
    // At least one case must have an n-gram order without any match, where sacrebleu's
    // default `exp` smoothing changes the score.
    assert!(cases().iter().any(|c| {
        let counts = c["bleu_counts"].as_array().unwrap();
        let totals = c["bleu_totals"].as_array().unwrap();
        c["bleu"].as_f64().unwrap() > 0.0
            && counts
                .iter()
                .zip(totals)
                .any(|(n, t)| n.as_u64() == Some(0) && t.as_u64().unwrap() > 0)
    }));
}
