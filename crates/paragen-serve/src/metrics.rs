//! The server's Prometheus metrics (`GET /metrics`): requests by status, latency of
//! answered requests, batch sizes, variant choices, rejections by reason, queue depth.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn label(name: &str, value: impl ToString) -> Labels {
    vec![(name.to_string(), value.to_string())]
}

/// Every metric the server keeps, registered once.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    latency: Histogram,
    batch_sentences: Histogram,
    choices: Family<Labels, Counter>,
    rejections: Family<Labels, Counter>,
    queue_sentences: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("paragen");
        let requests = Family::<Labels, Counter>::default();
        let latency = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let batch_sentences = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        let choices = Family::<Labels, Counter>::default();
        let rejections = Family::<Labels, Counter>::default();
        let queue_sentences = Gauge::default();
        registry.register(
            "requests",
            "Translation requests answered, by HTTP status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from admission to answer of translated requests",
            latency.clone(),
        );
        registry.register(
            "batch_sentences",
            "Sentences per decoded batch",
            batch_sentences.clone(),
        );
        registry.register(
            "variant_choices",
            "Requests routed to each variant",
            choices.clone(),
        );
        registry.register(
            "rejections",
            "Requests refused, by reason",
            rejections.clone(),
        );
        registry.register(
            "queue_sentences",
            "Sentences waiting for a batch",
            queue_sentences.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            batch_sentences,
            choices,
            rejections,
            queue_sentences,
        }
    }
}

impl Metrics {
    pub fn answered(&self, status: u16) {
        self.requests.get_or_create(&label("status", status)).inc();
    }

    pub fn translated(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    pub fn batch(&self, sentences: usize) {
        self.batch_sentences.observe(sentences as f64);
    }

    pub fn chose(&self, variant: &str) {
        self.choices.get_or_create(&label("variant", variant)).inc();
    }

    pub fn rejected(&self, reason: &str) {
        self.rejections
            .get_or_create(&label("reason", reason))
            .inc();
    }

    pub fn queue(&self, sentences: usize) {
        self.queue_sentences.set(sentences as i64);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_in_the_prometheus_text_format() {
        let m = Metrics::default();
        m.answered(200);
        m.answered(503);
        m.answered(200);
        m.chose("teacher/greedy");
        m.rejected("overloaded");
        m.batch(5);
        m.translated(0.02);
        m.queue(3);
        let text = m.render();
        assert!(
            text.contains("paragen_requests_total{status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("paragen_variant_choices_total{variant=\"teacher/greedy\"} 1"));
        assert!(text.contains("paragen_rejections_total{reason=\"overloaded\"} 1"));
        assert!(text.contains("paragen_batch_sentences_count 1"));
        assert!(text.contains("paragen_request_duration_seconds_bucket{le=\"0.032\"} 1"));
        assert!(text.contains("paragen_queue_sentences 3"));
        assert!(text.ends_with("# EOF\n"));
    }
}
