//! Batched translation with a trained model: text in, text out, input order kept.

use burn::prelude::*;
use paragen_data::batch::inference_batches;
use paragen_data::{Tokenizer, TokenizerError};
use paragen_models::{BeamOptions, LengthLimit, ModelError, Transformer, beam_search, greedy};
use serde::{Deserialize, Serialize};

use crate::progress::Progress;

/// How an autoregressive model searches.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Decoding {
    Greedy(LengthLimit),
    Beam(BeamOptions),
}

impl Decoding {
    /// Short name for reports: `greedy` or `beam4`.
    pub fn name(&self) -> String {
        match self {
            Decoding::Greedy(_) => "greedy".into(),
            Decoding::Beam(o) if o.beam_size == 1 => "greedy".into(),
            Decoding::Beam(o) => format!("beam{}", o.beam_size),
        }
    }
}

/// Errors of translating text.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("input line {line}: {source}")]
    Input {
        line: usize,
        #[source]
        source: ModelError,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// Decodes token-id sources in length-sorted batches of `batch_size`, returning outputs
/// in input order.
pub fn translate_ids<B: Backend>(
    model: &Transformer<B>,
    sources: &[Vec<u32>],
    decoding: Decoding,
    batch_size: usize,
    show_progress: bool,
) -> Result<Vec<Vec<u32>>, TranslateError> {
    let lengths: Vec<usize> = sources.iter().map(|s| s.len()).collect();
    model.check_source_lengths(&lengths).map_err(|e| match e {
        ModelError::TooLong { index, .. } | ModelError::Empty { index } => TranslateError::Input {
            line: index + 1,
            source: e,
        },
        other => other.into(),
    })?;
    let mut outputs = vec![Vec::new(); sources.len()];
    let batches = inference_batches(&lengths, batch_size);
    let mut progress =
        show_progress.then(|| Progress::new("decoding", sources.len() as u64, "sentences"));
    for batch in batches {
        let batch_sources: Vec<Vec<u32>> = batch.iter().map(|&i| sources[i].clone()).collect();
        let decoded = match decoding {
            Decoding::Greedy(limit) => greedy(model, &batch_sources, limit)?,
            Decoding::Beam(options) => beam_search(model, &batch_sources, options)?,
        };
        for (i, out) in batch.iter().zip(decoded) {
            outputs[*i] = out;
        }
        if let Some(p) = progress.as_mut() {
            p.advance(batch.len() as u64, String::new);
        }
    }
    if let Some(p) = progress {
        p.finish();
    }
    Ok(outputs)
}

/// Tokenizes, translates and detokenizes sentences.
pub fn translate_texts<B: Backend>(
    model: &Transformer<B>,
    tokenizer: &Tokenizer,
    texts: &[&str],
    decoding: Decoding,
    batch_size: usize,
    show_progress: bool,
) -> Result<Vec<String>, TranslateError> {
    let sources = tokenizer.encode_batch(texts)?;
    let outputs = translate_ids(model, &sources, decoding, batch_size, show_progress)?;
    outputs
        .iter()
        .map(|ids| tokenizer.decode(ids).map_err(TranslateError::from))
        .collect()
}

/// Quality and speed of a model on a set of sentence pairs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalReport {
    pub bleu: f64,
    pub chrf: f64,
    pub sentences: usize,
    /// Wall time of decoding (tokenization and detokenization included).
    pub seconds: f64,
    pub sentences_per_second: f64,
    pub decoding: String,
    pub batch_size: usize,
    #[serde(skip)]
    pub hypotheses: Vec<String>,
}

/// Translates the sources of `pairs` and scores them against their targets.
pub fn evaluate<B: Backend>(
    model: &Transformer<B>,
    tokenizer: &Tokenizer,
    pairs: &[paragen_data::Pair],
    decoding: Decoding,
    batch_size: usize,
    show_progress: bool,
) -> Result<EvalReport, TranslateError> {
    let sources: Vec<&str> = pairs.iter().map(|p| p.src.as_str()).collect();
    let references: Vec<&str> = pairs.iter().map(|p| p.tgt.as_str()).collect();
    let started = std::time::Instant::now();
    let hypotheses = translate_texts(
        model,
        tokenizer,
        &sources,
        decoding,
        batch_size,
        show_progress,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(EvalReport {
        bleu: crate::metrics::corpus_bleu(&hypotheses, &references).score,
        chrf: crate::metrics::corpus_chrf(&hypotheses, &references),
        sentences: pairs.len(),
        seconds,
        sentences_per_second: pairs.len() as f64 / seconds.max(1e-9),
        decoding: decoding.name(),
        batch_size,
        hypotheses,
    })
}
