//! Batched translation with a trained model: text in, text out, input order kept.

use burn::prelude::*;
use paragen_data::batch::inference_batches;
use paragen_data::{Tokenizer, TokenizerError};
use paragen_models::nat::{
    NatDecoder, NatDecoding, best_candidate, nat_decode, rescore_with_teacher,
};
use paragen_models::{BeamOptions, LengthLimit, ModelError, Transformer, beam_search, greedy};
use serde::{Deserialize, Serialize};

pub use crate::model::Model;
use crate::progress::Progress;

/// How a model searches.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Decoding {
    /// Autoregressive greedy search on the KV cache.
    Greedy(LengthLimit),
    /// Autoregressive beam search on the KV cache.
    Beam(BeamOptions),
    /// Parallel decoding: one pass, length beam, mask-predict iterations.
    Nat(NatDecoding),
}

impl Decoding {
    /// The way a model decodes when nothing else is asked: greedy search for AR models,
    /// one parallel pass for NAT.
    pub fn default_for<B: Backend>(model: &Model<B>) -> Self {
        match model {
            Model::Ar(_) => Decoding::Greedy(LengthLimit::default()),
            Model::Nat(_) => Decoding::Nat(NatDecoding::default()),
        }
    }

    /// Short name for reports: `greedy`, `beam4`, `one-pass`, `mask-predict-4`, ...
    pub fn name(&self) -> String {
        match self {
            Decoding::Greedy(_) => "greedy".into(),
            Decoding::Beam(o) if o.beam_size == 1 => "greedy".into(),
            Decoding::Beam(o) => format!("beam{}", o.beam_size),
            Decoding::Nat(o) => o.name(),
        }
    }
}

/// What a user asks of decoding, before it is checked against a model (the flags of
/// `paragen translate|eval|profile`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeRequest {
    /// AR: beam size (1: greedy search).
    pub beam: usize,
    /// AR: length penalty exponent of beam search.
    pub length_penalty: f32,
    /// Longest AR output.
    pub limit: LengthLimit,
    /// NAT: mask-predict passes (1: one parallel pass).
    pub iterations: usize,
    /// NAT: target lengths tried per sentence.
    pub length_beam: usize,
    /// NAT: whether an AR model rescores the length-beam candidates.
    pub rescore: bool,
    /// NAT: merge neighbouring repeated tokens.
    pub collapse_repeats: bool,
    /// CTC student: penalty on the blank's logit (positive: longer outputs); `None`
    /// takes the run's tuned one (see [`crate::tune`]) when opened by
    /// [`crate::LoadedRun`], else 0.
    pub blank_penalty: Option<f32>,
}

impl Default for DecodeRequest {
    fn default() -> Self {
        Self {
            beam: 1,
            length_penalty: 1.0,
            limit: LengthLimit::default(),
            iterations: 1,
            length_beam: 1,
            rescore: false,
            collapse_repeats: true,
            blank_penalty: None,
        }
    }
}

