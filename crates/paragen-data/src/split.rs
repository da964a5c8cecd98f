//! Deterministic train / valid / test assignment from a pair's id.
//!
//! The split of a pair depends only on its id (FNV-1a hash), never on its position or on
//! the other pairs, so the test split stays the same however the corpus is filtered,
//! reordered or grown.

use serde::{Deserialize, Serialize};

use crate::corpus::Pair;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Valid,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
}

/// Share of pairs, in thousandths, that go to valid and test; the rest is train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitConfig {
    pub valid_per_mille: u32,
    pub test_per_mille: u32,
}

impl Default for SplitConfig {
    /// 2% valid, 4% test: on the shipped 31,102-verse corpus about 620 and 1,240 pairs.
    fn default() -> Self {
        Self {
            valid_per_mille: 20,
            test_per_mille: 40,
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl SplitConfig {
    /// The split a pair with this id belongs to.
    pub fn split_of(&self, id: &str) -> Split {
        let bucket = (fnv1a(id.as_bytes()) % 1000) as u32;
        if bucket < self.test_per_mille {
            Split::Test
        } else if bucket < self.test_per_mille + self.valid_per_mille {
            Split::Valid
        } else {
            Split::Train
        }
    }

    /// Partitions pairs into (train, valid, test), keeping their order.
    pub fn partition(&self, pairs: Vec<Pair>) -> (Vec<Pair>, Vec<Pair>, Vec<Pair>) {
        let (mut train, mut valid, mut test) = (Vec::new(), Vec::new(), Vec::new());
        for p in pairs {
            match self.split_of(&p.id) {
                Split::Train => train.push(p),
                Split::Valid => valid.push(p),
                Split::Test => test.push(p),
            }
        }
        (train, valid, test)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_depends_only_on_id_and_matches_the_shares() {
        let cfg = SplitConfig::default();
        let ids: Vec<String> = (0..20_000)
            .map(|i| format!("{}.{}.{}", i % 66, i / 66, i % 7))
            .collect();
        let counts = ids.iter().fold([0usize; 3], |mut c, id| {
            c[cfg.split_of(id) as usize] += 1;
            c
        });
        assert!((300..500).contains(&counts[1]), "{counts:?}");
        assert!((650..950).contains(&counts[2]), "{counts:?}");
        let pairs: Vec<Pair> = ids
            .iter()
            .map(|id| Pair {
                id: id.clone(),
                src: "s".into(),
                tgt: "t".into(),
            })
            .collect();
        let mut reversed = pairs.clone();
        reversed.reverse();
        let (_, _, test_a) = cfg.partition(pairs);
        let (_, _, mut test_b) = cfg.partition(reversed);
        test_b.reverse();
        assert_eq!(test_a, test_b);
    }
}
