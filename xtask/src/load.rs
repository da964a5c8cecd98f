//! `cargo xtask load`: the load generator of `paragen serve`. It starts the server on
//! 127.0.0.1, measures its capacity (one client, one sentence per request), then offers
//! open-loop Poisson load at multiples of it, with the router (a time budget per request)
//! and with single fixed variants, and writes `docs/serving.md` and
//! `docs/serving_latency.svg`. Bounded in requests and seconds; never leaves 127.0.0.1.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use plotters::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct LoadArgs {
    /// Models directory the server serves.
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Prepared data: its valid split profiles the variants, its test sources are sent.
    #[arg(long, default_value = "data/distilled")]
    data: PathBuf,
    /// Time budget of each request in router mode, in milliseconds.
    #[arg(long, default_value_t = 150.0)]
    budget_ms: f64,
    /// Seconds of each load phase.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds of the router's phase at the highest load.
    #[arg(long, default_value_t = 60)]
    overload_seconds: u64,
    /// Offered loads, as multiples of the measured capacity.
    #[arg(long, value_delimiter = ',', default_value = "1,2,10")]
    loads: Vec<f64>,
    /// Variants also loaded alone (named in the request, no budget).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "teacher/beam4,teacher/greedy,nat-ctc-pruned30/one-pass"
    )]
    fixed: Vec<String>,
    /// Most requests of one phase.
    #[arg(long, default_value_t = 20_000)]
    max_requests: usize,
    /// CPU threads of the server (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// The paragen binary (default: built here in release).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Where the report goes: `<out>/serving.md`, `<out>/serving_latency.svg`.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
}

/// One request's fate.
struct Outcome {
    status: u16,
    latency_ms: f64,
    variant: Option<String>,
    bleu: Option<f64>,
    /// The server's own queue plus compute milliseconds, and its prediction.
    server_ms: Option<f64>,
    predicted_ms: Option<f64>,
}

