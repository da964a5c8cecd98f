//! `paragen translate`: sentences from a file or stdin to stdout.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Context, bail};
use burn::tensor::backend::AutodiffBackend;
use paragen_adaptive::parallel::translate_lines_parallel;
use paragen_backend::BackendTask;
use paragen_infer::{LoadedRun, translate_lines};

use crate::args::{DecodeArgs, TranslateArgs};

/// Opens a run for decoding the way the flags ask.
pub fn open<B: burn::prelude::Backend>(
    dir: &Path,
    args: &DecodeArgs,
    device: &B::Device,
) -> anyhow::Result<LoadedRun<B>> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    LoadedRun::open(dir, &args.request(), args.rescore_with.as_deref(), device).map_err(|e| {
        let hint = matches!(e, paragen_infer::OpenError::Decoding { .. }).then_some(
            "AR models take --beam; CMLM students --length-beam, --iterations and \
             --rescore-with; CTC students decode in one pass",
        );
        let err = anyhow::Error::new(e);
        match hint {
            Some(hint) => err.context(hint),
            None => err,
        }
    })
}

pub struct Translate(pub TranslateArgs);

impl BackendTask for Translate {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = self.0;
        let loaded = open::<B::InnerBackend>(&args.model, &args.decode, &device)?;
        let lines = read_lines(args.input.as_deref())?;
        let outputs = match args.workers {
            1 => translate_lines(
                &loaded.translator(),
                &loaded.tokenizer,
                &lines,
                args.decode.batch_size,
                true,
            )?,
            workers => translate_lines_parallel(
                &vec![loaded.translator(); workers],
                &loaded.tokenizer,
                &lines,
                args.decode.batch_size,
            )?,
        };
        let mut stdout = std::io::stdout().lock();
        for output in outputs {
            writeln!(stdout, "{output}")?;
        }
        Ok(())
    }
}

fn read_lines(input: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let lines: Result<Vec<String>, _> = match input {
        Some(path) if path != Path::new("-") => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot read `{}`", path.display()))?;
            std::io::BufReader::new(file).lines().collect()
        }
        _ => std::io::stdin().lock().lines().collect(),
    };
    let lines = lines.context("input is not valid UTF-8 text")?;
    Ok(lines)
}
