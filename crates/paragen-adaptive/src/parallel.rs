//! Data-parallel translation: the sentences of a document are dealt to several workers
//! (threads sharing the model's weights), each decodes its share in batches, and the
//! outputs are joined in input order.

use burn::prelude::*;
use paragen_data::Tokenizer;
use paragen_infer::{
    TranslateError, Translator, check_sources, translate_ids, translate_lines_with,
    translate_texts_with,
};

/// Splits a document into sentences: after `.`, `!` or `?` (and closing quotes or
/// brackets) followed by white space, and at line breaks. Blank pieces are dropped.
pub fn split_sentences(document: &str) -> Vec<String> {
    let mut sentences = Vec::new();
    for line in document.lines() {
        let chars: Vec<char> = line.chars().collect();
        let mut start = 0;
        for i in 0..chars.len() {
            if !matches!(chars[i], '.' | '!' | '?') {
                continue;
            }
            // Closing quotes and brackets stay with the sentence they close.
            let mut end = i + 1;
            while end < chars.len()
                && matches!(chars[end], '"' | '\'' | ')' | ']' | '»' | '”' | '’')
            {
                end += 1;
            }
            if end == chars.len() || chars[end].is_whitespace() {
                sentences.push(chars[start..end].iter().collect::<String>());
                start = end;
            }
        }
        sentences.push(chars[start..].iter().collect::<String>());
    }
    sentences
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Deals sentence indices to `workers` shards of about equal work: longest first, each
/// to the shard with the fewest tokens so far.
pub fn shard_by_length(lengths: &[usize], workers: usize) -> Vec<Vec<usize>> {
    let workers = workers.clamp(1, lengths.len().max(1));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut shards = vec![Vec::new(); workers];
    let mut load = vec![0usize; workers];
    for i in order {
        let lightest = (0..workers).min_by_key(|&w| (load[w], w)).unwrap_or(0);
        load[lightest] += lengths[i].max(1);
        shards[lightest].push(i);
    }
    shards
}

/// Decodes `sources` with one thread per translator, each on its shard, in batches of
/// `batch_size`; outputs in input order. One translator decodes on the calling thread.
pub fn translate_ids_parallel<B: Backend>(
    translators: &[Translator<'_, B>],
    sources: &[Vec<u32>],
    batch_size: usize,
) -> Result<Vec<Vec<u32>>, TranslateError> {
    let Some(first) = translators.first() else {
        return Err(TranslateError::Options(
            "no worker to translate with".into(),
        ));
    };
    check_sources(first.model, sources)?;
    if translators.len() == 1 || sources.len() < 2 {
        return translate_ids(first, sources, batch_size, false);
    }
    let lengths: Vec<usize> = sources.iter().map(Vec::len).collect();
    let shards = shard_by_length(&lengths, translators.len());
    let decoded: Vec<Result<Vec<Vec<u32>>, TranslateError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shards
            .iter()
            .zip(translators)
            .map(|(shard, translator)| {
                let shard_sources: Vec<Vec<u32>> =
                    shard.iter().map(|&i| sources[i].clone()).collect();
                scope.spawn(move || translate_ids(translator, &shard_sources, batch_size, false))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a translation worker panicked"))
            .collect()
    });
    let mut outputs = vec![Vec::new(); sources.len()];
    for (shard, result) in shards.iter().zip(decoded) {
        for (&i, out) in shard.iter().zip(result?) {
            outputs[i] = out;
        }
    }
    Ok(outputs)
}

/// [`paragen_infer::translate_lines`] on several workers: blank lines stay blank, output
/// line N translates input line N.
pub fn translate_lines_parallel<B: Backend, S: AsRef<str>>(
    translators: &[Translator<'_, B>],
    tokenizer: &Tokenizer,
    lines: &[S],
    batch_size: usize,
) -> Result<Vec<String>, TranslateError> {
    translate_lines_with(lines, |texts| {
        translate_texts_with(tokenizer, texts, |sources| {
            translate_ids_parallel(translators, sources, batch_size)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_into_sentences_at_their_ends_and_line_breaks() {
        let document = "In the beginning. God said: \"Let there be light!\" And there was light?\n\
                        A new line without a stop\n\n   3.5 is a number. End";
        assert_eq!(
            split_sentences(document),
            [
                "In the beginning.",
                "God said: \"Let there be light!\"",
                "And there was light?",
                "A new line without a stop",
                "3.5 is a number.",
                "End"
            ]
        );
        assert!(split_sentences("  \n ").is_empty());
    }

    #[test]
    fn shards_cover_every_sentence_once_with_balanced_tokens() {
        let lengths = [30, 5, 5, 20, 10, 10, 2];
        let shards = shard_by_length(&lengths, 2);
        let mut all: Vec<usize> = shards.concat();
        all.sort_unstable();
        assert_eq!(all, (0..lengths.len()).collect::<Vec<_>>());
        let tokens: Vec<usize> = shards
            .iter()
            .map(|s| s.iter().map(|&i| lengths[i]).sum())
            .collect();
        assert_eq!(tokens, [42, 40]);
        assert_eq!(shard_by_length(&[4], 8).len(), 1);
        assert_eq!(shard_by_length(&[], 3), vec![Vec::<usize>::new()]);
    }

    #[test]
    fn several_workers_translate_exactly_as_one_in_input_order() {
        use paragen_data::SpecialTokens;
        use paragen_infer::{Model, ModelConfig};
        use paragen_models::TransformerConfig;
        type B = paragen_backend::TestBackend;
        let shapes = TransformerConfig::tiny(40, SpecialTokens::trained());
        let model = Model::<B>::new(&ModelConfig::Ar(shapes), &Default::default()).unwrap();
        let translator = Translator::new(&model);
        let sources: Vec<Vec<u32>> = (0..11)
            .map(|i| (0..(1 + i * 3 % 7)).map(|t| 5 + (i * 7 + t) % 30).collect())
            .collect();
        let one = translate_ids(&translator, &sources, 4, false).unwrap();
        let three = translate_ids_parallel(&[translator; 3], &sources, 4).unwrap();
        assert_eq!(one, three);
        let err = translate_ids_parallel(&[translator; 2], &[vec![5], vec![]], 4).unwrap_err();
        assert!(err.to_string().contains("input line 2"), "{err}");
    }
}
