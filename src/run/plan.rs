//! The shard plan: which item indices belong to shard i of N. Pure functions.

use crate::run::config::Sharding;

/// The items of one shard, as a sequence of global indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardPlan {
    pub sharding: Sharding,
    pub n_items: u64,
    pub num_shards: u32,
    pub index: u32,
}

impl ShardPlan {
    /// The plan of shard `index` of `num_shards` over `n_items` items (`index < num_shards`).
    pub fn new(sharding: Sharding, n_items: u64, num_shards: u32, index: u32) -> Self {
        debug_assert!(index < num_shards);
        ShardPlan {
            sharding,
            n_items,
            num_shards,
            index,
        }
    }

    /// Number of items in this shard.
    pub fn len(&self) -> u64 {
        let (n, k, i) = (
            self.n_items,
            u64::from(self.num_shards),
            u64::from(self.index),
        );
        match self.sharding {
            // The first n % k shards hold one extra item.
            Sharding::Contiguous => n / k + u64::from(i < n % k),
            Sharding::Stride => n / k + u64::from(i < n % k),
        }
    }

    /// True when the shard holds no item.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The global index of the shard's `pos`-th item (`pos < len()`).
    pub fn global(&self, pos: u64) -> u64 {
        let (n, k, i) = (
            self.n_items,
            u64::from(self.num_shards),
            u64::from(self.index),
        );
        match self.sharding {
            Sharding::Contiguous => (n / k) * i + i.min(n % k) + pos,
            Sharding::Stride => i + pos * k,
        }
    }

    /// The position within this shard of global index `global`, if the shard holds it.
    pub fn position(&self, global: u64) -> Option<u64> {
        let (n, k, i) = (
            self.n_items,
            u64::from(self.num_shards),
            u64::from(self.index),
        );
        let pos = match self.sharding {
            Sharding::Contiguous => global.checked_sub(self.global(0).min(n))?,
            Sharding::Stride => {
                let d = global.checked_sub(i)?;
                if d % k != 0 {
                    return None;
                }
                d / k
            }
        };
        (pos < self.len() && global < n).then_some(pos)
    }

    /// The shard's global indices in order.
    pub fn indices(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len()).map(|p| self.global(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(sharding: Sharding, n: u64, k: u32) -> Vec<Vec<u64>> {
        (0..k)
            .map(|i| ShardPlan::new(sharding, n, k, i).indices().collect())
            .collect()
    }

    #[test]
    fn contiguous_is_the_balanced_block_partition_of_the_contract() {
        assert_eq!(
            all(Sharding::Contiguous, 10, 3),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6], vec![7, 8, 9]]
        );
        assert_eq!(
            all(Sharding::Contiguous, 2, 4),
            vec![vec![0], vec![1], vec![], vec![]]
        );
    }

    #[test]
    fn stride_deals_items_round_robin() {
        assert_eq!(
            all(Sharding::Stride, 10, 3),
            vec![vec![0, 3, 6, 9], vec![1, 4, 7], vec![2, 5, 8]]
        );
    }

    #[test]
    fn every_item_belongs_to_exactly_one_shard_and_sizes_differ_by_at_most_one() {
        for sharding in [Sharding::Contiguous, Sharding::Stride] {
            for n in [0u64, 1, 5, 7, 64, 1001] {
                for k in [1u32, 2, 3, 7, 16, 2000] {
                    let shards = all(sharding, n, k);
                    let mut seen: Vec<u64> = shards.iter().flatten().copied().collect();
                    seen.sort_unstable();
                    assert_eq!(seen, (0..n).collect::<Vec<_>>(), "{sharding:?} n={n} k={k}");
                    let sizes: Vec<usize> = shards.iter().map(Vec::len).collect();
                    let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                    assert!(hi - lo <= 1, "{sharding:?} n={n} k={k} {sizes:?}");
                }
            }
        }
    }

    #[test]
    fn position_inverts_global() {
        for sharding in [Sharding::Contiguous, Sharding::Stride] {
            for k in [1u32, 3, 7] {
                for i in 0..k {
                    let p = ShardPlan::new(sharding, 20, k, i);
                    for g in 0..25 {
                        match p.position(g) {
                            Some(pos) => assert_eq!(p.global(pos), g),
                            None => assert!(!p.indices().any(|x| x == g)),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn contiguous_start_matches_the_formula() {
        let (n, k) = (1003u64, 7u32);
        for i in 0..k {
            let p = ShardPlan::new(Sharding::Contiguous, n, k, i);
            let i = u64::from(i);
            assert_eq!(p.global(0), (n / 7) * i + i.min(n % 7));
        }
    }
}
