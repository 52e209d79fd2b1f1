//! Timing of branch expressions over 1 M synthetic events.
//!
//! Run with `cargo run --release --example bench_expr [n_events]`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use fedhex::data::expr::{Column, Expr};

/// SplitMix64, so the example needs no extra dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn columns(n: usize) -> BTreeMap<String, Column> {
    let mut r = Rng(7);
    let mut region = Vec::with_capacity(n);
    let mut mass = Vec::with_capacity(n);
    let mut pidx = Vec::with_capacity(n);
    let mut tidx = Vec::with_capacity(n);
    let mut pt_off = vec![0u64];
    let mut pt = Vec::new();
    let mut tp_off = vec![0u64];
    let mut tp = Vec::new();
    for _ in 0..n {
        region.push((r.next() % 3) as f64);
        mass.push(200.0 + 2000.0 * r.uniform());
        let n_ph = (r.next() % 4) as usize;
        for _ in 0..n_ph {
            pt.push(50.0 + 400.0 * r.uniform());
        }
        pt_off.push(pt.len() as u64);
        pidx.push(if n_ph == 0 { -1.0 } else { (r.next() % n_ph as u64) as f64 });
        let n_tp = (r.next() % 3) as usize;
        for _ in 0..n_tp {
            tp.push(2.0 * r.uniform());
        }
        tp_off.push(tp.len() as u64);
        tidx.push(if n_tp == 0 { -1.0 } else { 0.0 });
    }
    let mut m = BTreeMap::new();
    m.insert("CBL_Region".into(), Column::Scalar(region));
    m.insert("CBL_RecoPhi_mass".into(), Column::Scalar(mass));
    m.insert("CBL_RecoPhi_photonindex".into(), Column::Scalar(pidx));
    m.insert("CBL_RecoPhi_twoprongindex".into(), Column::Scalar(tidx));
    m.insert("Photon_pt".into(), Column::Jagged { offsets: pt_off, values: pt });
    m.insert("TwoProng_massPi0".into(), Column::Jagged { offsets: tp_off, values: tp });
    m
}

fn time(mut f: impl FnMut()) -> (Duration, Duration) {
    f(); // warm-up
    let mut runs: Vec<Duration> = (0..7)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    runs.sort();
    (runs[0], runs[runs.len() / 2])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = match std::env::args().nth(1) {
        Some(s) => s.parse()?,
        None => 1_000_000,
    };
    let cols = columns(n);
    println!("{n} events; best / median of 7 runs");

    let cuts = [
        "CBL_Region == 1 and Photon_pt[CBL_RecoPhi_photonindex] > 220 and CBL_RecoPhi_mass < 1500",
        "CBL_Region == 1 and Photon_pt[CBL_RecoPhi_photonindex] > 220",
        "len(Photon_pt) > 0 and Photon_pt[0] > 100 or CBL_RecoPhi_mass > 2000",
    ];
    for src in cuts {
        let e = Expr::parse(src)?;
        let res = e.eval_cut(&cols, n)?;
        let (best, median) = time(|| {
            black_box(e.eval_cut(&cols, n).map(|r| r.invalid).ok());
        });
        println!(
            "cut  {:>7.2} ms / {:>7.2} ms  pass {:>7} invalid {:>7}  {src}",
            best.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e3,
            res.n_pass(),
            res.invalid
        );
    }

    let vars = [
        "CBL_RecoPhi_mass",
        "TwoProng_massPi0[CBL_RecoPhi_twoprongindex]",
        "sqrt(CBL_RecoPhi_mass ** 2 + 91.2 ** 2) / 1000",
    ];
    for src in vars {
        let e = Expr::parse(src)?;
        let (best, median) = time(|| {
            black_box(e.eval(&cols, n).map(|v| v.len()).ok());
        });
        println!("eval {:>7.2} ms / {:>7.2} ms  {src}", best.as_secs_f64() * 1e3, median.as_secs_f64() * 1e3);
    }

    let (best, median) = time(|| {
        for src in cuts {
            black_box(Expr::parse(src).ok());
        }
    });
    println!(
        "parse {:>6.2} us / {:>6.2} us  ({} cuts)",
        best.as_secs_f64() * 1e6,
        median.as_secs_f64() * 1e6,
        cuts.len()
    );
    Ok(())
}
