//! A variant: one run directory decoded one way. A models directory offers the variants
//! that make sense for each kind of model in it.

use std::path::{Path, PathBuf};

use paragen_infer::{DecodeRequest, ModelKind, RunConfig, RunDir};
use serde::{Deserialize, Serialize};

/// Errors of finding variants.
#[derive(Debug, thiserror::Error)]
pub enum VariantError {
    #[error("cannot read the models directory `{dir}`: {source}")]
    Read {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`{0}` holds no paragen run directory (a folder with `run.json`); give a run \
         directory or a folder of them, such as `models/`"
    )]
    NoModels(String),
    #[error(transparent)]
    Run(#[from] paragen_infer::CheckpointError),
    #[error("no variant is named `{name}`; the variants are: {known}")]
    Unknown { name: String, known: String },
}

/// How a variant decodes: the options of [`DecodeRequest`] that make one variant differ
/// from another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VariantOptions {
    /// AR beam size (1: greedy).
    pub beam: usize,
    /// NAT mask-predict passes (1: one parallel pass).
    pub iterations: usize,
    /// NAT target lengths tried.
    pub length_beam: usize,
}

impl Default for VariantOptions {
    fn default() -> Self {
        Self {
            beam: 1,
            iterations: 1,
            length_beam: 1,
        }
    }
}

impl VariantOptions {
    /// The decode request of this variant; a CTC student's blank penalty stays the run's
    /// tuned one.
    pub fn request(&self) -> DecodeRequest {
        DecodeRequest {
            beam: self.beam,
            iterations: self.iterations,
            length_beam: self.length_beam,
            ..DecodeRequest::default()
        }
    }

    /// Short name: `greedy`, `beam4`, `one-pass`, `mask-predict-4`, `...-lb3`.
    pub fn name(&self, kind: ModelKind) -> String {
        let autoregressive = matches!(kind, ModelKind::Ar | ModelKind::ArShallow);
        let base = match (autoregressive, self.beam, self.iterations) {
            (true, 1, _) => "greedy".to_string(),
            (true, beam, _) => format!("beam{beam}"),
            (false, _, 1) => "one-pass".to_string(),
            (false, _, n) => format!("mask-predict-{n}"),
        };
        match self.length_beam {
            1 => base,
            lb => format!("{base}-lb{lb}"),
        }
    }
}

/// One run directory decoded one way, named `<run folder>/<decoding>`, e.g.
/// `teacher/beam4` or `nat-ctc/one-pass`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VariantSpec {
    pub name: String,
    pub run: PathBuf,
    pub kind: ModelKind,
    pub options: VariantOptions,
}

impl VariantSpec {
    pub fn new(run: &Path, kind: ModelKind, options: VariantOptions) -> Self {
        let folder = run
            .file_name()
            .map_or_else(|| run.display().to_string(), |n| n.to_string_lossy().into());
        Self {
            name: format!("{folder}/{}", options.name(kind)),
            run: run.to_path_buf(),
            kind,
            options,
        }
    }
}

/// The decodings worth serving for a kind of model: greedy and beam 4 for the teacher,
/// greedy for the shallow AR student, one pass and four mask-predict passes for a CMLM
/// student, one pass for a CTC student (it has no other).
pub fn default_options(kind: ModelKind) -> Vec<VariantOptions> {
    let plain = VariantOptions::default();
    match kind {
        ModelKind::Ar => vec![plain, VariantOptions { beam: 4, ..plain }],
        ModelKind::ArShallow | ModelKind::NatCtc => vec![plain],
        ModelKind::Nat => vec![
            plain,
            VariantOptions {
                iterations: 4,
                ..plain
            },
        ],
    }
}

/// The variants of `dir`: the run directory itself, or every run directory directly
/// inside it (in name order), each with its [`default_options`].
pub fn discover(dir: &Path) -> Result<Vec<VariantSpec>, VariantError> {
    let runs = if dir.join("run.json").is_file() {
        vec![dir.to_path_buf()]
    } else {
        let entries = std::fs::read_dir(dir).map_err(|source| VariantError::Read {
            dir: dir.display().to_string(),
            source,
        })?;
        let mut runs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("run.json").is_file())
            .collect();
        runs.sort();
        runs
    };
    if runs.is_empty() {
        return Err(VariantError::NoModels(dir.display().to_string()));
    }
    let mut variants = Vec::new();
    for run in runs {
        let config: RunConfig = RunDir::new(&run).load_config()?;
        for options in default_options(config.kind) {
            variants.push(VariantSpec::new(&run, config.kind, options));
        }
    }
    Ok(variants)
}

/// Keeps the variants named in `names` (in that order); all of them when `names` is
/// empty.
pub fn select(
    variants: Vec<VariantSpec>,
    names: &[String],
) -> Result<Vec<VariantSpec>, VariantError> {
    if names.is_empty() {
        return Ok(variants);
    }
    names
        .iter()
        .map(|name| {
            variants
                .iter()
                .find(|v| &v.name == name)
                .cloned()
                .ok_or_else(|| VariantError::Unknown {
                    name: name.clone(),
                    known: variants
                        .iter()
                        .map(|v| v.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_offers_its_decodings_under_readable_names() {
        let names = |kind| {
            default_options(kind)
                .iter()
                .map(|o| VariantSpec::new(Path::new("models/m"), kind, *o).name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(ModelKind::Ar), ["m/greedy", "m/beam4"]);
        assert_eq!(names(ModelKind::ArShallow), ["m/greedy"]);
        assert_eq!(names(ModelKind::Nat), ["m/one-pass", "m/mask-predict-4"]);
        assert_eq!(names(ModelKind::NatCtc), ["m/one-pass"]);
        let lb = VariantOptions {
            length_beam: 3,
            iterations: 2,
            beam: 1,
        };
        assert_eq!(lb.name(ModelKind::Nat), "mask-predict-2-lb3");
        assert_eq!(lb.request().length_beam, 3);
    }

    #[test]
    fn a_folder_without_runs_and_an_unknown_name_are_explained() {
        let empty = tempfile::tempdir().unwrap();
        let err = discover(empty.path()).unwrap_err().to_string();
        assert!(err.contains("no paragen run directory"), "{err}");
        let teacher = VariantSpec::new(Path::new("t"), ModelKind::Ar, VariantOptions::default());
        let err = select(vec![teacher.clone()], &["x/beam9".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`x/beam9`") && err.contains("t/greedy"),
            "{err}"
        );
        assert_eq!(select(vec![teacher.clone()], &[]).unwrap(), vec![teacher]);
    }
}
