//! The router: which variant answers a request, given what each variant is worth
//! (valid BLEU), what it costs (its latency table), the request's budget and the work
//! already queued.
//!
//! The rule: among the variants that meet the quality floor, the best-BLEU one whose
//! predicted answer time (the queue ahead plus its own compute) fits the time budget.
//! As the queue grows, slow variants stop fitting and the router falls back to faster
//! ones; when not even the fastest fits, the request is refused as overload, so that
//! the requests admitted are answered within their budget.

use serde::{Deserialize, Serialize};

use crate::profile::LatencyTable;

/// A named service level, for clients that do not think in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// The variant predicted to answer first, whatever its quality.
    Fast,
    /// The best quality within the server's default time budget.
    Balanced,
    /// The best quality, however long it takes.
    Best,
}

impl std::str::FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fast" => Ok(Tier::Fast),
            "balanced" => Ok(Tier::Balanced),
            "best" => Ok(Tier::Best),
            other => Err(format!(
                "unknown tier `{other}`: the tiers are fast, balanced and best"
            )),
        }
    }
}

/// What a request asks for. Everything is optional; an empty budget is the
/// [`Tier::Balanced`] one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Budget {
    /// Answer within this many milliseconds (queueing included).
    pub max_ms: Option<f64>,
    /// Only variants whose valid BLEU is at least this.
    pub min_bleu: Option<f64>,
    pub tier: Option<Tier>,
    /// This variant and no other.
    pub variant: Option<String>,
}

/// One variant as the router sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutedVariant {
    pub name: String,
    pub bleu: f64,
    pub latency: LatencyTable,
    /// Most sentences in one of its batches (the batcher's limit); 0: no limit.
    pub max_batch: usize,
}

/// The variant chosen for a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub variant: usize,
    /// Predicted compute this request adds to its batch.
    pub compute_ms: f64,
    /// Predicted answer time: the queue ahead plus the compute.
    pub predicted_ms: f64,
    /// The same before the answers' calibration ([`Router::observe_answer`] takes it).
    pub model_ms: f64,
}

/// Why no variant may answer a request.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RouteError {
    #[error("no variant is named `{name}`; the variants are: {known}")]
    UnknownVariant { name: String, known: String },
    #[error(
        "no variant reaches BLEU {min_bleu} on the valid split; the best reaches {best_bleu:.2}"
    )]
    QualityUnreachable { min_bleu: f64, best_bleu: f64 },
    #[error(
        "no variant can answer within {max_ms} ms even on an idle server: the fastest \
         that meets the request needs about {fastest_ms:.0} ms"
    )]
    BudgetUnreachable { max_ms: f64, fastest_ms: f64 },
    #[error(
        "the server is too busy to answer within {max_ms} ms (about {queued_ms:.0} ms of work \
         is queued); retry in {retry_after_ms:.0} ms"
    )]
    Overloaded {
        max_ms: f64,
        queued_ms: f64,
        retry_after_ms: f64,
    },
}

/// Picks variants for requests.
#[derive(Debug)]
pub struct Router {
    variants: Vec<RoutedVariant>,
    /// The time budget of requests that give none ([`Tier::Balanced`]).
    default_budget_ms: f64,
    /// Per variant, the last [`CALIBRATION_BATCHES`] ratios of measured compute over
    /// profiled prediction: a profile is measured back to back on warm caches, while a
    /// server decodes after idle gaps, beside its HTTP threads and other processes. The
    /// router scales each profile by a high quantile of its ratios, so that it predicts
    /// a bad case rather than the typical one, and the requests it admits meet their
    /// budget at the 95th percentile, not only at the median.
    calibration: std::sync::Mutex<Vec<std::collections::VecDeque<f64>>>,
    /// The last [`LATENESS_ANSWERS`] ratios of a request's measured answer time (queue
    /// and compute) over its prediction: batches form, split and reorder in ways the
    /// batch-level model does not follow exactly, so the router also scales whole
    /// predictions by the [`LATENESS_QUANTILE`] of these ratios.
    lateness: std::sync::Mutex<std::collections::VecDeque<f64>>,
}