/// One phase of offered load.
#[derive(Serialize)]
struct Phase {
    mode: String,
    load: f64,
    offered_rps: f64,
    seconds: f64,
    sent: usize,
    answered: usize,
    refused: usize,
    other: usize,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    /// p95 of the server's own queue + compute time (what the router predicts).
    server_p95_ms: f64,
    /// Share of answered requests whose server time exceeded the router's prediction.
    late_vs_prediction: f64,
    within_budget: f64,
    mean_valid_bleu: f64,
    variants: BTreeMap<String, usize>,
    rss_mib: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn summarize(
    mode: &str,
    load: f64,
    rate: f64,
    seconds: f64,
    budget: f64,
    outcomes: &[Outcome],
    rss: f64,
) -> Phase {
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 200).collect();
    let mut latencies: Vec<f64> = ok.iter().map(|o| o.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let mut variants = BTreeMap::new();
    for o in &ok {
        *variants
            .entry(o.variant.clone().unwrap_or_default())
            .or_insert(0) += 1;
    }
    let share = |n: usize| n as f64 / ok.len().max(1) as f64;
    let mut server: Vec<f64> = ok.iter().filter_map(|o| o.server_ms).collect();
    server.sort_by(f64::total_cmp);
    let late = ok
        .iter()
        .filter(|o| matches!((o.server_ms, o.predicted_ms), (Some(s), Some(p)) if s > p))
        .count();
    Phase {
        mode: mode.to_string(),
        load,
        offered_rps: rate,
        seconds,
        sent: outcomes.len(),
        answered: ok.len(),
        refused: outcomes.iter().filter(|o| o.status == 503).count(),
        other: outcomes
            .iter()
            .filter(|o| o.status != 200 && o.status != 503)
            .count(),
        p50_ms: percentile(&latencies, 0.50),
        p95_ms: percentile(&latencies, 0.95),
        p99_ms: percentile(&latencies, 0.99),
        server_p95_ms: percentile(&server, 0.95),
        late_vs_prediction: share(late),
        within_budget: share(latencies.iter().filter(|&&l| l <= budget).count()),
        mean_valid_bleu: ok.iter().filter_map(|o| o.bleu).sum::<f64>() / ok.len().max(1) as f64,
        variants,
        rss_mib: rss,
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build()
}

/// Sends one request; latency counts from `scheduled` (the arrival time), so a client
/// that could not send on time counts its delay too.
fn send(agent: &ureq::Agent, url: &str, body: &str, scheduled: Instant) -> Outcome {
    let response = agent
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(body);
    let latency_ms = scheduled.elapsed().as_secs_f64() * 1000.0;
    let (status, text) = match response {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
        Err(_) => (0, String::new()),
    };
    let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    Outcome {
        status,
        latency_ms,
        variant: parsed["variant"].as_str().map(str::to_string),
        bleu: parsed["bleu"].as_f64(),
        server_ms: parsed["queue_ms"]
            .as_f64()
            .zip(parsed["compute_ms"].as_f64())
            .map(|(q, c)| q + c),
        predicted_ms: parsed["predicted_ms"].as_f64(),
    }
}

/// Open-loop Poisson arrivals at `rate` per second for `seconds`, one sentence each.
fn offer(
    url: &str,
    bodies: &[String],
    rate: f64,
    seconds: f64,
    max: usize,
    seed: u64,
) -> Vec<Outcome> {
    let n = ((rate * seconds).round() as usize).clamp(1, max);
    let (sender, receiver) = mpsc::channel::<(usize, Instant)>();
    let receiver = Arc::new(Mutex::new(receiver));
    let outcomes = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let workers: Vec<_> = (0..96)
        .map(|_| {
            let (receiver, outcomes) = (receiver.clone(), outcomes.clone());
            let (url, bodies) = (url.to_string(), bodies.to_vec());
            std::thread::spawn(move || {
                let agent = agent();
                loop {
                    let next = receiver.lock().unwrap().recv();
                    let Ok((i, scheduled)) = next else { break };
                    let outcome = send(&agent, &url, &bodies[i % bodies.len()], scheduled);
                    outcomes.lock().unwrap().push(outcome);
                }
            })
        })
        .collect();
    // A 64-bit LCG: deterministic exponential gaps without another dependency.
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut uniform = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let start = Instant::now();
    let mut at = 0.0;
    for i in 0..n {
        at += -uniform().ln() / rate;
        let scheduled = start + Duration::from_secs_f64(at);
        if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sender.send((i, scheduled)).expect("workers are alive");
    }
    drop(sender);
    for worker in workers {
        worker.join().expect("a load worker panicked");
    }
    Arc::try_unwrap(outcomes)
        .map_err(|_| ())
        .expect("workers are done")
        .into_inner()
        .unwrap()
}

fn status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(f64::NAN)
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(binary: &Path, args: &LoadArgs, log: &Path) -> anyhow::Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut command = Command::new(binary);
    command
        .args(["serve", "--models"])
        .arg(&args.models)
        .arg("--data")
        .arg(&args.data)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--budget-ms", &args.budget_ms.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    if let Some(threads) = args.threads {
        command.args(["--threads", &threads.to_string()]);
    }
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let mut server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!(
                "the server exited ({status}) before listening; see {}",
                log.display()
            );
        }
        if agent()
            .get(&format!("{}/health", server.base))
            .call()
            .is_ok()
        {
            eprintln!(
                "server up after {:.0} s (loading and profiling)",
                started.elapsed().as_secs_f64()
            );
            return Ok(server);
        }
        ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the server did not start in 30 minutes"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn test_sources(data: &Path) -> anyhow::Result<Vec<String>> {
    let path = data.join("test.tsv.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(&path).with_context(|| path.display().to_string())?,
    )
    .read_to_string(&mut text)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split('\t').collect();
            (fields.len() >= 2).then(|| fields[fields.len() - 2].to_string())
        })
        .collect())
}

pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    std::env::set_current_dir(&root)?;
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => {
            crate::bench::cargo(&root, &["build", "--release", "-p", "paragen-cli"])?;
            root.join("target/release/paragen")
        }
    };
    let work = root.join("target/paragen-load");
    std::fs::create_dir_all(&work)?;
    let sources = test_sources(&args.data)?;
    let mut server = start_server(&binary, &args, &work.join("server.log"))?;
    let pid = server.child.id();
    let url = format!("{}/v1/translate", server.base);
    let variants: Value = serde_json::from_str(
        &agent()
            .get(&format!("{}/v1/variants", server.base))
            .call()?
            .into_string()?,
    )?;

    // Capacity: one client, one sentence at a time, within the budget.
    let routed: Vec<String> = sources
        .iter()
        .map(|s| json!({ "text": s, "budget_ms": args.budget_ms }).to_string())
        .collect();
    let client = agent();
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(10) {
        let outcome = send(
            &client,
            &url,
            &routed[served % routed.len()],
            Instant::now(),
        );
        ensure!(
            outcome.status == 200,
            "a request of the capacity run got {}",
            outcome.status
        );
        served += 1;
    }
    let capacity = served as f64 / started.elapsed().as_secs_f64();
    eprintln!("capacity: {capacity:.1} requests/s (one client, router mode)");

    let mut modes: Vec<(String, Vec<String>)> = vec![("router".into(), routed)];
    for name in &args.fixed {
        let bodies = sources
            .iter()
            .map(|s| json!({ "text": s, "variant": name }).to_string())
            .collect();
        modes.push((name.clone(), bodies));
    }
    let top = args.loads.iter().copied().fold(0.0, f64::max);
    let mut phases = Vec::new();
    for (m, (mode, bodies)) in modes.iter().enumerate() {
        for (l, &load) in args.loads.iter().enumerate() {
            let seconds = match (m, load == top) {
                (0, true) => args.overload_seconds,
                _ => args.seconds,
            } as f64;
            let rate = load * capacity;
            eprintln!("{mode}: {load}x capacity ({rate:.1} requests/s) for {seconds} s");
            let outcomes = offer(
                &url,
                bodies,
                rate,
                seconds,
                args.max_requests,
                (m * 16 + l) as u64,
            );
            let rss = status_kib(pid, "VmRSS:") / 1024.0;
            let phase = summarize(mode, load, rate, seconds, args.budget_ms, &outcomes, rss);
            eprintln!(
                "  {} answered, {} refused, {} other; p95 {:.0} ms (server {:.0} ms, {:.0}% later than predicted); RSS {:.0} MiB",
                phase.answered,
                phase.refused,
                phase.other,
                phase.p95_ms,
                phase.server_p95_ms,
                100.0 * phase.late_vs_prediction,
                phase.rss_mib
            );
            phases.push(phase);
            // Let the queue drain before the next phase.
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    let peak_rss = status_kib(pid, "VmHWM:") / 1024.0;
    let alive = server.child.try_wait()?.is_none();
    // Graceful stop: SIGTERM, then the exit status.
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let stopped = Instant::now();
    let exit = loop {
        if let Some(status) = server.child.try_wait()? {
            break status;
        }
        ensure!(
            stopped.elapsed() < Duration::from_secs(60),
            "the server ignored SIGTERM for a minute"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let summary = json!({
        "date": crate::bench::command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        "commit": crate::bench::command_output("git", &["rev-parse", "--short", "HEAD"]),
        "cpu": crate::bench::cpu_model(),
        "logical_cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "budget_ms": args.budget_ms,
        "capacity_rps": capacity,
        "peak_rss_mib": peak_rss,
        "alive_after_load": alive,
        "sigterm_exit_success": exit.success(),
        "variants": variants["variants"],
        "phases": phases,
    });
    std::fs::write(
        work.join("load.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    let out = root.join(&args.out);
    plot(&phases, args.budget_ms, &out.join("serving_latency.svg"))?;
    std::fs::write(out.join("serving.md"), page(&summary, &phases, &args))?;
    eprintln!("wrote {}", out.join("serving.md").display());
    Ok(())
}

fn page(summary: &Value, phases: &[Phase], args: &LoadArgs) -> String {
    let mut variants = String::from(
        "| variant | valid BLEU | ms, one sentence | ms/sentence batched |\n|---|---:|---:|---:|\n",
    );
    for v in summary["variants"].as_array().into_iter().flatten() {
        variants += &format!(
            "| {} | {:.2} | {:.1} | {:.2} (batch {}) |\n",
            v["name"].as_str().unwrap_or(""),
            v["bleu"].as_f64().unwrap_or(f64::NAN),
            v["ms_one_sentence"].as_f64().unwrap_or(f64::NAN),
            v["ms_per_sentence_batched"].as_f64().unwrap_or(f64::NAN),
            v["batch"]
        );
    }
    let mut table = String::from(
        "| mode | load | offered req/s | seconds | answered | refused (503) | other | p50 ms | p95 ms | p99 ms | server p95 ms | later than predicted | answered within budget | mean valid BLEU | variants that answered | RSS MiB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n",
    );
    for p in phases {
        let mix: Vec<String> = p
            .variants
            .iter()
            .map(|(v, n)| format!("{v}: {n}"))
            .collect();
        table += &format!(
            "| {} | {}x | {:.1} | {:.0} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1}% | {:.1}% | {:.2} | {} | {:.0} |\n",
            p.mode,
            p.load,
            p.offered_rps,
            p.seconds,
            p.answered,
            p.refused,
            p.other,
            p.p50_ms,
            p.p95_ms,
            p.p99_ms,
            p.server_p95_ms,
            100.0 * p.late_vs_prediction,
            100.0 * p.within_budget,
            p.mean_valid_bleu,
            mix.join(", "),
            p.rss_mib
        );
    }
    format!(
        "# Serving under load\n\n\
         Generated by `cargo xtask load` on {date} at commit `{commit}`; do not edit by hand.\n\n\
         Machine: {cpu}, {cpus} logical CPUs; the server and the load generator share them.\n\
         Server: `paragen serve --models {models} --budget-ms {budget}`; every request is one \
         test sentence of `{data}`.\n\n\
         **Method.** Capacity is what one client sending one sentence at a time gets \
         answered in router mode: **{capacity:.1} requests/s**. Each phase then offers \
         open-loop Poisson arrivals at a multiple of it. In *router* mode every request \
         asks for an answer within {budget} ms and the router picks the variant; in the \
         other modes every request names one variant and gives no budget. Latency counts \
         from each request's scheduled arrival to its answer; p50/p95/p99 are over answered \
         (200) requests. *Mean valid BLEU* is the valid-split BLEU of the variant that \
         answered, averaged over answered requests. Refused requests got 503 with \
         `Retry-After`; *other* counts every other outcome (errors, timeouts, lost \
         connections).\n\n\
         ## Variants (profiles measured by the server on this machine)\n\n{variants}\n\
         ## Load\n\n{table}\n\
         Peak server memory (VmHWM): **{peak:.0} MiB**; server alive after every phase: \
         {alive}; exit status after SIGTERM: {exit}.\n\n\
         ![p95 latency against offered load](serving_latency.svg)\n\n\
         Raw numbers: `target/paragen-load/load.json`.\n",
        date = summary["date"].as_str().unwrap_or(""),
        commit = summary["commit"].as_str().unwrap_or(""),
        cpu = summary["cpu"].as_str().unwrap_or(""),
        cpus = summary["logical_cpus"],
        models = args.models.display(),
        data = args.data.display(),
        budget = args.budget_ms,
        capacity = summary["capacity_rps"].as_f64().unwrap_or(f64::NAN),
        peak = summary["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
        alive = summary["alive_after_load"],
        exit = if summary["sigterm_exit_success"].as_bool() == Some(true) {
            "success (graceful)"
        } else {
            "failure"
        },
    )
}

/// p95 latency of answered requests against offered load, one line per mode, with the
/// router's budget.
fn plot(phases: &[Phase], budget: f64, path: &Path) -> anyhow::Result<()> {
    let max_load = phases.iter().map(|p| p.load).fold(1.0, f64::max) * 1.1;
    let max_ms = phases
        .iter()
        .map(|p| p.p95_ms)
        .filter(|v| v.is_finite())
        .fold(budget, f64::max)
        * 2.0;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "p95 latency of answered requests vs offered load",
            ("sans-serif", 20),
        )
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_load, (1.0..max_ms).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered load (x capacity)")
        .y_desc("p95 ms (log)")
        .draw()?;
    let mut modes: Vec<&str> = phases.iter().map(|p| p.mode.as_str()).collect();
    modes.dedup();
    for (i, mode) in modes.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = phases
            .iter()
            .filter(|p| p.mode == *mode && p.p95_ms.is_finite())
            .map(|p| (p.load, p.p95_ms.max(1.0)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(mode.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, budget), (max_load, budget)],
            BLACK.stroke_width(1),
        ))?
        .label(format!("budget {budget} ms"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_phase_summaries() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.95), 95.0);
        assert_eq!(percentile(&sorted, 0.5), 50.0);
        assert!(percentile(&[], 0.5).is_nan());
        let outcome = |status, ms, variant: &str, bleu| Outcome {
            status,
            latency_ms: ms,
            variant: Some(variant.into()),
            bleu: Some(bleu),
            server_ms: Some(ms),
            predicted_ms: Some(100.0),
        };
        let phase = summarize(
            "router",
            2.0,
            10.0,
            1.0,
            100.0,
            &[
                outcome(200, 50.0, "a", 20.0),
                outcome(200, 150.0, "b", 30.0),
                outcome(503, 1.0, "", 0.0),
                outcome(0, 1.0, "", 0.0),
            ],
            12.0,
        );
        assert_eq!(
            (phase.sent, phase.answered, phase.refused, phase.other),
            (4, 2, 1, 1)
        );
        assert_eq!(phase.within_budget, 0.5);
        assert_eq!(phase.mean_valid_bleu, 25.0);
        assert_eq!(phase.variants.get("b"), Some(&1));
    }
}
