//! Translates stdin with any paragen run directory, through the library API:
//! `echo "God is love." | cargo run --release -p paragen-infer --example translate -- models/teacher`

use std::io::BufRead;

use paragen_infer::{RunDir, Translator, translate_texts};

type B = burn::backend::Flex<f32>;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/teacher".into());
    let run = RunDir::new(&dir);
    let (config, model) = run.load_model::<B>(&Default::default())?;
    let tokenizer = run.load_tokenizer()?;
    eprintln!(
        "{dir}: a {} model, {} parameters",
        config.kind.name(),
        model.param_count()
    );
    let lines: Vec<String> = std::io::stdin().lock().lines().collect::<Result<_, _>>()?;
    let texts: Vec<&str> = lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    let translator = Translator::new(&model); // greedy for AR models, one pass for NAT
    for line in translate_texts(&translator, &tokenizer, &texts, 64, false)? {
        println!("{line}");
    }
    Ok(())
}
