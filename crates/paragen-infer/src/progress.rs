//! Progress reporting: a bar with rate and ETA when stderr is a terminal, plain log lines
//! (through `tracing`) otherwise, so logs of batch jobs stay readable.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A unit of long work with a known length.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    log_every: u64,
}

impl Progress {
    /// `label` names the work ("epoch 3", "decoding"); `unit` the items ("batches").
    pub fn new(label: &str, total: u64, unit: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{{prefix}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} \
                     ({{per_sec}}, ETA {{eta}}) {{msg}}"
                ))
                .expect("valid progress template"),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        Self {
            bar,
            label: label.to_string(),
            total,
            done: 0,
            log_every: (total / 10).max(1),
        }
    }

    /// Advances by `n` items; `message` is shown on the bar or in the periodic log line.
    pub fn advance(&mut self, n: u64, message: impl FnOnce() -> String) {
        self.done += n;
        match &self.bar {
            Some(bar) => {
                bar.inc(n);
                bar.set_message(message());
            }
            None => {
                if self.done % self.log_every < n || self.done == self.total {
                    tracing::info!("{}: {}/{} {}", self.label, self.done, self.total, message());
                }
            }
        }
    }

    /// Prints a line without breaking the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => tracing::info!("{line}"),
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
