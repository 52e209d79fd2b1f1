//! The shard plan: which events each rank holds, which are held back for
//! validation, and the batches of every epoch.
//!
//! Everything is a pure function of (label-group sizes, world size, seed,
//! epoch), so every rank computes the same plan without communication and a
//! resumed run replays the same batches.
//!
//! - **Ownership (label-stratified):** inside each label group the events (in
//!   their canonical read order) are cut into `W` contiguous chunks, chunk `r`
//!   to rank `r`; every rank's shard looks like the whole grid.
//! - **Validation:** every event of a validation group (a whole label held
//!   back, `data.validation_labels`) validates; inside each other group a
//!   seeded permutation picks `round(f · n_g)` events for validation.
//! - **Batches:** the training events are numbered globally (group by group);
//!   epoch `e` shuffles these numbers with a generator seeded by `(seed, e)` and
//!   cuts the result into global batches of `B` (the last one partial). A rank
//!   processes the members of each global batch that it owns. The union over
//!   ranks is exactly the single-process batch, so `N` ranks ≡ 1 rank with the
//!   same global batch, up to summation order.

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Mixes two integers into a seed (splitmix64 finaliser).
pub fn mix_seed(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Rows `[lo, hi)` of a group of `n` events that rank `r` of `w` owns.
pub fn chunk(n: usize, w: usize, r: usize) -> (usize, usize) {
    (n * r / w, n * (r + 1) / w)
}

/// The plan for one rank.
#[derive(Debug, Clone)]
pub struct ShardPlan {
    /// World size.
    pub world: usize,
    /// This rank.
    pub rank: usize,
    /// Events per label group (global).
    pub group_sizes: Vec<usize>,
    /// Global number of training events.
    pub n_train: usize,
    /// Global number of validation events.
    pub n_val: usize,
    /// For this rank's events (group by group, chunk order): true if validation.
    pub local_is_val: Vec<bool>,
    /// For every global training number: the local training index on this
    /// rank, or `u32::MAX` if another rank owns it.
    owner_local: Vec<u32>,
}

/// One step's share for this rank.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Local training indices (into this rank's training events).
    pub local: Vec<i64>,
    /// Events in the global batch (all ranks).
    pub global_count: usize,
}

