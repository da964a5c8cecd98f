//! Dynamic batching: requests wait in one queue per variant and leave in batches of
//! similar length, under a sentence and token budget, as soon as a batch is full or its
//! oldest request has waited long enough. What may wait is bounded, so that overload is
//! refused at the door instead of growing memory.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How one variant's batches are formed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchPolicy {
    /// Most sentences in a batch.
    pub max_sentences: usize,
    /// Most padded source tokens in a batch (sentences × the longest one).
    pub max_tokens: usize,
    /// Longest a request waits for others to share its batch.
    pub max_wait: Duration,
}

impl BatchPolicy {
    /// A policy sized from a variant's measured throughput: batches up to the batch size
    /// beyond which a sentence stops getting cheaper (`efficient_batch`), of sentences of
    /// up to `typical_len` tokens.
    pub fn sized(efficient_batch: usize, typical_len: usize, max_wait: Duration) -> Self {
        let max_sentences = efficient_batch.max(1);
        Self {
            max_sentences,
            max_tokens: max_sentences * typical_len.max(1),
            max_wait,
        }
    }
}

/// The queue is at its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{waiting} sentences are already waiting (the limit is {limit})")]
pub struct QueueFull {
    pub waiting: usize,
    pub limit: usize,
}

struct Waiting<T> {
    sentences: usize,
    max_len: usize,
    arrived: Instant,
    item: T,
}

/// Requests waiting for a batch, per variant.
pub struct Batcher<T> {
    queues: Vec<VecDeque<Waiting<T>>>,
    policies: Vec<BatchPolicy>,
    waiting: usize,
    limit: usize,
}

impl<T> Batcher<T> {
    /// One queue per policy (per variant); at most `limit` sentences wait in all.
    pub fn new(policies: Vec<BatchPolicy>, limit: usize) -> Self {
        Self {
            queues: policies.iter().map(|_| VecDeque::new()).collect(),
            policies,
            waiting: 0,
            limit,
        }
    }

