//! The engine: requests admitted by the router wait in the batcher, and one thread, the
//! one that owns the models, decodes them batch by batch and answers each request.
//!
//! The queue's predicted work (`queued_ms`, the sum of the router's compute predictions
//! of every admitted request not yet answered) is what the router sees as load.

use std::panic::AssertUnwindSafe;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use burn::prelude::*;
use paragen_adaptive::{
    BatchPolicy, Batcher, Budget, Decision, RouteError, Router, VariantProfile,
};
use paragen_data::Tokenizer;
use paragen_infer::{LoadedRun, TranslateError, translate_ids};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// A served variant as the HTTP side sees it (the model itself stays on the engine's
/// thread).
pub struct VariantInfo {
    pub profile: VariantProfile,
    pub tokenizer: Tokenizer,
    /// Whether its `tokenizer.json` is the first variant's, so that the token ids that
    /// routed a request serve its decoding too.
    pub shares_first_tokenizer: bool,
    /// Longest source, in tokens, the model accepts.
    pub max_source_tokens: usize,
    pub policy: BatchPolicy,
}

/// What a request gets back from the engine.
#[derive(Debug)]
pub struct Answer {
    pub translations: Vec<String>,
    pub queue_ms: f64,
    pub compute_ms: f64,
    pub batch_sentences: usize,
}

/// An admitted request waiting for its batch.
pub struct Job {
    /// The texts' token ids in the variant's tokenizer.
    sources: Vec<Vec<u32>>,
    admitted: Instant,
    predicted_compute_ms: f64,
    /// The router's prediction of its answer time, before lateness calibration.
    model_ms: f64,
    reply: oneshot::Sender<Result<Answer, String>>,
}

/// Why a request was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("the queue is full: {0}; retry in a second")]
    Full(paragen_adaptive::QueueFull),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error(
        "text {index} has {tokens} tokens, more than the {max} that {variant} accepts; \
         split it into sentences"
    )]
    TooLong {
        index: usize,
        tokens: usize,
        max: usize,
        variant: String,
    },
}

struct Queue {
    batcher: Batcher<Job>,
    queued_ms: f64,
    closed: bool,
}

/// What the HTTP handlers and the engine share.
pub struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    pub router: Router,
    pub variants: Vec<VariantInfo>,
    pub metrics: Metrics,
    max_wait_ms: f64,
    workers: usize,
}

