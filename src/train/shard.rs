//! The shard plan: which events each rank holds, which are held back for
//! validation, and the batches of every epoch.
//!
//! Everything is a pure function of (label-group sizes, world size, seed,
//! epoch), so every rank computes the same plan from the group sizes alone
//! (rank 0 broadcasts them: `app::run::load_shard`) and a resumed run
//! replays the same batches.
//!
//! - **Ownership (label-stratified):** inside each label group the events (in
//!   their canonical read order) are cut into `W` contiguous chunks, chunk `r`
//!   to rank `r`; every rank's shard looks like the whole grid.
//! - **Validation:** every event of a validation group (a whole label held
//!   back, `data.validation_labels`) validates; inside each other group a
//!   seeded permutation picks `round(f · n_g)` events for validation.
//! - **Batches:** the training events are numbered globally (group by group)
//!   and split into `S` strata, stratum `s` being what rank `s` of `S` owns
//!   (`S` = `training.batch_strata`: 1 by default, 0 for the world size). Epoch `e`
//!   shuffles each stratum with a generator seeded by `(seed, e)` (stream `s`),
//!   merges the strata evenly (the `i`-th of `n_s` events sits at `(i + ½)/n_s`)
//!   and cuts the result into global batches of `B` (the last one partial). So
//!   every batch holds each stratum's share of `B` to within about one event:
//!   with `S` = world size no rank waits at the all-reduce for a rank that drew
//!   more of the batch (a plain shuffle gives each rank a binomial share). A rank processes the members of each global batch that it
//!   owns; the union over ranks is exactly the batch, so `N` ranks ≡ 1 rank with
//!   the same `S`, up to summation order. `S = 1` is a plain shuffle.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::BinaryHeap;

pub use crate::rng::mix_seed;

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
    /// For every global training number: its position in its label group
    /// (which fixes its stratum for any number of strata).
    train_pos: Vec<u32>,
    /// For every global training number: its label group.
    train_group: Vec<u32>,
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
        let mut train_pos = Vec::new();
        let mut train_group = Vec::new();
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
                    train_pos.push(p as u32);
                    train_group.push(g as u32);
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
        ShardPlan {
            world,
            rank,
            group_sizes: group_sizes.to_vec(),
            n_train,
            n_val,
            local_is_val,
            owner_local,
            train_pos,
            train_group,
        }
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

    /// This rank's share of every step of `epoch`, with the training events
    /// in `strata` strata (0 or 1: one; see the module doc).
    pub fn epoch_steps(&self, seed: u64, epoch: usize, batch: usize, strata: usize) -> Vec<Step> {
        let order = self.epoch_order(seed, epoch, strata.max(1));
        order
            .chunks(batch.max(1))
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

    /// The stratum of global training number `t` among `strata`: the rank of
    /// that many whose chunk of the event's label group holds it.
    fn stratum(&self, t: usize, strata: usize) -> usize {
        let n = self.group_sizes[self.train_group[t] as usize];
        let p = self.train_pos[t] as usize;
        // The largest s with chunk(n, strata, s).0 <= p.
        ((p + 1) * strata).div_ceil(n) - 1
    }

    /// The epoch's order of all global training numbers: each stratum shuffled,
    /// then the strata merged evenly.
    fn epoch_order(&self, seed: u64, epoch: usize, strata: usize) -> Vec<u32> {
        let mut lists = vec![Vec::new(); strata];
        for t in 0..self.n_train {
            lists[self.stratum(t, strata)].push(t as u32);
        }
        for (s, list) in lists.iter_mut().enumerate() {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix_seed(seed, epoch as u64));
            rng.set_stream(s as u64);
            list.shuffle(&mut rng);
        }
        if strata == 1 {
            return lists.pop().unwrap_or_default();
        }
        // k-way merge on the exact key (2i + 1) / (2 n_s), ties to the lower stratum.
        let mut heap: BinaryHeap<Head> =
            lists.iter().enumerate().filter(|(_, l)| !l.is_empty()).map(|(s, l)| Head::new(s, 0, l.len())).collect();
        let mut order = Vec::with_capacity(self.n_train);
        while let Some(h) = heap.pop() {
            order.push(lists[h.s][h.i]);
            if h.i + 1 < h.n {
                heap.push(Head::new(h.s, h.i + 1, h.n));
            }
        }
        order
    }
}