/// Answers the lateness calibration remembers.
const LATENESS_ANSWERS: usize = 256;
/// The quantile of answer-time ratios that scales predictions: the budget is meant to
/// hold for the 95th percentile of admitted requests.
const LATENESS_QUANTILE: f64 = 0.95;

/// Batches each variant's calibration remembers.
const CALIBRATION_BATCHES: usize = 64;
/// Batches of its own a variant needs before its calibration stops borrowing the
/// other variants'.
const CALIBRATION_MIN_OWN: usize = 8;
/// The quantile of the measured/profiled ratios that scales a profile.
const CALIBRATION_QUANTILE: f64 = 0.9;

/// Appends `value` to a window that keeps the last `capacity` values.
fn remember(window: &mut std::collections::VecDeque<f64>, value: f64, capacity: usize) {
    if window.len() == capacity {
        window.pop_front();
    }
    window.push_back(value);
}

/// The nearest-rank `q` quantile of `values`; `None` when there are none.
fn quantile(values: impl Iterator<Item = f64>, q: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = values.collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl Router {
    pub fn new(variants: Vec<RoutedVariant>, default_budget_ms: f64) -> Self {
        let calibration = std::sync::Mutex::new(vec![Default::default(); variants.len()]);
        Self {
            variants,
            default_budget_ms,
            calibration,
            lateness: Default::default(),
        }
    }

    /// Learns from a request answered `measured_ms` after admission, predicted (before
    /// this calibration) at `model_ms`.
    pub fn observe_answer(&self, model_ms: f64, measured_ms: f64) {
        if !(model_ms > 0.0 && measured_ms.is_finite()) {
            return;
        }
        let mut lateness = self.lateness.lock().unwrap_or_else(|e| e.into_inner());
        remember(
            &mut lateness,
            (measured_ms / model_ms).clamp(0.5, 4.0),
            LATENESS_ANSWERS,
        );
    }

    /// The factor that scales whole predictions: the [`LATENESS_QUANTILE`] of the
    /// recent answers' ratios, at least 1 (a model that predicts late is kept, not
    /// stretched), 1 before 20 answers.
    pub fn lateness(&self) -> f64 {
        let lateness = self.lateness.lock().unwrap_or_else(|e| e.into_inner());
        if lateness.len() < 20 {
            return 1.0;
        }
        quantile(lateness.iter().copied(), LATENESS_QUANTILE).map_or(1.0, |q| q.max(1.0))
    }

    /// Learns from a batch of variant `index` that took `measured_ms` where its profile
    /// predicted `profiled_ms`.
    pub fn observe(&self, index: usize, profiled_ms: f64, measured_ms: f64) {
        if !(profiled_ms > 0.0 && measured_ms.is_finite()) {
            return;
        }
        let ratio = (measured_ms / profiled_ms).clamp(0.25, 8.0);
        let mut calibration = self.calibration.lock().unwrap_or_else(|e| e.into_inner());
        remember(&mut calibration[index], ratio, CALIBRATION_BATCHES);
    }

    /// The factor that scales variant `index`'s profiled latency: the
    /// [`CALIBRATION_QUANTILE`] of its recent measured/profiled ratios; of every
    /// variant's while it has fewer than [`CALIBRATION_MIN_OWN`] batches (the machine's
    /// state moves all variants alike); 1 before any batch.
    pub fn calibration(&self, index: usize) -> f64 {
        let calibration = self.calibration.lock().unwrap_or_else(|e| e.into_inner());
        let ratios: Vec<f64> = match calibration[index].len() >= CALIBRATION_MIN_OWN {
            true => calibration[index].iter().copied().collect(),
            false => calibration.iter().flatten().copied().collect(),
        };
        quantile(ratios.into_iter(), CALIBRATION_QUANTILE).unwrap_or(1.0)
    }

    /// Profiled compute of `sentences` sentences, the longest `max_len` tokens, on
    /// variant `index`, before calibration.
    pub fn profiled_ms(&self, index: usize, sentences: usize, max_len: usize) -> f64 {
        self.variants[index].latency.predict_ms(sentences, max_len)
    }

    pub fn variants(&self) -> &[RoutedVariant] {
        &self.variants
    }

    pub fn default_budget_ms(&self) -> f64 {
        self.default_budget_ms
    }

    /// Predicted compute of `sentences` sentences, the longest `max_len` tokens, on
    /// variant `index`: its profile, calibrated by what the server measured.
    pub fn compute_ms(&self, index: usize, sentences: usize, max_len: usize) -> f64 {
        self.profiled_ms(index, sentences, max_len) * self.calibration(index)
    }

    /// The variant for a request of `sentences` sentences whose longest source has
    /// `max_len` tokens, when `queued_ms` of work is ahead of it and `waiting[v]`
    /// (sentences, longest in tokens) already wait for variant `v` (the request would
    /// join their batch).
    ///
    /// A request's cost on a variant is its marginal cost: what it adds to the batch it
    /// joins. Admitted work is accounted that way too, so `queued_ms` plus the marginal
    /// cost is when that batch is predicted to finish.
    pub fn choose(
        &self,
        budget: &Budget,
        sentences: usize,
        max_len: usize,
        queued_ms: f64,
        waiting: &[(usize, usize)],
    ) -> Result<Decision, RouteError> {
        let lateness = self.lateness();
        // Each calibration factor is read once per request, not once per prediction.
        let factors: Vec<f64> = (0..self.variants.len())
            .map(|i| self.calibration(i))
            .collect();
        let cost = |variant: usize, sentences: usize, len: usize| {
            self.profiled_ms(variant, sentences, len) * factors[variant]
        };
        let decide = |variant: usize| {
            let (pending, longest) = waiting.get(variant).copied().unwrap_or((0, 0));
            // The request joins the last, partly filled batch of those waiting; the
            // batch pads to its longest sentence, old or new.
            let max_batch = self.variants[variant].max_batch;
            let pending = match max_batch {
                0 => pending,
                max => pending % max,
            };
            let len = max_len.max(longest);
            let before = match pending {
                0 => 0.0,
                n => cost(variant, n, len),
            };
            let compute_ms = cost(variant, pending + sentences, len) - before;
            Decision {
                variant,
                compute_ms,
                predicted_ms: (queued_ms + compute_ms) * lateness,
                model_ms: queued_ms + compute_ms,
            }
        };
        let alone = |variant: usize| cost(variant, sentences, max_len);
        let mut candidates: Vec<usize> = match &budget.variant {
            Some(name) => vec![self.index_of(name)?],
            None => (0..self.variants.len()).collect(),
        };
        if let Some(min_bleu) = budget.min_bleu {
            let best_bleu = candidates
                .iter()
                .map(|&i| self.variants[i].bleu)
                .fold(f64::NEG_INFINITY, f64::max);
            candidates.retain(|&i| self.variants[i].bleu >= min_bleu);
            if candidates.is_empty() {
                return Err(RouteError::QualityUnreachable {
                    min_bleu,
                    best_bleu,
                });
            }
        }
        let decisions: Vec<Decision> = candidates.into_iter().map(decide).collect();
        let fastest = || {
            decisions
                .iter()
                .min_by(|a, b| a.compute_ms.total_cmp(&b.compute_ms))
                .cloned()
                .expect("at least one candidate")
        };
        let max_ms = match (budget.max_ms, budget.tier) {
            (Some(ms), _) => ms,
            (None, Some(Tier::Fast)) => return Ok(fastest()),
            // A variant asked for by name takes the time it takes.
            (None, Some(Tier::Best)) => f64::INFINITY,
            (None, None) if budget.variant.is_some() => f64::INFINITY,
            // A quality floor alone asks for the cheapest variant that meets it.
            (None, None) if budget.min_bleu.is_some() => return Ok(fastest()),
            (None, _) => self.default_budget_ms,
        };
        let best = decisions
            .iter()
            .filter(|d| d.predicted_ms <= max_ms)
            .max_by(|a, b| {
                let (va, vb) = (&self.variants[a.variant], &self.variants[b.variant]);
                va.bleu
                    .total_cmp(&vb.bleu)
                    .then(b.compute_ms.total_cmp(&a.compute_ms))
            });
        if let Some(best) = best {
            return Ok(best.clone());
        }
        let fastest = fastest();
        let fastest_alone = decisions
            .iter()
            .map(|d| alone(d.variant))
            .fold(f64::INFINITY, f64::min);
        if fastest_alone > max_ms {
            return Err(RouteError::BudgetUnreachable {
                max_ms,
                fastest_ms: fastest_alone,
            });
        }
        Err(RouteError::Overloaded {
            max_ms,
            queued_ms,
            retry_after_ms: fastest.predicted_ms - max_ms,
        })
    }

    fn index_of(&self, name: &str) -> Result<usize, RouteError> {
        self.variants
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| RouteError::UnknownVariant {
                name: name.to_string(),
                known: self
                    .variants
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three variants with flat latency per sentence: slow and good, medium, fast and poor.
    fn router() -> Router {
        let flat = |ms_per_sentence: f64| LatencyTable {
            lengths: vec![20.0],
            batches: vec![1, 10],
            ms: vec![vec![ms_per_sentence, 10.0 * ms_per_sentence]],
        };
        let variant = |name: &str, bleu, ms| RoutedVariant {
            name: name.into(),
            bleu,
            latency: flat(ms),
            max_batch: 8,
        };
        Router::new(
            vec![
                variant("teacher/beam4", 25.0, 100.0),
                variant("teacher/greedy", 22.0, 30.0),
                variant("nat/one-pass", 20.0, 5.0),
            ],
            200.0,
        )
    }

    fn pick(budget: Budget, queued_ms: f64) -> Result<String, RouteError> {
        let r = router();
        r.choose(&budget, 1, 20, queued_ms, &[])
            .map(|d| r.variants()[d.variant].name.clone())
    }

    fn within(ms: f64) -> Budget {
        Budget {
            max_ms: Some(ms),
            ..Budget::default()
        }
    }

    #[test]
    fn the_best_variant_that_fits_the_budget_wins_and_load_pushes_to_faster_ones() {
        assert_eq!(pick(within(150.0), 0.0).unwrap(), "teacher/beam4");
        assert_eq!(pick(within(50.0), 0.0).unwrap(), "teacher/greedy");
        assert_eq!(pick(within(10.0), 0.0).unwrap(), "nat/one-pass");
        // The same budget under load: 100 ms queued leaves 50 ms, then 10 ms.
        assert_eq!(pick(within(150.0), 100.0).unwrap(), "teacher/greedy");
        assert_eq!(pick(within(150.0), 140.0).unwrap(), "nat/one-pass");
        // No budget: the server's default of 200 ms.
        assert_eq!(pick(Budget::default(), 0.0).unwrap(), "teacher/beam4");
        assert_eq!(pick(Budget::default(), 150.0).unwrap(), "teacher/greedy");
    }

    #[test]
    fn measured_batches_calibrate_the_profile() {
        let r = router();
        assert_eq!(r.compute_ms(1, 1, 20), 30.0);
        // Batches of teacher/greedy take 1x to 2x their profile: the router predicts
        // with the 90th percentile of the ratios, not their mean.
        for i in 0..10 {
            r.observe(1, 30.0, 30.0 + 30.0 * f64::from(i) / 9.0);
        }
        assert!((r.calibration(1) - 1.0 - 8.0 / 9.0).abs() < 1e-9);
        // A variant without batches of its own borrows the others' calibration.
        assert_eq!(r.calibration(0), r.calibration(1));
        // Now greedy no longer fits 50 ms; the NAT does.
        assert_eq!(
            r.choose(&within(50.0), 1, 20, 0.0, &[]).map(|d| d.variant),
            Ok(2)
        );
        // Absurd measurements are bounded.
        for _ in 0..8 {
            r.observe(2, 5.0, 1e9);
        }
        assert_eq!(r.calibration(2), 8.0);
    }

    #[test]
    fn late_answers_stretch_every_prediction() {
        let r = router();
        let before = r.choose(&within(1000.0), 1, 20, 0.0, &[]).unwrap();
        assert_eq!(before.predicted_ms, before.model_ms);
        // 19 answers are not enough; at 100, one in ten took 1.5x: the 95th percentile.
        for i in 0..100 {
            r.observe_answer(100.0, if i % 10 == 0 { 150.0 } else { 90.0 });
        }
        assert_eq!(r.lateness(), 1.5);
        let after = r.choose(&within(1000.0), 1, 20, 0.0, &[]).unwrap();
        assert!((after.predicted_ms - 1.5 * after.model_ms).abs() < 1e-9);
        // teacher/beam4 (100 ms) no longer fits a 120 ms budget.
        assert_eq!(
            r.choose(&within(120.0), 1, 20, 0.0, &[]).unwrap().variant,
            1
        );
    }

    #[test]
    fn a_request_costs_what_it_adds_to_the_batch_it_joins() {
        let r = router();
        // Four sentences wait for teacher/beam4 (latency 100 ms per sentence up to
        // batch 10): one more adds 100 ms, and the batch ends 100 ms after the queue.
        let d = r
            .choose(&within(1000.0), 1, 20, 400.0, &[(4, 20), (0, 0), (0, 0)])
            .unwrap();
        assert_eq!(d.variant, 0);
        assert!((d.compute_ms - 100.0).abs() < 1e-9);
        assert!((d.predicted_ms - 500.0).abs() < 1e-9);
        // Eight waiting fill a batch: the request starts the next one, alone (100 ms at
        // 1 sentence), and so does a request of two (latency 100 ms per sentence).
        let d = r
            .choose(&within(1000.0), 2, 20, 800.0, &[(8, 20), (0, 0), (0, 0)])
            .unwrap();
        assert!((d.compute_ms - 200.0).abs() < 1e-9);
    }

    #[test]
    fn overload_and_impossible_budgets_are_refused_with_their_reason() {
        match pick(within(150.0), 149.0).unwrap_err() {
            RouteError::Overloaded { retry_after_ms, .. } => {
                assert!((retry_after_ms - 4.0).abs() < 1e-9)
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            pick(within(2.0), 0.0).unwrap_err(),
            RouteError::BudgetUnreachable { fastest_ms, .. } if fastest_ms == 5.0
        ));
    }

    #[test]
    fn quality_floors_tiers_and_named_variants() {
        let floor = |bleu| Budget {
            min_bleu: Some(bleu),
            ..Budget::default()
        };
        // A floor alone: the cheapest variant that meets it.
        assert_eq!(pick(floor(21.0), 0.0).unwrap(), "teacher/greedy");
        assert!(matches!(
            pick(floor(30.0), 0.0).unwrap_err(),
            RouteError::QualityUnreachable { best_bleu, .. } if best_bleu == 25.0
        ));
        // A floor and a budget: the floor first, then the best that fits.
        let both = Budget {
            min_bleu: Some(21.0),
            max_ms: Some(20.0),
            ..Budget::default()
        };
        assert!(matches!(
            pick(both, 0.0).unwrap_err(),
            RouteError::BudgetUnreachable { fastest_ms, .. } if fastest_ms == 30.0
        ));
        let tier = |tier| Budget {
            tier: Some(tier),
            ..Budget::default()
        };
        assert_eq!(pick(tier(Tier::Fast), 1000.0).unwrap(), "nat/one-pass");
        assert_eq!(pick(tier(Tier::Best), 1000.0).unwrap(), "teacher/beam4");
        assert_eq!(pick(tier(Tier::Balanced), 150.0).unwrap(), "teacher/greedy");
        assert_eq!("best".parse::<Tier>(), Ok(Tier::Best));
        assert!(
            "fastest"
                .parse::<Tier>()
                .unwrap_err()
                .contains("fast, balanced")
        );
        let named = Budget {
            variant: Some("teacher/greedy".into()),
            ..Budget::default()
        };
        assert_eq!(pick(named, 0.0).unwrap(), "teacher/greedy");
        // A named variant without a budget is not held to the default one.
        let slow = Budget {
            variant: Some("teacher/beam4".into()),
            ..Budget::default()
        };
        assert_eq!(pick(slow, 10_000.0).unwrap(), "teacher/beam4");
        let unknown = Budget {
            variant: Some("x".into()),
            ..Budget::default()
        };
        assert!(matches!(
            pick(unknown, 0.0).unwrap_err(),
            RouteError::UnknownVariant { known, .. } if known.contains("nat/one-pass")
        ));
    }
}
