//! A variant measured once: quality on the valid split, latency per batch size and
//! source length. Profiles live beside the model in `variants.json`, one per variant and
//! machine (CPU, backend, threads), and are measured again when the weights change.

use std::path::Path;
use std::time::Instant;

use burn::prelude::*;
use paragen_data::Pair;
use paragen_infer::timing::median;
use paragen_infer::{LoadedRun, RunDir, TranslateError, evaluate};
use serde::{Deserialize, Serialize};

use crate::variant::{VariantOptions, VariantSpec};

/// The file beside a model that keeps its variants' profiles.
pub const PROFILE_FILE: &str = "variants.json";

/// Errors of profiling a variant.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Translate(#[from] TranslateError),
    #[error(transparent)]
    Tokenizer(#[from] paragen_data::TokenizerError),
    #[error("profiling needs valid sentences, and none was given")]
    NoSentences,
}

/// What a profile measures.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileSettings {
    /// Valid pairs scored for BLEU and chrF.
    pub quality_sentences: usize,
    /// Batch sizes timed, ascending, starting at 1.
    pub batches: Vec<usize>,
    /// Source lengths (tokens) timed: real valid sentences nearest each length.
    pub lengths: Vec<usize>,
    /// Timed runs per point, after one warm-up; the median counts.
    pub runs: usize,
}

impl Default for ProfileSettings {
    fn default() -> Self {
        Self {
            quality_sentences: 200,
            batches: vec![1, 8, 32],
            lengths: vec![10, 25, 45],
            runs: 3,
        }
    }
}

/// Where a profile was measured; a profile of another machine is measured again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub backend: String,
    pub threads: usize,
}

/// Median milliseconds to decode one batch, per source length and batch size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyTable {
    /// Mean source length (tokens) of the sentences measured, ascending.
    pub lengths: Vec<f64>,
    /// Batch sizes measured, ascending.
    pub batches: Vec<usize>,
    /// `ms[i][j]`: one batch of `batches[j]` sentences of about `lengths[i]` tokens.
    pub ms: Vec<Vec<f64>>,
}

/// Linear interpolation of `ys` over ascending `xs`; beyond the last point the value
/// grows in proportion to `x` (a batch twice as large, or sentences twice as long, cost
/// about twice as much), before the first it stays at the first value (conservative).
fn interpolate(xs: &[f64], ys: &[f64], x: f64) -> f64 {
    let last = xs.len() - 1;
    if x <= xs[0] {
        return ys[0];
    }
    if x >= xs[last] {
        return ys[last] * x / xs[last];
    }
    let i = xs.partition_point(|&p| p <= x).min(last);
    let (x0, x1, y0, y1) = (xs[i - 1], xs[i], ys[i - 1], ys[i]);
    y0 + (y1 - y0) * (x - x0) / (x1 - x0)
}

impl LatencyTable {
    /// Predicted milliseconds to decode a batch of `batch` sentences whose longest source
    /// has `len` tokens.
    pub fn predict_ms(&self, batch: usize, len: usize) -> f64 {
        let batches: Vec<f64> = self.batches.iter().map(|&b| b as f64).collect();
        let per_length: Vec<f64> = self
            .ms
            .iter()
            .map(|row| interpolate(&batches, row, batch.max(1) as f64))
            .collect();
        interpolate(&self.lengths, &per_length, len.max(1) as f64)
    }

    /// The smallest measured batch whose cost per sentence, at the middle length, is
    /// within 15% of the best: larger batches buy little throughput and cost latency.
    pub fn efficient_batch(&self) -> usize {
        let row = &self.ms[self.ms.len() / 2];
        let per_sentence: Vec<f64> = row
            .iter()
            .zip(&self.batches)
            .map(|(ms, &b)| ms / b as f64)
            .collect();
        let best = per_sentence.iter().copied().fold(f64::INFINITY, f64::min);
        self.batches
            .iter()
            .zip(&per_sentence)
            .find(|&(_, &ms)| ms <= best * 1.15)
            .map_or(1, |(&b, _)| b)
    }
}

/// A variant measured on one machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VariantProfile {
    pub name: String,
    pub options: VariantOptions,
    /// The decoding as reports name it, e.g. `beam4` or `ctc2-one-pass-bp2`.
    pub decoding: String,
    pub kind: String,
    pub params: usize,
    pub file_bytes: u64,
    /// Size and modification time of `model.mpk` when measured.
    pub weights: String,
    pub machine: Machine,
    pub bleu: f64,
    pub chrf: f64,
    pub valid_sentences: usize,
    pub latency: LatencyTable,
}