/// The next event of stratum `s` in the even merge: its `i` of `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    s: usize,
    i: usize,
    n: usize,
}

impl Head {
    fn new(s: usize, i: usize, n: usize) -> Self {
        Head { s, i, n }
    }
}

impl Ord for Head {
    /// Reversed (the heap pops its largest): the smallest key, then the lowest stratum, first.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        let a = (2 * self.i as u128 + 1) * o.n as u128;
        let b = (2 * o.i as u128 + 1) * self.n as u128;
        b.cmp(&a).then(o.s.cmp(&self.s))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
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
            for strata in [1, world, 3, 7] {
                let steps: Vec<Vec<Step>> = plans.iter().map(|p| p.epoch_steps(9, 3, 7, strata)).collect();
                let one = single.epoch_steps(9, 3, 7, strata);
                assert!(steps.iter().all(|s| s.len() == one.len()), "same number of steps on every rank");
                let local_train: Vec<usize> =
                    plans.iter().map(|p| p.local_is_val.iter().filter(|v| !**v).count()).collect();
                assert_eq!(local_train.iter().sum::<usize>(), single.n_train);
                for (k, s1) in one.iter().enumerate() {
                    let got: usize = steps.iter().map(|s| s[k].local.len()).sum();
                    assert_eq!(got, s1.global_count, "world {world} strata {strata} step {k}");
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
    }

    /// The global training numbers of each batch, as the single-process plan sees them.
    fn batches(p: &ShardPlan, strata: usize, batch: usize) -> Vec<Vec<u32>> {
        p.epoch_order(5, 2, strata).chunks(batch).map(<[u32]>::to_vec).collect()
    }

    #[test]
    fn strata_give_every_rank_an_even_share_of_every_batch() {
        // Uneven groups, so the ranks' shards differ in size by a few events.
        let sizes = [1000, 333, 2501, 77, 1289];
        let batch = 256;
        for world in [2, 3, 4] {
            let plans: Vec<ShardPlan> = (0..world).map(|r| ShardPlan::new(&sizes, world, r, 0.1, &[], 5)).collect();
            let n_train = plans[0].n_train as f64;
            let worst = |strata: usize| {
                let steps: Vec<Vec<Step>> = plans.iter().map(|p| p.epoch_steps(5, 2, batch, strata)).collect();
                let mut worst = 0.0f64;
                for (p, s) in plans.iter().zip(&steps) {
                    let share = p.owner_local.iter().filter(|&&l| l != u32::MAX).count() as f64 / n_train;
                    for st in s {
                        worst = worst.max((st.local.len() as f64 - share * st.global_count as f64).abs());
                    }
                }
                worst
            };
            // A plain shuffle leaves each rank's share binomial (sd ~ sqrt(256/world) ~ 8–11
            // events); the strata hold it to about one event.
            assert!(worst(world) <= 2.0, "world {world}: a rank's share is off by {}", worst(world));
            assert!(worst(1) > 10.0, "world {world}: the plain shuffle should be uneven, worst {}", worst(1));
        }
    }

    #[test]
    fn one_stratum_is_the_plain_shuffle_and_strata_change_the_batches() {
        let p = ShardPlan::new(&[300, 200], 1, 0, 0.1, &[], 5);
        let mut plain: Vec<u32> = (0..p.n_train as u32).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix_seed(5, 2));
        plain.shuffle(&mut rng);
        assert_eq!(p.epoch_order(5, 2, 1), plain);
        let two = batches(&p, 2, 64);
        assert_ne!(batches(&p, 1, 64), two);
        // Still every event once.
        let mut all: Vec<u32> = two.concat();
        all.sort_unstable();
        assert_eq!(all, (0..p.n_train as u32).collect::<Vec<_>>());
    }

    #[test]
    fn shuffle_depends_on_seed_and_epoch_only() {
        let p = ShardPlan::new(&[100, 50], 1, 0, 0.1, &[], 1);
        for strata in [1, 2, 3] {
            assert_eq!(p.epoch_steps(1, 2, 32, strata), p.epoch_steps(1, 2, 32, strata));
            assert_ne!(p.epoch_steps(1, 2, 32, strata), p.epoch_steps(1, 3, 32, strata));
            assert_ne!(p.epoch_steps(1, 2, 32, strata), p.epoch_steps(2, 2, 32, strata));
        }
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