impl ShardPlan {
    /// Builds the plan for `rank` of `world`: every event of the groups listed in
    /// `val_groups` validates, and `val_fraction` of each other group's events.
    pub fn new(
        group_sizes: &[usize],
        world: usize,
        rank: usize,
        val_fraction: f64,
        val_groups: &[usize],
        seed: u64,
    ) -> Self {
        let mut n_train = 0usize;
        let mut n_val = 0usize;
        let mut local_is_val = Vec::new();
        let mut owner_local = Vec::new();
        let mut local_train = 0u32;
        for (g, &n) in group_sizes.iter().enumerate() {
            let n_v = if val_groups.contains(&g) {
                n
            } else {
                ((val_fraction * n as f64).round() as usize).min(n.saturating_sub(1))
            };
            let mut pos: Vec<usize> = (0..n).collect();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix_seed(seed, g as u64 ^ 0x5EED_0000));
            pos.shuffle(&mut rng);
            let mut is_val = vec![false; n];
            for &p in &pos[..n_v] {
                is_val[p] = true;
            }
            let (lo, hi) = chunk(n, world, rank);
            for (p, &v) in is_val.iter().enumerate() {
                let mine = p >= lo && p < hi;
                if mine {
                    local_is_val.push(v);
                }
                if !v {
                    if mine {
                        owner_local.push(local_train);
                        local_train += 1;
                    } else {
                        owner_local.push(u32::MAX);
                    }
                }
            }
            n_train += n - n_v;
            n_val += n_v;
        }
        ShardPlan { world, rank, group_sizes: group_sizes.to_vec(), n_train, n_val, local_is_val, owner_local }
    }

    /// Row range of each group that this rank must load: `(group, lo, hi)`.
    pub fn local_rows(&self) -> Vec<(usize, usize, usize)> {
        self.group_sizes
            .iter()
            .enumerate()
            .map(|(g, &n)| {
                let (lo, hi) = chunk(n, self.world, self.rank);
                (g, lo, hi)
            })
            .collect()
    }

    /// Global batches per epoch (the same on every rank).
    pub fn steps_per_epoch(&self, batch: usize) -> usize {
        self.n_train.div_ceil(batch.max(1))
    }

    /// This rank's share of every step of `epoch`.
    pub fn epoch_steps(&self, seed: u64, epoch: usize, batch: usize) -> Vec<Step> {
        let mut perm: Vec<u32> = (0..self.n_train as u32).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix_seed(seed, epoch as u64));
        perm.shuffle(&mut rng);
        perm.chunks(batch.max(1))
            .map(|ids| Step {
                local: ids
                    .iter()
                    .filter_map(|&g| {
                        let l = self.owner_local[g as usize];
                        (l != u32::MAX).then_some(i64::from(l))
                    })
                    .collect(),
                global_count: ids.len(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_partition_every_epoch_exactly() {
        let sizes = [17, 3, 40, 1];
        for world in 1..=4 {
            let plans: Vec<ShardPlan> = (0..world).map(|r| ShardPlan::new(&sizes, world, r, 0.2, &[], 9)).collect();
            let single = ShardPlan::new(&sizes, 1, 0, 0.2, &[], 9);
            assert!(plans.iter().all(|p| p.n_train == single.n_train && p.n_val == single.n_val));
            let steps: Vec<Vec<Step>> = plans.iter().map(|p| p.epoch_steps(9, 3, 7)).collect();
            let one = single.epoch_steps(9, 3, 7);
            assert!(steps.iter().all(|s| s.len() == one.len()), "same number of steps on every rank");
            let local_train: Vec<usize> =
                plans.iter().map(|p| p.local_is_val.iter().filter(|v| !**v).count()).collect();
            assert_eq!(local_train.iter().sum::<usize>(), single.n_train);
            for (k, s1) in one.iter().enumerate() {
                let got: usize = steps.iter().map(|s| s[k].local.len()).sum();
                assert_eq!(got, s1.global_count, "world {world} step {k}");
                assert!(steps.iter().all(|s| s[k].global_count == s1.global_count));
            }
            // Every local training event exactly once per epoch.
            for (p, s) in plans.iter().zip(&steps) {
                let mut seen: Vec<i64> = s.iter().flat_map(|st| st.local.clone()).collect();
                seen.sort_unstable();
                let n = p.local_is_val.iter().filter(|v| !**v).count() as i64;
                assert_eq!(seen, (0..n).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn shuffle_depends_on_seed_and_epoch_only() {
        let p = ShardPlan::new(&[100, 50], 1, 0, 0.1, &[], 1);
        assert_eq!(p.epoch_steps(1, 2, 32), p.epoch_steps(1, 2, 32));
        assert_ne!(p.epoch_steps(1, 2, 32), p.epoch_steps(1, 3, 32));
        assert_ne!(p.epoch_steps(1, 2, 32), p.epoch_steps(2, 2, 32));
    }

    #[test]
    fn validation_is_per_label() {
        let p = ShardPlan::new(&[100, 10, 1], 1, 0, 0.2, &[], 3);
        assert_eq!(p.n_val, 20 + 2);
        assert_eq!(p.local_is_val[..100].iter().filter(|v| **v).count(), 20);
        assert!(!p.local_is_val[110], "a single-event label keeps its event for training");
    }

    #[test]
    fn validation_groups_validate_whole_and_leave_the_others_unchanged() {
        let sizes = [30, 7, 12, 5];
        let plain = ShardPlan::new(&sizes, 1, 0, 0.2, &[], 5);
        let with = ShardPlan::new(&sizes, 1, 0, 0.2, &[1, 3], 5);
        let starts = [0, 30, 37, 49, 54];
        for g in 0..sizes.len() {
            let (a, b) = (&plain.local_is_val[starts[g]..starts[g + 1]], &with.local_is_val[starts[g]..starts[g + 1]]);
            if g == 1 || g == 3 {
                assert!(b.iter().all(|v| *v), "group {g} must validate whole");
            } else {
                assert_eq!(a, b, "group {g}: the other groups keep their split");
            }
        }
        assert_eq!(with.n_val, 6 + 2 + 7 + 5);
        assert_eq!(with.n_train + with.n_val, 54);
        // Every rank holds a chunk of the validation groups, all of it validation.
        for world in 2..=3 {
            let mut val = 0;
            for r in 0..world {
                let p = ShardPlan::new(&sizes, world, r, 0.2, &[1, 3], 5);
                assert_eq!((p.n_train, p.n_val), (with.n_train, with.n_val));
                val += p.local_is_val.iter().filter(|v| **v).count();
            }
            assert_eq!(val, with.n_val);
        }
    }
}
