//! Timing program for [`fedhex::data::source::load`]: writes phi-omega
//! productions with [`write_phiomega_grid`] — a 100×100 grid with 200 events
//! per file (10,000 files) and a 10×10 grid with 10,000 events per file — to a
//! temporary directory (or the directory given as the first argument), then
//! loads each through the expressions of a real analysis (a cut, a jagged
//! index chosen by another branch, truth labels) and prints the seconds.
//!
//! Run with: `cargo run --release --example bench_load [DIR]`

use std::path::PathBuf;
use std::time::Instant;

use fedhex::data::phiomega::write_phiomega_grid;
use fedhex::data::phiomega::{LabelGrid, PhiOmegaModel};
use fedhex::data::source::{load, RootInput, Variable};

fn main() -> anyhow::Result<()> {
    let base = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("fedhex-bench-load-{}", std::process::id())));
    let keep = std::env::args().nth(1).is_some();
    let model = PhiOmegaModel::default();
    for (n_phi, n_omega, events) in [(100, 100, 200), (10, 10, 10_000)] {
        let dir = base.join(format!("{n_phi}x{n_omega}_{events}"));
        let points = LabelGrid::new(n_phi, n_omega).points()?;
        let t0 = Instant::now();
        let paths = write_phiomega_grid(&dir, &model, &points, events, 7)?;
        let t_write = t0.elapsed().as_secs_f64();
        let input = RootInput {
            files: vec![dir.display().to_string()],
            features: vec![
                Variable::new("phi", "CBL_RecoPhi_mass"),
                Variable::new("omega", "TwoProng_massPi0[CBL_RecoPhi_twoprongindex]"),
            ],
            labels: vec![Variable::new("labelphi", "GenPhi_mass[0]"), Variable::new("labelomega", "GenOmega_mass[0]")],
            cut: "CBL_Region == 1 and Photon_pt[CBL_RecoPhi_photonindex] > 220".into(),
            thresh: 10,
            ..RootInput::default()
        };
        // Twice: the first load may read from disk, the second from the page cache.
        for round in ["first", "second"] {
            let t1 = Instant::now();
            let (set, report) = load(&input)?;
            let t_load = t1.elapsed().as_secs_f64();
            println!(
                "{n_phi}x{n_omega} grid, {events} events/file ({} files): write {t_write:.2} s; load ({round}) {t_load:.2} s \
                 -> {} events, {:.2} M events/s read\n  {report}",
                paths.len(),
                set.len(),
                report.events_read as f64 / t_load / 1e6
            );
        }
    }
    if !keep {
        let _ = std::fs::remove_dir_all(&base);
    }
    Ok(())
}