    /// Sentences waiting in all queues.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Per variant, the sentences waiting and the longest of them (tokens).
    pub fn waiting_per_variant(&self) -> Vec<(usize, usize)> {
        self.queues
            .iter()
            .map(|q| {
                let sentences = q.iter().map(|w| w.sentences).sum();
                let longest = q.iter().map(|w| w.max_len).max().unwrap_or(0);
                (sentences, longest)
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting == 0
    }

    /// Queues a request of `sentences` sentences, the longest `max_len` tokens, for
    /// `variant`; gives the item back when the queue is full. A request larger than the
    /// whole limit is still taken when nothing waits, so that no request size is refused
    /// forever.
    pub fn push(
        &mut self,
        variant: usize,
        sentences: usize,
        max_len: usize,
        now: Instant,
        item: T,
    ) -> Result<(), (QueueFull, T)> {
        if self.waiting > 0 && self.waiting + sentences > self.limit {
            let full = QueueFull {
                waiting: self.waiting,
                limit: self.limit,
            };
            return Err((full, item));
        }
        self.waiting += sentences;
        self.queues[variant].push_back(Waiting {
            sentences,
            max_len,
            arrived: now,
            item,
        });
        Ok(())
    }

    fn ready(&self, variant: usize, now: Instant, draining: bool) -> bool {
        let queue = &self.queues[variant];
        let Some(oldest) = queue.front() else {
            return false;
        };
        let policy = &self.policies[variant];
        let sentences: usize = queue.iter().map(|w| w.sentences).sum();
        let tokens: usize = queue.iter().map(|w| w.sentences * w.max_len).sum();
        draining
            || sentences >= policy.max_sentences
            || tokens >= policy.max_tokens
            || now.duration_since(oldest.arrived) >= policy.max_wait
    }

    /// The next batch at `now`: the variant whose ready queue has the oldest request,
    /// that request, and the waiting requests of the nearest lengths that fit the
    /// budget with it. When no batch is ready, how long until one will be (`None`: the
    /// queues are empty). `draining` makes every waiting request ready.
    pub fn next_batch(
        &mut self,
        now: Instant,
        draining: bool,
    ) -> Result<(usize, Vec<T>), Option<Duration>> {
        let ready = (0..self.queues.len())
            .filter(|&v| self.ready(v, now, draining))
            .min_by_key(|&v| self.queues[v].front().map(|w| w.arrived));
        let Some(variant) = ready else {
            let wait = (0..self.queues.len())
                .filter_map(|v| {
                    let oldest = self.queues[v].front()?;
                    let due = oldest.arrived + self.policies[v].max_wait;
                    Some(due.saturating_duration_since(now))
                })
                .min();
            return Err(wait);
        };
        let policy = self.policies[variant];
        let queue = &mut self.queues[variant];
        let first = queue.pop_front().expect("a ready queue has a request");
        let mut order: Vec<usize> = (0..queue.len()).collect();
        order.sort_by_key(|&i| (queue[i].max_len.abs_diff(first.max_len), i));
        let (mut sentences, mut longest) = (first.sentences, first.max_len);
        let mut taken = Vec::new();
        for i in order {
            let w = &queue[i];
            let longer = longest.max(w.max_len);
            if sentences + w.sentences <= policy.max_sentences
                && (sentences + w.sentences) * longer <= policy.max_tokens
            {
                sentences += w.sentences;
                longest = longer;
                taken.push(i);
            }
        }
        // Removed from the back so that indices stay valid, then put in queue order.
        taken.sort_unstable_by(|a, b| b.cmp(a));
        let mut rest: Vec<Waiting<T>> = taken
            .into_iter()
            .map(|i| queue.remove(i).expect("index of the queue"))
            .collect();
        rest.reverse();
        let mut batch = vec![first];
        batch.extend(rest);
        self.waiting -= batch.iter().map(|w| w.sentences).sum::<usize>();
        Ok((variant, batch.into_iter().map(|w| w.item).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_sentences: usize, max_tokens: usize) -> BatchPolicy {
        BatchPolicy {
            max_sentences,
            max_tokens,
            max_wait: Duration::from_millis(10),
        }
    }

    #[test]
    fn a_batch_leaves_when_full_or_when_its_oldest_has_waited() {
        let t0 = Instant::now();
        let mut b = Batcher::new(vec![policy(4, 1000)], 100);
        b.push(0, 1, 10, t0, "a").unwrap();
        b.push(0, 1, 10, t0, "b").unwrap();
        // Neither full nor old: wait until the oldest's 10 ms are up.
        assert_eq!(
            b.next_batch(t0, false),
            Err(Some(Duration::from_millis(10)))
        );
        let later = t0 + Duration::from_millis(10);
        assert_eq!(b.next_batch(later, false), Ok((0, vec!["a", "b"])));
        assert_eq!(b.next_batch(later, false), Err(None));
        for name in ["c", "d", "e", "f", "g"] {
            b.push(0, 1, 10, t0, name).unwrap();
        }
        // Full at four sentences: leaves at once; the fifth waits.
        assert_eq!(b.next_batch(t0, false), Ok((0, vec!["c", "d", "e", "f"])));
        assert_eq!(b.waiting(), 1);
        assert_eq!(b.next_batch(t0, true), Ok((0, vec!["g"])));
        assert!(b.is_empty());
    }

    #[test]
    fn batches_group_similar_lengths_under_the_token_budget() {
        let t0 = Instant::now();
        let mut b = Batcher::new(vec![policy(8, 100)], 100);
        for (name, len) in [
            ("short", 5),
            ("long", 40),
            ("short2", 6),
            ("mid", 20),
            ("short3", 4),
        ] {
            b.push(0, 1, len, t0, name).unwrap();
        }
        let later = t0 + Duration::from_millis(10);
        // The oldest (5 tokens) goes with the other short ones and the 20-token one
        // (4 x 20 = 80 tokens); the 40-token one would make 5 x 40.
        assert_eq!(
            b.next_batch(later, false),
            Ok((0, vec!["short", "short2", "mid", "short3"]))
        );
        assert_eq!(b.next_batch(later, false), Ok((0, vec!["long"])));
    }

    #[test]
    fn the_oldest_ready_variant_goes_first_and_the_bound_refuses_overflow() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(1);
        let mut b = Batcher::new(vec![policy(8, 1000), policy(8, 1000)], 5);
        b.push(1, 2, 10, t0, "first").unwrap();
        b.push(0, 2, 10, t1, "second").unwrap();
        let (full, item) = b.push(0, 2, 10, t1, "third").unwrap_err();
        assert_eq!((full.waiting, full.limit, item), (4, 5, "third"));
        let later = t1 + Duration::from_millis(20);
        assert_eq!(b.waiting_per_variant(), [(2, 10), (2, 10)]);
        assert_eq!(b.next_batch(later, false), Ok((1, vec!["first"])));
        assert_eq!(b.next_batch(later, false), Ok((0, vec!["second"])));
        // A request larger than the limit is taken when nothing waits.
        b.push(0, 50, 10, later, "huge").unwrap();
        assert_eq!(b.waiting(), 50);
    }

    #[test]
    fn a_policy_is_sized_from_the_efficient_batch() {
        let p = BatchPolicy::sized(32, 30, Duration::from_millis(5));
        assert_eq!((p.max_sentences, p.max_tokens), (32, 960));
    }
}