/// What identifies the weights a profile measured: `model.mpk`'s size and modification
/// time.
pub fn weights_stamp(run: &Path) -> String {
    std::fs::metadata(run.join("model.mpk")).map_or_else(
        |_| "missing".into(),
        |m| {
            let modified = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            format!("{} bytes, modified {modified}", m.len())
        },
    )
}

#[derive(Default, Serialize, Deserialize)]
struct ProfileFile {
    profiles: Vec<VariantProfile>,
}

/// The profiles kept beside a model; none when the file is missing, and none (with a
/// warning) when it is unreadable, since a profile can always be measured again.
fn read_file(run: &Path) -> ProfileFile {
    let run = RunDir::new(run);
    if !run.path(PROFILE_FILE).exists() {
        return ProfileFile::default();
    }
    run.read_json::<ProfileFile>(PROFILE_FILE)
        .inspect_err(|e| tracing::warn!("{e}; measuring its variants again"))
        .unwrap_or_default()
}

/// The stored profile of `spec` on `machine`, if one was measured on the current weights.
pub fn load_cached(spec: &VariantSpec, machine: &Machine) -> Option<VariantProfile> {
    let stamp = weights_stamp(&spec.run);
    read_file(&spec.run)
        .profiles
        .into_iter()
        .find(|p| p.options == spec.options && &p.machine == machine && p.weights == stamp)
}

/// Keeps `profile` in its run's `variants.json`, replacing the one it supersedes.
pub fn store(run: &Path, profile: &VariantProfile) -> Result<(), paragen_infer::CheckpointError> {
    let mut file = read_file(run);
    file.profiles
        .retain(|p| !(p.options == profile.options && p.machine == profile.machine));
    file.profiles.push(profile.clone());
    RunDir::new(run).write_json(PROFILE_FILE, &file)
}

/// The profile of `spec` on `machine`: the stored one when it measured these weights,
/// else measured now on `valid` and stored beside the model (a run that cannot be
/// written, such as a read-only checkout, keeps it in memory, with a warning).
/// `remeasure` ignores what is stored.
pub fn ensure<B: Backend>(
    spec: &VariantSpec,
    loaded: &LoadedRun<B>,
    valid: &[Pair],
    settings: &ProfileSettings,
    machine: &Machine,
    remeasure: bool,
) -> Result<VariantProfile, ProfileError> {
    if !remeasure && let Some(profile) = load_cached(spec, machine) {
        tracing::info!("{}: profile from {PROFILE_FILE}", spec.name);
        return Ok(profile);
    }
    let started = Instant::now();
    let profile = measure(spec, loaded, valid, settings, machine)?;
    tracing::info!(
        "{}: profiled in {:.1} s: valid BLEU {:.2}, {:.1} ms for one sentence",
        spec.name,
        started.elapsed().as_secs_f64(),
        profile.bleu,
        profile.latency.predict_ms(1, 25)
    );
    if let Err(e) = store(&spec.run, &profile) {
        tracing::warn!("{}: the profile is not kept: {e}", spec.name);
    }
    Ok(profile)
}

/// The `count` sources whose length is nearest `len` (repeated when there are fewer).
fn sources_near(sources: &[Vec<u32>], len: usize, count: usize) -> Vec<Vec<u32>> {
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.sort_by_key(|&i| (sources[i].len().abs_diff(len), i));
    order
        .iter()
        .cycle()
        .take(count)
        .map(|&i| sources[i].clone())
        .collect()
}

