//! Timing program for the ROOT module: writes a 100x100 grid of files with 200
//! events each and a 10x10 grid with 10k events each (under the system temp
//! dir, or the directory given as the first argument), then reads every file
//! back (open + tree + 4 branches) and prints the seconds each phase took.
//!
//! Run with: `cargo run --release --example root_grid_bench [DIR]`

use std::path::{Path, PathBuf};
use std::time::Instant;

use fedhex::data::root as rr;
use rr::{Column, RootFile, TreeWriter, Values};

fn write_grid(dir: &Path, nx: usize, ny: usize, events: usize) -> Result<Vec<PathBuf>, rr::RootError> {
    std::fs::create_dir_all(dir).map_err(|e| rr::RootError::Io {
        path: dir.display().to_string(),
        context: "creating directory: ".into(),
        source: e,
    })?;
    let mut paths = Vec::with_capacity(nx * ny);
    let mut state = 0x1234_5678_u64;
    let mut rnd = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    for i in 0..nx {
        for j in 0..ny {
            let x: Vec<f64> = (0..events).map(|_| rnd() + i as f64).collect();
            let y: Vec<f64> = (0..events).map(|_| rnd() + j as f64).collect();
            let w: Vec<f32> = (0..events).map(|_| rnd() as f32).collect();
            let l: Vec<i32> = (0..events).map(|k| (k % 7) as i32).collect();
            let mut tw = TreeWriter::new("events");
            tw.add_branch("x", Values::F64(x))?;
            tw.add_branch("y", Values::F64(y))?;
            tw.add_branch("weight", Values::F32(w))?;
            tw.add_branch("label", Values::I32(l))?;
            let p = dir.join(format!("grid_{i:03}_{j:03}.root"));
            tw.write(&p)?;
            paths.push(p);
        }
    }
    Ok(paths)
}

fn read_all(paths: &[PathBuf]) -> Result<(usize, f64), rr::RootError> {
    let mut n = 0usize;
    let mut sum = 0.0;
    for p in paths {
        let f = RootFile::open(p)?;
        let t = f.tree("events")?;
        for b in ["x", "y", "weight", "label"] {
            if let Column::Scalar(v) = t.read(b)? {
                n += v.len();
                sum += v.get_f64(0).unwrap_or(0.0);
            }
        }
    }
    Ok((n, sum))
}

fn main() -> Result<(), rr::RootError> {
    let base =
        std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("fedhex-root-bench"));
    for (label, nx, ny, events) in
        [("100x100 grid, 200 events/file", 100, 100, 200), ("10x10 grid, 10k events/file", 10, 10, 10_000)]
    {
        let dir = base.join(format!("{nx}x{ny}_{events}"));
        let t0 = Instant::now();
        let paths = write_grid(&dir, nx, ny, events)?;
        let tw = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let (n, sum) = read_all(&paths)?;
        let tr = t1.elapsed().as_secs_f64();
        let bytes: u64 = paths.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
        println!(
            "{label}: {} files, {:.1} MB: write {tw:.2} s, read {tr:.2} s ({n} values, checksum {sum:.3})",
            paths.len(),
            bytes as f64 / 1e6
        );
    }
    Ok(())
}
