//! The bench [`Report`] (what `report.json` holds) and its renderings: a markdown
//! table, SVG plots of BLEU against batch-1 latency and of each model's valid BLEU
//! against training minutes, and the generated `docs/results.md`. `bench.rs` fills it;
//! nothing here runs a model.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The batch sizes every variant is timed at.
pub const BATCH_SIZES: [usize; 3] = [1, 8, 64];

/// One measured variant, as `report.json` lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Variant {
    pub name: String,
    pub kind: String,
    pub decoding: String,
    pub bleu: f64,
    pub chrf: f64,
    pub params: u64,
    pub file_bytes: u64,
    pub ms_per_sentence: BTreeMap<String, f64>,
    pub sentences_per_s: BTreeMap<String, f64>,
    pub speedup_vs_teacher_greedy: BTreeMap<String, f64>,
    /// Thread count that gave the reported time, per batch size.
    pub best_threads: BTreeMap<String, usize>,
    pub model_dir: String,
    /// How the model was made: layers, training data, optimizer steps and minutes.
    #[serde(default)]
    pub training: Option<Training>,
}

/// How a variant's model was trained (from its run directory).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Training {
    pub encoder_layers: u64,
    pub decoder_layers: u64,
    pub data_dir: String,
    pub steps: u64,
    pub minutes: f64,
    /// Valid BLEU after each epoch, against cumulative training minutes (the run's
    /// `metrics.jsonl`): whether a recipe was still climbing when it stopped.
    #[serde(default)]
    pub curve: Vec<(f64, f64)>,
}

/// Everything `report.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub date: String,
    pub commit: String,
    pub machine: Machine,
    pub method: String,
    pub variants: Vec<Variant>,
    pub roofline: Option<Value>,
    pub criterion: Vec<CriterionResult>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub logical_cpus: usize,
    pub threads: Vec<usize>,
    pub backend: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CriterionResult {
    pub id: String,
    pub median_ms: f64,
}

fn per_batch(
    values: &std::collections::BTreeMap<String, f64>,
    fmt: impl Fn(f64) -> String,
) -> Vec<String> {
    BATCH_SIZES
        .iter()
        .map(|b| values.get(&b.to_string()).map_or("-".into(), |v| fmt(*v)))
        .collect()
}

/// The variants as a markdown table, plus the roofline line.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(
        "| variant | kind | decoding | BLEU | chrF | params | file MB | ms/sent b1 | ms/sent b8 | ms/sent b64 | sent/s b64 | speedup b1 | speedup b8 | speedup b64 |\n",
    );
    out.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for v in &report.variants {
        let ms = per_batch(&v.ms_per_sentence, |x| format!("{x:.2}"));
        let speedup = per_batch(&v.speedup_vs_teacher_greedy, |x| format!("{x:.2}x"));
        let rate = v
            .sentences_per_s
            .get("64")
            .map_or("-".into(), |r| format!("{r:.1}"));
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2}M | {:.1} | {} | {} | {} | {} | {} | {} | {} |\n",
            v.name,
            v.kind,
            v.decoding,
            v.bleu,
            v.chrf,
            v.params as f64 / 1e6,
            v.file_bytes as f64 / 1e6,
            ms[0],
            ms[1],
            ms[2],
            rate,
            speedup[0],
            speedup[1],
            speedup[2]
        ));
    }
    let models = trained_models(report);
    if !models.is_empty() {
        out.push_str("\nModels: ");
        let described: Vec<String> = models
            .iter()
            .map(|(dir, kind, t)| {
                format!(
                    "`{dir}` ({kind}, {}+{} layers, trained {:.0} min / {} steps on `{}`)",
                    t.encoder_layers, t.decoder_layers, t.minutes, t.steps, t.data_dir
                )
            })
            .collect();
        out.push_str(&described.join("; "));
        out.push_str(".\n");
    }
    if let Some(targets) = nat_targets(report) {
        out.push_str(&targets);
    }
    if let Some(r) = &report.roofline {
        out.push_str(&format!(
            "\nRoofline: {} reached {:.1} GFLOP/s against a measured fp32 peak of {:.1} GFLOP/s ({}), {:.0}% of peak.\n",
            r["forward_shape"].as_str().unwrap_or("forward"),
            r["forward_gflops"].as_f64().unwrap_or(0.0),
            r["peak_gflops"].as_f64().unwrap_or(0.0),
            r["peak_how"].as_str().unwrap_or(""),
            100.0 * r["forward_gflops"].as_f64().unwrap_or(0.0) / r["peak_gflops"].as_f64().unwrap_or(1.0)
        ));
    }
    out
}

/// Each model once (its directory, kind and training), in report order, for the
/// variants whose training is known.
fn trained_models(report: &Report) -> Vec<(&str, &str, &Training)> {
    let mut models: Vec<(&str, &str, &Training)> = Vec::new();
    for v in &report.variants {
        if let Some(t) = &v.training
            && !models.iter().any(|(dir, _, _)| *dir == v.model_dir)
        {
            models.push((&v.model_dir, &v.kind, t));
        }
    }
    models
}