impl Shared {
    /// `workers` engine threads decode batches at once.
    pub fn new(
        variants: Vec<VariantInfo>,
        default_budget_ms: f64,
        max_waiting: usize,
        workers: usize,
    ) -> Self {
        let router = Router::new(
            variants
                .iter()
                .map(|v| paragen_adaptive::router::RoutedVariant {
                    name: v.profile.name.clone(),
                    bleu: v.profile.bleu,
                    latency: v.profile.latency.clone(),
                    max_batch: v.policy.max_sentences,
                })
                .collect(),
            default_budget_ms,
        );
        let policies: Vec<BatchPolicy> = variants.iter().map(|v| v.policy).collect();
        let max_wait_ms = policies
            .iter()
            .map(|p| p.max_wait.as_secs_f64() * 1000.0)
            .fold(0.0, f64::max);
        Self {
            queue: Mutex::new(Queue {
                batcher: Batcher::new(policies, max_waiting),
                queued_ms: 0.0,
                closed: false,
            }),
            wake: Condvar::new(),
            router,
            variants,
            metrics: Metrics::default(),
            max_wait_ms,
            workers: workers.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A handler that panicked while holding the lock leaves a consistent queue:
        // every change under it is a single push or pop.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sentences waiting and their predicted work in milliseconds.
    pub fn load(&self) -> (usize, f64) {
        let queue = self.lock();
        (queue.batcher.waiting(), queue.queued_ms)
    }

    /// Routes `texts` (non-empty, trimmed) under `budget` and queues them for their
    /// variant; the receiver gets the answer.
    pub fn admit(
        &self,
        budget: &Budget,
        texts: Vec<String>,
    ) -> Result<(Decision, oneshot::Receiver<Result<Answer, String>>), Refusal> {
        // Token ids in the first variant's tokenizer route the request and, when the
        // chosen variant shares it (paragen's models do in practice), are decoded; a
        // text that does not encode counts as too long.
        let encode = |tokenizer: &Tokenizer| -> Vec<Option<Vec<u32>>> {
            texts.iter().map(|t| tokenizer.encode(t).ok()).collect()
        };
        let length = |ids: &Option<Vec<u32>>| ids.as_ref().map_or(usize::MAX, Vec::len);
        let routing = encode(&self.variants[0].tokenizer);
        let max_len = routing.iter().map(length).max().unwrap_or(1);
        let (reply, receiver) = oneshot::channel();
        let mut queue = self.lock();
        if queue.closed {
            return Err(Refusal::ShuttingDown);
        }
        // A request also waits up to the batching delay for others to join it.
        // The queued work is shared by the engine threads.
        let ahead = queue.queued_ms / self.workers as f64 + self.max_wait_ms;
        let waiting = queue.batcher.waiting_per_variant();
        let decision =
            self.router
                .choose(budget, texts.len(), max_len.min(1 << 16), ahead, &waiting)?;
        let variant = &self.variants[decision.variant];
        let own = match variant.shares_first_tokenizer {
            true => routing,
            false => encode(&variant.tokenizer),
        };
        if let Some((index, tokens)) = own
            .iter()
            .map(length)
            .enumerate()
            .find(|&(_, n)| n > variant.max_source_tokens)
        {
            return Err(Refusal::TooLong {
                index,
                tokens,
                max: variant.max_source_tokens,
                variant: variant.profile.name.clone(),
            });
        }
        // Every text encoded: one that did not was refused as too long.
        let sources: Vec<Vec<u32>> = own.into_iter().flatten().collect();
        let sentences = sources.len();
        let longest = sources.iter().map(Vec::len).max().unwrap_or(1);
        let job = Job {
            sources,
            admitted: Instant::now(),
            predicted_compute_ms: decision.compute_ms,
            model_ms: decision.model_ms,
            reply,
        };
        queue
            .batcher
            .push(decision.variant, sentences, longest, job.admitted, job)
            .map_err(|(full, _)| Refusal::Full(full))?;
        queue.queued_ms += decision.compute_ms;
        self.metrics.queue(queue.batcher.waiting());
        drop(queue);
        self.wake.notify_one();
        Ok((decision, receiver))
    }

    /// Stops admitting; the engine decodes what waits, then returns.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// The next batch, waiting for one; `None` once closed and drained.
    fn next_batch(&self) -> Option<(usize, Vec<Job>)> {
        let mut queue = self.lock();
        loop {
            let closed = queue.closed;
            match queue.batcher.next_batch(Instant::now(), closed) {
                Ok(batch) => {
                    self.metrics.queue(queue.batcher.waiting());
                    return Some(batch);
                }
                Err(None) if closed => return None,
                Err(None) => {
                    queue = self.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
                }
                Err(Some(wait)) => {
                    let wait = wait.max(Duration::from_micros(100));
                    queue = self
                        .wake
                        .wait_timeout(queue, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    fn finished<'a>(&self, jobs: impl Iterator<Item = &'a Job>) {
        let done: f64 = jobs.map(|j| j.predicted_compute_ms).sum();
        let mut queue = self.lock();
        queue.queued_ms = (queue.queued_ms - done).max(0.0);
        if queue.batcher.is_empty() {
            // Rounding never leaves phantom load on an idle server.
            queue.queued_ms = 0.0;
        }
    }
}

/// Decodes batches until the queue is closed and empty. `runs[i]` is variant `i`.
/// Several engine threads may run it on the same runs: the models are only read.
pub fn run_engine<B: Backend>(shared: &Shared, runs: &[LoadedRun<B>]) {
    while let Some((variant, jobs)) = shared.next_batch() {
        let started = Instant::now();
        // Requests whose client has gone (a timeout, a closed connection) are skipped.
        let (live, gone): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|j| !j.reply.is_closed());
        let sources: Vec<Vec<u32>> = live.iter().flat_map(|j| j.sources.clone()).collect();
        let run = &runs[variant];
        let outcome = match sources.is_empty() {
            true => Ok(Vec::new()),
            false => std::panic::catch_unwind(AssertUnwindSafe(|| {
                translate_ids(&run.translator(), &sources, sources.len(), false)?
                    .iter()
                    .map(|ids| run.tokenizer.decode(ids).map_err(TranslateError::from))
                    .collect::<Result<Vec<String>, TranslateError>>()
            }))
            .map_err(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                format!("decoding failed: {what}")
            })
            .and_then(|r| r.map_err(|e| e.to_string())),
        };
        let compute_ms = started.elapsed().as_secs_f64() * 1000.0;
        let batch_sentences = sources.len();
        shared.metrics.batch(batch_sentences);
        if outcome.is_ok() && !live.is_empty() {
            let longest = sources.iter().map(Vec::len).max().unwrap_or(1);
            let profiled = shared.router.profiled_ms(variant, batch_sentences, longest);
            shared.router.observe(variant, profiled, compute_ms);
        }
        let mut outputs = match outcome {
            Ok(outputs) => Ok(outputs.into_iter()),
            Err(e) => {
                tracing::error!("{}: {e}", shared.variants[variant].profile.name);
                Err(e)
            }
        };
        shared.finished(live.iter().chain(&gone));
        for job in live {
            if outputs.is_ok() {
                let measured = job.admitted.elapsed().as_secs_f64() * 1000.0;
                shared.router.observe_answer(job.model_ms, measured);
            }
            let answer = match &mut outputs {
                Ok(outputs) => Ok(Answer {
                    translations: outputs.by_ref().take(job.sources.len()).collect(),
                    queue_ms: started.duration_since(job.admitted).as_secs_f64() * 1000.0,
                    compute_ms,
                    batch_sentences,
                }),
                Err(e) => Err(e.clone()),
            };
            let _ = job.reply.send(answer);
        }
    }
}
