//! Arguments of `paragen serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::{in_range, positive};

#[derive(Args, Clone)]
#[command(
    after_help = "Serve the shipped release models and ask for a translation:\n  \
    paragen serve --models models --addr 127.0.0.1:8080\n  \
    curl -s localhost:8080/v1/translate -H 'Content-Type: application/json' \\\n      \
    -d '{\"text\": \"God is love.\", \"budget_ms\": 100}'\n\n\
    Budgets: `budget_ms` (answer within, queueing included), `min_bleu` (valid BLEU floor), \
    `tier` (fast, balanced, best) or `variant` (a name from GET /v1/variants). Open \
    http://127.0.0.1:8080/ in a browser to try it."
)]
pub struct ServeArgs {
    /// A run directory, or a folder of them (each becomes one or more variants: greedy
    /// and beam 4 for a teacher, one pass for a CTC student, ...).
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Serve only these variants (comma-separated names such as `teacher/beam4`; all by
    /// default).
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
    /// Prepared data whose valid split profiles the variants (quality and latency,
    /// measured once per machine and kept beside each model in `variants.json`).
    #[arg(long, default_value = "data/distilled")]
    pub data: PathBuf,
    /// Valid sentences scored for each variant's BLEU.
    #[arg(long, default_value_t = 200, value_parser = in_range(1, 100_000))]
    pub profile_sentences: usize,
    /// Measure every variant again instead of reading `variants.json`.
    #[arg(long)]
    pub remeasure: bool,
    /// Time budget, in milliseconds, of requests that give none (the `balanced` tier).
    #[arg(long, default_value_t = 250.0, value_parser = positive)]
    pub budget_ms: f64,
    /// Longest a request waits for others to share its batch, in milliseconds.
    #[arg(long, default_value_t = 5, value_parser = in_range(0, 10_000))]
    pub max_wait_ms: usize,
    /// Most sentences waiting in all queues; beyond it requests get 503 with Retry-After.
    #[arg(long, default_value_t = 512, value_parser = in_range(1, 1_000_000))]
    pub max_queue: usize,
    /// Seconds a request may wait for its answer before a 504.
    #[arg(long, default_value_t = 30, value_parser = in_range(1, 3600))]
    pub timeout_s: usize,
    /// Engine threads that decode batches at once, sharing the models' weights (on 2
    /// cores one is usually best: each batch already uses every core).
    #[arg(long, default_value_t = 1, value_parser = in_range(1, 64))]
    pub workers: usize,
    /// Most texts in one request (413 beyond).
    #[arg(long, default_value_t = 256, value_parser = in_range(1, 100_000))]
    pub max_texts: usize,
    /// Most characters in one text (413 beyond).
    #[arg(long, default_value_t = 4000, value_parser = in_range(1, 1_000_000))]
    pub max_text_chars: usize,
    /// Largest request body in KiB (413 beyond).
    #[arg(long, default_value_t = 1024, value_parser = in_range(1, 1_048_576))]
    pub max_body_kib: usize,
}