/// Where every NAT stands against issue 3's targets: one pass at least 90% of the
/// teacher's beam BLEU and 5x its greedy speed at batch 1; refinement at least 97%.
/// `None` without a teacher (greedy and beam) or without a NAT.
pub fn nat_targets(report: &Report) -> Option<String> {
    let teacher = |decoding: &str| {
        report
            .variants
            .iter()
            .find(|v| v.kind == "ar" && v.decoding.starts_with(decoding))
    };
    let (beam, _greedy) = (teacher("beam")?, teacher("greedy")?);
    let mut lines = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for nat in report.variants.iter().filter(|v| v.kind.starts_with("nat")) {
        if seen.contains(&nat.model_dir.as_str()) {
            continue;
        }
        seen.push(&nat.model_dir);
        let own: Vec<_> = report
            .variants
            .iter()
            .filter(|v| v.model_dir == nat.model_dir)
            .collect();
        let share = |bleu: f64| 100.0 * bleu / beam.bleu;
        let mut parts = Vec::new();
        if let Some(one) = own.iter().find(|v| v.decoding.ends_with("one-pass")) {
            let speedup = one.speedup_vs_teacher_greedy.get("1").copied();
            parts.push(format!(
                "one pass {:.0}% of teacher beam (target 90%) at {} teacher greedy speed (target 5x)",
                share(one.bleu),
                speedup.map_or("-".into(), |s| format!("{s:.2}x"))
            ));
        }
        if let Some(best) = own.iter().max_by(|a, b| a.bleu.total_cmp(&b.bleu)) {
            parts.push(format!(
                "best ({}) {:.0}% (target 97%)",
                best.decoding,
                share(best.bleu)
            ));
        }
        lines.push(format!("- `{}`: {}.", nat.model_dir, parts.join("; ")));
    }
    (!lines.is_empty()).then(|| {
        format!(
            "
Against the NAT targets (teacher beam BLEU {:.2}):
{}
",
            beam.bleu,
            lines.join("\n")
        )
    })
}

/// BLEU against batch-1 milliseconds per sentence, one labelled point per variant.
pub fn plot_bleu_latency(report: &Report, path: &Path) -> anyhow::Result<()> {
    let points: Vec<(f64, f64, &str)> = report
        .variants
        .iter()
        .filter_map(|v| {
            v.ms_per_sentence
                .get("1")
                .map(|ms| (*ms, v.bleu, v.name.as_str()))
        })
        .filter(|(ms, bleu, _)| ms.is_finite() && bleu.is_finite())
        .collect();
    let max_ms = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.15;
    let max_bleu = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("BLEU vs latency (batch 1, test split)", ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_ms, 0.0..max_bleu)?;
    chart
        .configure_mesh()
        .x_desc("ms per sentence (batch 1)")
        .y_desc("BLEU")
        .draw()?;
    chart.draw_series(points.iter().map(|(ms, bleu, name)| {
        EmptyElement::at((*ms, *bleu))
            + Circle::new((0, 0), 5, BLUE.filled())
            + Text::new(name.to_string(), (8, -8), ("sans-serif", 13))
    }))?;
    root.present()?;
    Ok(())
}

/// Valid BLEU against training minutes, one line per trained model.
pub fn plot_training_curves(report: &Report, path: &Path) -> anyhow::Result<()> {
    let curves: Vec<(&str, &[(f64, f64)])> = trained_models(report)
        .into_iter()
        .filter(|(_, _, t)| !t.curve.is_empty())
        .map(|(dir, _, t)| (dir, t.curve.as_slice()))
        .collect();
    let points = || curves.iter().flat_map(|(_, c)| c.iter());
    let max_minutes = points().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let max_bleu = points().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "valid BLEU vs training minutes (greedy / one pass, 200 sentences)",
            ("sans-serif", 20),
        )
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_minutes, 0.0..max_bleu)?;
    chart
        .configure_mesh()
        .x_desc("training minutes")
        .y_desc("valid BLEU")
        .draw()?;
    for (i, (dir, curve)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                curve.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(dir.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(curve.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// `docs/results.md`: generated, never edited by hand.
pub fn results_page(report: &Report, table: &str) -> String {
    format!(
        "# Results\n\n\
         Generated by `cargo xtask bench` on {date} at commit `{commit}`; do not edit by hand.\n\n\
         Machine: {cpu}, {cpus} logical CPUs, backend `{backend}`, thread counts tried: {threads:?}.\n\n\
         {method}\n\n{table}\n\
         ![valid BLEU against training minutes](valid_bleu_vs_minutes.svg)\n\n\
         ![BLEU against batch-1 latency](bleu_vs_latency.svg)\n\n\
         Raw numbers: `target/paragen-report/report.json`.\n",
        date = report.date,
        commit = report.commit,
        cpu = report.machine.cpu,
        cpus = report.machine.logical_cpus,
        backend = report.machine.backend,
        threads = report.machine.threads,
        method = report.method,
    )
}