impl DecodeRequest {
    /// The decoding this request means for `model`, or why it does not apply: AR models
    /// take a beam, CMLM students a length beam, iterations and a rescorer, and CTC
    /// students decode in one pass only.
    pub fn decoding_for<B: Backend>(&self, model: &Model<B>) -> Result<Decoding, TranslateError> {
        let refuse = |reason: &str| Err(TranslateError::Options(reason.to_string()));
        if self.beam == 0 || self.iterations == 0 || self.length_beam == 0 {
            return refuse("beam, iterations and length beam must be at least 1");
        }
        let nat_only = self.iterations > 1 || self.length_beam > 1 || self.rescore;
        let is_ctc = model.is_ctc();
        let blank_penalty = self.blank_penalty.unwrap_or(0.0);
        if blank_penalty != 0.0 && !is_ctc {
            return refuse("a blank penalty applies to CTC students only");
        }
        match model {
            Model::Ar(_) if nat_only => refuse(
                "iterations, a length beam and rescoring apply to NAT models; an AR model takes a beam",
            ),
            Model::Ar(_) if self.beam == 1 => Ok(Decoding::Greedy(self.limit)),
            Model::Ar(_) => Ok(Decoding::Beam(BeamOptions {
                beam_size: self.beam,
                length_penalty: self.length_penalty,
                limit: self.limit,
            })),
            Model::Nat(_) if self.beam > 1 => {
                refuse("a beam applies to AR models; a NAT takes a length beam and iterations")
            }
            Model::Nat(_) if nat_only && is_ctc => refuse(
                "this is a CTC student: it decodes in one pass without predicting a \
                     length, so iterations, a length beam and rescoring do not apply",
            ),
            Model::Nat(_) => Ok(Decoding::Nat(NatDecoding {
                length_beam: self.length_beam,
                iterations: self.iterations,
                collapse_repeats: self.collapse_repeats,
                blank_penalty,
            })),
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
    #[error("{0}")]
    Options(String),
    #[error(
        "{decoding} decoding of {batch} sentences of up to {tokens} tokens at once needs about \
         {needed_gib:.1} GiB, and {available_gib:.1} GiB is available: lower --batch-size \
         (or the beam or length beam)"
    )]
    OutOfMemory {
        decoding: String,
        batch: usize,
        tokens: usize,
        needed_gib: f64,
        available_gib: f64,
    },
    #[error("{decoding} decoding does not apply to {kind} models")]
    WrongDecoding {
        decoding: String,
        kind: &'static str,
    },
}

/// A model, the way it decodes, and (for NAT) an optional AR model that rescores the
/// length-beam candidates.
#[derive(Clone, Copy, Debug)]
pub struct Translator<'a, B: Backend> {
    pub model: &'a Model<B>,
    pub decoding: Decoding,
    pub rescorer: Option<&'a Transformer<B>>,
}

impl<'a, B: Backend> Translator<'a, B> {
    /// The model with its default decoding and no rescorer.
    pub fn new(model: &'a Model<B>) -> Self {
        Self {
            model,
            decoding: Decoding::default_for(model),
            rescorer: None,
        }
    }

    /// Short name for reports, e.g. `beam4`, `one-pass-lb3-rescored` or `ctc2-one-pass`
    /// (a CTC student with a decoder twice the source length).
    pub fn name(&self) -> String {
        let mut name = self.decoding.name();
        if let Model::Nat(nat) = self.model
            && let NatDecoder::Ctc { upsample } = nat.config().decoder
        {
            name = format!("ctc{upsample}-{name}");
        }
        match self.rescorer {
            Some(_) => format!("{name}-rescored"),
            None => name,
        }
    }

    /// Refuses batches (of sentence indices into `lengths`) that cannot fit in the
    /// memory available now, before any is decoded.
    pub fn check_memory(
        &self,
        batches: &[Vec<usize>],
        lengths: &[usize],
    ) -> Result<(), TranslateError> {
        let available = crate::memory::available_bytes();
        for batch in batches {
            let tokens = batch.iter().map(|&i| lengths[i]).max().unwrap_or(0);
            let needed =
                crate::memory::decode_bytes(self.model, &self.decoding, batch.len(), tokens);
            crate::memory::check_fits(needed, available).map_err(|(needed, available)| {
                let gib = |bytes: f64| bytes / f64::from(1u32 << 30);
                TranslateError::OutOfMemory {
                    decoding: self.name(),
                    batch: batch.len(),
                    tokens,
                    needed_gib: gib(needed),
                    available_gib: gib(available),
                }
            })?;
        }
        Ok(())
    }

