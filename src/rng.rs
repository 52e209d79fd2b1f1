//! Seeded use of libtorch's global generator, and the derivation of
//! per-stream seeds from a run's seed.
//!
//! libtorch draws weight initialisations and `randn` from one process-wide
//! generator. To make "same seed → same result" hold even when several
//! seeded operations run on different threads of one process (tests, a
//! sampling service), every seeded section runs under one lock.

use std::sync::{Mutex, MutexGuard};

static GLOBAL_RNG: Mutex<()> = Mutex::new(());

/// Holds libtorch's global generator, seeded with `seed`, until dropped.
pub struct SeededRng {
    _guard: MutexGuard<'static, ()>,
}

/// Holds libtorch's generator without reseeding it, for code that draws
/// numbers it does not care about (a fresh flow's initial weights that are
/// overwritten at once): the draws cannot land inside another caller's seeded
/// section.
pub fn locked() -> SeededRng {
    SeededRng { _guard: GLOBAL_RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) }
}

/// Seeds libtorch's generator and keeps it to this caller until the guard drops.
pub fn seeded(seed: u64) -> SeededRng {
    let guard = GLOBAL_RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed as i64);
    SeededRng { _guard: guard }
}

/// A seed for stream `b` of seed `a` (the splitmix64 finaliser of
/// `a ^ (b·φ + c)`): shuffles per epoch and label group, generation per label.
pub fn mix_seed(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed derived from `seed` and several integers (one splitmix64 step per
/// part, 63 bits so it fits libtorch's signed seed): the acceptance terms'
/// flow samples per epoch and per step and rank. Kept beside [`mix_seed`]
/// rather than folded into it because recorded weights depend on both.
pub fn mix_seed_parts(seed: u64, parts: &[u64]) -> u64 {
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
    for &p in parts {
        h = h.wrapping_add(p).wrapping_add(0x9e37_79b9_7f4a_7c15);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
    }
    h >> 1
}
