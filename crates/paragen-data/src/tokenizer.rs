//! The joint source/target BPE tokenizer, trained with the `tokenizers` crate and saved as
//! a standard `tokenizer.json` (loadable by Hugging Face tokenizers in any language).
//!
//! Normalization is Unicode NFC; pre-tokenization is SentencePiece-style `Metaspace`
//! (spaces become `▁`, so decoding restores the text's spacing exactly).

use std::path::Path;

use tokenizers::AddedToken;
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::metaspace::Metaspace;

use crate::fsio::write_atomic;

/// Errors from training, loading or using the tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot load tokenizer `{path}`: {reason}")]
    Load { path: String, reason: String },
    #[error(
        "tokenizer `{path}` lacks the special token `{token}`; train it with `paragen prepare`"
    )]
    MissingSpecial { path: String, token: &'static str },
    #[error("tokenizer training failed: {0}")]
    Train(String),
    #[error("tokenizer failed on input: {0}")]
    Encode(String),
    #[error("cannot save tokenizer: {0}")]
    Save(String),
}

/// Ids of the special tokens every paragen model relies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialTokens {
    pub pad: u32,
    pub bos: u32,
    pub eos: u32,
    pub unk: u32,
    /// The mask token of conditional masked language models (NAT refinement).
    pub mask: u32,
}

const SPECIALS: [&str; 5] = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"];

impl SpecialTokens {
    /// The ids [`Tokenizer::train`] always assigns: the specials come first, in order.
    pub const fn trained() -> Self {
        Self {
            pad: 0,
            bos: 1,
            eos: 2,
            unk: 3,
            mask: 4,
        }
    }
}

/// A trained BPE tokenizer plus the ids of its special tokens.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .finish()
    }
}

impl Tokenizer {
    /// Trains a joint BPE with `vocab_size` entries on the given sentences.
    pub fn train<'a>(
        sentences: impl Iterator<Item = &'a str> + Send,
        vocab_size: usize,
    ) -> Result<Self, TokenizerError> {
        let model = BPE::builder()
            .unk_token("<unk>".to_string())
            .build()
            .map_err(|e| TokenizerError::Train(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(model);
        inner
            .with_normalizer(Some(NFC))
            .with_pre_tokenizer(Some(Metaspace::default()))
            .with_decoder(Some(MetaspaceDecoder::default()));
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(2)
            .special_tokens(
                SPECIALS
                    .iter()
                    .map(|t| AddedToken::from(*t, true))
                    .collect(),
            )
            .build()
            .into();
        inner
            .train(&mut trainer, sentences)
            .map_err(|e| TokenizerError::Train(e.to_string()))?;
        Self::from_inner(inner, "<trained>")
    }

    fn from_inner(inner: tokenizers::Tokenizer, path: &str) -> Result<Self, TokenizerError> {
        let id = |token: &'static str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| TokenizerError::MissingSpecial {
                    path: path.to_string(),
                    token,
                })
        };
        let special = SpecialTokens {
            pad: id("<pad>")?,
            bos: id("<s>")?,
            eos: id("</s>")?,
            unk: id("<unk>")?,
            mask: id("<mask>")?,
        };
        Ok(Self { inner, special })
    }

    /// Loads a `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let shown = path.display().to_string();
        let refuse = |reason: String| TokenizerError::Load {
            path: shown.clone(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| refuse(e.to_string()))?;
        // tokenizers 0.22 panics ("Helper") on a JSON syntax error inside some sections,
        // such as the decoder (found by fuzzing, `crates/paragen-fuzz`): parse the JSON
        // first, then build the tokenizer from the parsed value.
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| refuse(format!("not valid JSON: {e}")))?;
        let inner = crate::guard::catch_quietly(|| serde_json::from_value(json))
            .map_err(|panic| refuse(format!("the tokenizers crate rejected it: {panic}")))?
            .map_err(|e: serde_json::Error| refuse(e.to_string()))?;
        Self::from_inner(inner, &shown)
    }

    /// Saves as `tokenizer.json` (atomically).
    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        let json = self
            .inner
            .to_string(false)
            .map_err(|e| TokenizerError::Save(e.to_string()))?;
        write_atomic(path, json.as_bytes()).map_err(|e| TokenizerError::Save(e.to_string()))
    }

    pub fn special(&self) -> SpecialTokens {
        self.special
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of a sentence, without BOS/EOS (models add those themselves).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Encodes many sentences in parallel.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, TokenizerError> {
        self.inner
            .encode_batch(texts.to_vec(), false)
            .map(|es| es.iter().map(|e| e.get_ids().to_vec()).collect())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Text of token ids; special tokens are dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &[&str] = &[
        "In the beginning God created the heavens and the earth.",
        "Au commencement, Dieu créa les cieux et la terre.",
        "God said, \"Let there be light,\" and there was light.",
        "Dieu dit: Que la lumière soit! Et la lumière fut.",
    ];

    #[test]
    fn trains_saves_loads_and_round_trips_text() {
        let tok = Tokenizer::train(TEXT.iter().copied(), 200).unwrap();
        let s = tok.special();
        assert_eq!((s.pad, s.bos, s.eos, s.unk, s.mask), (0, 1, 2, 3, 4));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let loaded = Tokenizer::load(&path).unwrap();
        for line in TEXT {
            let ids = loaded.encode(line).unwrap();
            assert_eq!(ids, tok.encode(line).unwrap());
            assert!(!ids.contains(&s.unk), "{line}: {ids:?}");
            assert_eq!(&loaded.decode(&ids).unwrap(), line);
        }
    }

    #[test]
    fn loading_garbage_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, "{not json").unwrap();
        let msg = Tokenizer::load(&path).unwrap_err().to_string();
        assert!(msg.contains("tokenizer.json"), "{msg}");
    }

    #[test]
    fn a_syntax_error_inside_the_decoder_is_an_error_not_a_panic() {
        // The input the fuzzer found: tokenizers panics on it ("Helper").
        let tok = Tokenizer::train(TEXT.iter().copied(), 200).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let at = text.find("\"decoder\"").expect("a decoder section");
        let colon = at + text[at..].find("\"type\"").unwrap() + "\"type\"".len();
        let broken = format!("{}{}", &text[..colon], &text[colon..].replacen(':', " ", 1));
        std::fs::write(&path, broken).unwrap();
        let msg = Tokenizer::load(&path).unwrap_err().to_string();
        assert!(
            msg.contains("tokenizer.json") && msg.contains("JSON"),
            "{msg}"
        );
    }
}