    /// Decodes one batch of token-id sources (no length checks, no reordering).
    pub fn decode_batch(&self, sources: &[Vec<u32>]) -> Result<Vec<Vec<u32>>, TranslateError> {
        let wrong = |kind| TranslateError::WrongDecoding {
            decoding: self.decoding.name(),
            kind,
        };
        Ok(match (self.model, self.decoding) {
            (Model::Ar(m), Decoding::Greedy(limit)) => greedy(m, sources, limit)?,
            (Model::Ar(m), Decoding::Beam(options)) => beam_search(m, sources, options)?,
            (Model::Nat(m), Decoding::Nat(options)) => {
                let candidates = nat_decode(m, sources, options)?;
                match self.rescorer {
                    Some(teacher) => rescore_with_teacher(teacher, sources, &candidates)?,
                    None => candidates.iter().map(|c| best_candidate(c)).collect(),
                }
            }
            (Model::Ar(_), Decoding::Nat(_)) => return Err(wrong("autoregressive")),
            (Model::Nat(_), _) => return Err(wrong("non-autoregressive")),
        })
    }
}

/// Refuses sources that `model` cannot translate (empty, or longer than its
/// positions), naming the first such input line.
pub fn check_sources<B: Backend>(
    model: &Model<B>,
    sources: &[Vec<u32>],
) -> Result<(), TranslateError> {
    let lengths: Vec<usize> = sources.iter().map(|s| s.len()).collect();
    model.check_source_lengths(&lengths).map_err(|e| match e {
        ModelError::TooLong { index, .. } | ModelError::Empty { index } => TranslateError::Input {
            line: index + 1,
            source: e,
        },
        other => other.into(),
    })
}

