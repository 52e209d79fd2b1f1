//! Seeded use of libtorch's global generator.
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