/// Measures `loaded`, opened the way `spec` decodes, on `valid` pairs.
pub fn measure<B: Backend>(
    spec: &VariantSpec,
    loaded: &LoadedRun<B>,
    valid: &[Pair],
    settings: &ProfileSettings,
    machine: &Machine,
) -> Result<VariantProfile, ProfileError> {
    if valid.is_empty() {
        return Err(ProfileError::NoSentences);
    }
    let translator = loaded.translator();
    let texts: Vec<&str> = valid.iter().map(|p| p.src.as_str()).collect();
    let encoded = loaded.tokenizer.encode_batch(&texts)?;
    // Sentences the model cannot take (too long for its positions) are left out.
    let fits: Vec<bool> = encoded
        .iter()
        .map(|s| !s.is_empty() && loaded.model.check_source_lengths(&[s.len()]).is_ok())
        .collect();
    let quality: Vec<Pair> = valid
        .iter()
        .zip(&fits)
        .filter(|(_, fits)| **fits)
        .map(|(p, _)| p.clone())
        .take(settings.quality_sentences.max(1))
        .collect();
    let sources: Vec<Vec<u32>> = encoded
        .into_iter()
        .zip(&fits)
        .filter(|(_, fits)| **fits)
        .map(|(s, _)| s)
        .collect();
    if sources.is_empty() {
        return Err(ProfileError::NoSentences);
    }
    let report = evaluate(&translator, &loaded.tokenizer, &quality, 32, false)?;
    let mut lengths = Vec::new();
    let mut ms = Vec::new();
    for &len in &settings.lengths {
        let mut row = Vec::new();
        let mut mean_len = 0.0;
        for &batch in &settings.batches {
            let batch_sources = sources_near(&sources, len, batch);
            mean_len = batch_sources.iter().map(Vec::len).sum::<usize>() as f64 / batch as f64;
            translator.decode_batch(&batch_sources)?;
            let mut runs = Vec::new();
            for _ in 0..settings.runs.max(1) {
                let started = Instant::now();
                translator.decode_batch(&batch_sources)?;
                runs.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            row.push(median(&runs));
        }
        lengths.push(mean_len);
        ms.push(row);
    }
    // Rows in ascending length (nearest-length picks of a short split may coincide).
    let mut rows: Vec<(f64, Vec<f64>)> = lengths.into_iter().zip(ms).collect();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    rows.dedup_by(|a, b| (a.0 - b.0).abs() < 0.5);
    let (lengths, ms) = rows.into_iter().unzip();
    Ok(VariantProfile {
        name: spec.name.clone(),
        options: spec.options,
        decoding: translator.name(),
        kind: spec.kind.name().to_string(),
        params: loaded.model.param_count(),
        file_bytes: std::fs::metadata(spec.run.join("model.mpk")).map_or(0, |m| m.len()),
        weights: weights_stamp(&spec.run),
        machine: machine.clone(),
        bleu: report.bleu,
        chrf: report.chrf,
        valid_sentences: report.sentences,
        latency: LatencyTable {
            lengths,
            batches: settings.batches.clone(),
            ms,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn table() -> LatencyTable {
        LatencyTable {
            lengths: vec![10.0, 30.0],
            batches: vec![1, 8, 32],
            ms: vec![vec![10.0, 20.0, 40.0], vec![30.0, 60.0, 120.0]],
        }
    }

    #[test]
    fn latency_is_interpolated_between_points_and_scaled_beyond_them() {
        let t = table();
        assert_eq!(t.predict_ms(1, 10), 10.0);
        assert_eq!(t.predict_ms(8, 30), 60.0);
        // Halfway in length at batch 1: between 10 and 30.
        assert!((t.predict_ms(1, 20) - 20.0).abs() < 1e-9);
        // Batch 20 of 32: between 20 and 40 at length 10.
        assert!((t.predict_ms(20, 10) - 30.0).abs() < 1e-9);
        // Twice the largest batch and twice the longest length cost twice as much each.
        assert!((t.predict_ms(64, 30) - 240.0).abs() < 1e-9);
        assert!((t.predict_ms(32, 60) - 240.0).abs() < 1e-9);
        // Shorter than measured: no cheaper than the shortest measured.
        assert_eq!(t.predict_ms(1, 2), 10.0);
        // Per sentence at length 30: 30, 7.5, 3.75: batch 32 is the efficient one.
        assert_eq!(t.efficient_batch(), 32);
    }

    #[test]
    fn sources_are_picked_by_nearest_length_and_repeated_when_short() {
        let sources: Vec<Vec<u32>> = [3, 9, 12, 30].iter().map(|&n| vec![7; n]).collect();
        let picked = sources_near(&sources, 10, 3);
        let lens: Vec<usize> = picked.iter().map(Vec::len).collect();
        assert_eq!(lens, [9, 12, 3]);
        assert_eq!(sources_near(&sources, 30, 6).len(), 6);
    }
}