/// Decodes token-id sources in length-sorted batches of `batch_size`, returning outputs
/// in input order.
pub fn translate_ids<B: Backend>(
    translator: &Translator<'_, B>,
    sources: &[Vec<u32>],
    batch_size: usize,
    show_progress: bool,
) -> Result<Vec<Vec<u32>>, TranslateError> {
    check_sources(translator.model, sources)?;
    let lengths: Vec<usize> = sources.iter().map(|s| s.len()).collect();
    let mut outputs = vec![Vec::new(); sources.len()];
    let batches = inference_batches(&lengths, batch_size);
    translator.check_memory(&batches, &lengths)?;
    let mut progress =
        show_progress.then(|| Progress::new("decoding", sources.len() as u64, "sentences"));
    for batch in batches {
        let batch_sources: Vec<Vec<u32>> = batch.iter().map(|&i| sources[i].clone()).collect();
        let decoded = translator.decode_batch(&batch_sources)?;
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
    translator: &Translator<'_, B>,
    tokenizer: &Tokenizer,
    texts: &[&str],
    batch_size: usize,
    show_progress: bool,
) -> Result<Vec<String>, TranslateError> {
    translate_texts_with(tokenizer, texts, |sources| {
        translate_ids(translator, sources, batch_size, show_progress)
    })
}

/// Tokenizes `texts`, decodes their token ids with `decode` (which keeps their order),
/// and detokenizes the outputs: [`translate_texts`] with any way of decoding.
pub fn translate_texts_with(
    tokenizer: &Tokenizer,
    texts: &[&str],
    decode: impl FnOnce(&[Vec<u32>]) -> Result<Vec<Vec<u32>>, TranslateError>,
) -> Result<Vec<String>, TranslateError> {
    let sources = tokenizer.encode_batch(texts)?;
    let outputs = decode(&sources)?;
    outputs
        .iter()
        .map(|ids| tokenizer.decode(ids).map_err(TranslateError::from))
        .collect()
}

/// Translates a text line by line, as `paragen translate` reads its input: surrounding
/// whitespace is trimmed, and a blank line gives a blank output line, so that output line
/// N always translates input line N.
pub fn translate_lines<B: Backend, S: AsRef<str>>(
    translator: &Translator<'_, B>,
    tokenizer: &Tokenizer,
    lines: &[S],
    batch_size: usize,
    show_progress: bool,
) -> Result<Vec<String>, TranslateError> {
    translate_lines_with(lines, |texts| {
        translate_texts(translator, tokenizer, texts, batch_size, show_progress)
    })
}

/// [`translate_lines`] with any way of translating the non-blank lines.
pub fn translate_lines_with<S: AsRef<str>>(
    lines: &[S],
    translate: impl FnOnce(&[&str]) -> Result<Vec<String>, TranslateError>,
) -> Result<Vec<String>, TranslateError> {
    let texts: Vec<&str> = lines
        .iter()
        .map(|l| l.as_ref().trim())
        .filter(|t| !t.is_empty())
        .collect();
    let mut outputs = translate(&texts)?.into_iter();
    Ok(lines
        .iter()
        .map(|line| match line.as_ref().trim().is_empty() {
            true => String::new(),
            false => outputs.next().unwrap_or_default(),
        })
        .collect())
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
    translator: &Translator<'_, B>,
    tokenizer: &Tokenizer,
    pairs: &[paragen_data::Pair],
    batch_size: usize,
    show_progress: bool,
) -> Result<EvalReport, TranslateError> {
    let sources: Vec<&str> = pairs.iter().map(|p| p.src.as_str()).collect();
    let references: Vec<&str> = pairs.iter().map(|p| p.tgt.as_str()).collect();
    let started = std::time::Instant::now();
    let hypotheses = translate_texts(translator, tokenizer, &sources, batch_size, show_progress)?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(EvalReport {
        bleu: crate::metrics::corpus_bleu(&hypotheses, &references).score,
        chrf: crate::metrics::corpus_chrf(&hypotheses, &references),
        sentences: pairs.len(),
        seconds,
        sentences_per_second: pairs.len() as f64 / seconds.max(1e-9),
        decoding: translator.name(),
        batch_size,
        hypotheses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use paragen_backend::TestBackend;
    use paragen_data::SpecialTokens;
    use paragen_models::TransformerConfig;
    use paragen_models::nat::NatConfig;

    type B = TestBackend;

    fn models() -> [Model<B>; 3] {
        let shapes = TransformerConfig::tiny(24, SpecialTokens::trained());
        let device = Default::default();
        [
            Model::new(&ModelConfig::Ar(shapes.clone()), &device).unwrap(),
            Model::new(&ModelConfig::Nat(NatConfig::new(shapes.clone())), &device).unwrap(),
            Model::new(&ModelConfig::Nat(NatConfig::ctc(shapes, 2)), &device).unwrap(),
        ]
    }

    #[test]
    fn each_kind_gets_the_decodings_it_supports_and_a_reason_for_the_others() {
        let [ar, cmlm, ctc] = models();
        let ask = |r: DecodeRequest, m: &Model<B>| r.decoding_for(m).map_err(|e| e.to_string());
        let plain = DecodeRequest::default();
        let beam = DecodeRequest { beam: 4, ..plain };
        let refine = DecodeRequest {
            iterations: 4,
            length_beam: 3,
            ..plain
        };
        assert_eq!(ask(plain, &ar).unwrap().name(), "greedy");
        assert_eq!(ask(beam, &ar).unwrap().name(), "beam4");
        assert_eq!(ask(refine, &cmlm).unwrap().name(), "mask-predict-4-lb3");
        assert_eq!(ask(plain, &ctc).unwrap().name(), "one-pass");
        assert!(
            ask(refine, &ar)
                .unwrap_err()
                .contains("apply to NAT models")
        );
        assert!(ask(beam, &cmlm).unwrap_err().contains("AR models"));
        assert!(ask(refine, &ctc).unwrap_err().contains("CTC student"));
        let penalised = DecodeRequest {
            blank_penalty: Some(1.5),
            ..plain
        };
        assert_eq!(ask(penalised, &ctc).unwrap().name(), "one-pass-bp1.5");
        for other in [&ar, &cmlm] {
            assert!(
                ask(penalised, other)
                    .unwrap_err()
                    .contains("CTC students only")
            );
        }
        let zero = DecodeRequest { beam: 0, ..plain };
        assert!(ask(zero, &ar).unwrap_err().contains("at least 1"));
        assert_eq!(Translator::new(&ctc).name(), "ctc2-one-pass");
    }
}
