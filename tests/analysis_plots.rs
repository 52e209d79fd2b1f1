//! Tests of `fedhex::analysis::plots`: every function writes a real,
//! decodable, non-blank PNG; failures name the path and leave no file behind.

use std::fs;
use std::path::{Path, PathBuf};

use fedhex::analysis::plots::{self, PlotError};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// A fresh, empty directory for one test.
fn out_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("analysis_plots").join(name);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// Checks signature, decodes the PNG and returns (width, height, fraction of
/// non-white pixels).
fn check_png(path: &Path) -> (u32, u32, f64) {
    let bytes = fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{path:?} is not a PNG");
    assert!(bytes.len() > 10_000, "{path:?} is only {} bytes", bytes.len());
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let px = &buf[..info.buffer_size()];
    let total = (info.width * info.height) as usize;
    let non_white = px.chunks_exact(channels).filter(|c| c.iter().take(3).any(|&v| v < 250)).count();
    (info.width, info.height, non_white as f64 / total as f64)
}

fn assert_good_png(path: &Path) {
    let (w, h, ink) = check_png(path);
    assert!(w >= 1000 && (500..=3000).contains(&h), "{path:?}: {w}×{h}");
    assert!(ink > 0.02, "{path:?} looks blank: {ink}");
    // No temporary files left next to it.
    let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

fn gauss(n: usize, mean: f64, sd: f64, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let d = Normal::new(mean, sd).unwrap();
    (0..n).map(|_| d.sample(&mut rng)).collect()
}

fn cloud(n: usize, centre: [f64; 2], sd: [f64; 2], seed: u64) -> Vec<[f64; 2]> {
    let a = gauss(n, centre[0], sd[0], seed);
    let b = gauss(n, centre[1], sd[1], seed + 1_000_000);
    a.into_iter().zip(b).map(|(x, y)| [x, y]).collect()
}

#[test]
fn loss_curves_positive_and_negative() {
    let d = out_dir("loss");
    let train: Vec<f64> = (0..60).map(|e| 2.0 * (-(e as f64) / 15.0).exp() + 0.05).collect();
    let val: Vec<f64> = train.iter().map(|v| v * 1.1).collect();
    let p = d.join("loss.png");
    plots::loss_curves(&p, &train, &val).unwrap();
    assert_good_png(&p);
    // Negative log-likelihood crossing zero, with a NaN epoch: |loss| plotted.
    let mut nll: Vec<f64> = (0..60).map(|e| 1.5 - e as f64 / 12.0).collect();
    nll[30] = f64::NAN;
    let p = d.join("loss_negative.png");
    plots::loss_curves(&p, &nll, &[]).unwrap();
    assert_good_png(&p);
    // Nothing plottable → error naming the path, no file.
    let p = d.join("loss_empty.png");
    let err = plots::loss_curves(&p, &[f64::NAN, 0.0], &[]).unwrap_err();
    assert!(matches!(err, PlotError::InvalidInput { .. }));
    assert!(err.to_string().contains("loss_empty.png"));
    assert!(!p.exists());
}

#[test]
fn grid_overview_scatter() {
    let d = out_dir("grid");
    let mut training = Vec::new();
    let mut generated = Vec::new();
    for (k, mp) in [1000.0, 1500.0, 2000.0, 2500.0].iter().enumerate() {
        for (l, mo) in [1.0, 3.0, 5.0].iter().enumerate() {
            let seed = (10 * k + l) as u64;
            training.push(([*mp, *mo], cloud(3000, [*mp, *mo], [mp * 0.015, mo * 0.1], seed)));
        }
        let mid = [mp + 250.0, 2.0];
        generated.push((mid, cloud(3000, mid, [mid[0] * 0.015, 0.2], 100 + k as u64)));
    }
    let p = d.join("grid.png");
    plots::grid_overview_named(&p, &training, &generated, ["m_Φ [GeV]", "m_ω [GeV]"]).unwrap();
    assert_good_png(&p);
    let p = d.join("grid_default_names.png");
    plots::grid_overview(&p, &training, &[]).unwrap();
    assert_good_png(&p);
}

#[test]
fn four_panel_histograms_and_pulls() {
    let d = out_dir("four");
    let r = gauss(20_000, 1.0, 0.2, 1);
    let mut g = gauss(15_000, 1.02, 0.22, 2);
    g.push(f64::NAN);
    g.push(1e9); // far outlier: counted as outside, must not break the plot
    let p = d.join("four.png");
    plots::four_panel(&p, "m_ω [GeV]", &r, &g, 40).unwrap();
    assert_good_png(&p);
    let err = plots::four_panel(d.join("x.png"), "x", &r, &g, 0).unwrap_err();
    assert!(err.to_string().contains("x.png"));
    assert!(plots::four_panel(d.join("y.png"), "x", &[f64::NAN], &g, 10).is_err());
}

#[test]
fn compare_2d_side_by_side() {
    let d = out_dir("c2d");
    let r = cloud(20_000, [2000.0, 3.0], [30.0, 0.3], 5);
    let g = cloud(20_000, [2010.0, 3.0], [30.0, 0.33], 6);
    let p = d.join("c2d.png");
    plots::compare_2d(&p, &r, &g, ["m_Φ [GeV]", "m_ω [GeV]"]).unwrap();
    assert_good_png(&p);
}

#[test]
fn heat_map_with_marked_labels() {
    let d = out_dir("heat");
    let mut labels = Vec::new();
    let mut values = Vec::new();
    let mut marked = Vec::new();
    for i in 0..10 {
        for j in 0..10 {
            labels.push([1000.0 + 250.0 * i as f64, 0.5 + j as f64]);
            values.push(1.0 + 0.3 * (i as f64 - 4.5).powi(2) / 20.0 + 0.5 / (1.0 + j as f64));
            marked.push((i + j) % 7 == 3);
        }
    }
    values[17] = f64::NAN;
    let p = d.join("heat.png");
    let scale = plots::HeatScale { range: Some((0.0, 5.0)), mark: Some((1.2, "floor".into())) };
    plots::heat_map_named(&p, &labels, &values, "χ²/ndf", &marked, ["M_Φ [GeV]", "M_ω [GeV]"], &scale).unwrap();
    assert_good_png(&p);
    let p = d.join("heat_unmarked.png");
    plots::heat_map(&p, &labels, &values, "AUC", &[]).unwrap();
    assert_good_png(&p);
    let err = plots::heat_map(d.join("bad.png"), &labels, &values[..5], "x", &[]).unwrap_err();
    assert!(matches!(err, PlotError::InvalidInput { .. }));
}

#[test]
fn likelihood_scan_with_minimum() {
    let d = out_dir("scan");
    let xs: Vec<f64> = (0..41).map(|i| 1500.0 + 25.0 * i as f64).collect();
    let ys: Vec<f64> = xs.iter().map(|x| ((x - 2010.0) / 60.0).powi(2) / 2.0 + 100.0).collect();
    let p = d.join("scan.png");
    plots::likelihood_scan(&p, &xs, &ys, "M_Φ [GeV]", "−ln L", Some(2000.0)).unwrap();
    assert_good_png(&p);
    assert!(plots::likelihood_scan(d.join("e.png"), &xs, &ys[..3], "x", "y", None).is_err());
}

#[test]
fn unwritable_destinations_fail_cleanly() {
    let d = out_dir("bad");
    let r = gauss(1000, 0.0, 1.0, 9);
    // 1. Directory does not exist.
    let missing = Path::new("/nonexistent-fedhex-plots-dir/sub/plot.png");
    let err = plots::four_panel(missing, "x", &r, &r, 20).unwrap_err();
    assert!(matches!(err, PlotError::Write { .. }));
    assert!(err.to_string().contains("/nonexistent-fedhex-plots-dir/sub/plot.png"), "{err}");
    assert!(!missing.exists());
    // 2. "Directory" is a regular file.
    let file = d.join("not_a_dir");
    fs::write(&file, b"x").unwrap();
    let p = file.join("plot.png");
    let err = plots::loss_curves(&p, &[3.0, 2.0, 1.0], &[]).unwrap_err();
    assert!(err.to_string().contains("not_a_dir/plot.png"), "{err}");
    // 3. The destination is an existing directory: rendering succeeds, the
    //    final rename fails, and the temporary file is removed.
    let target = d.join("occupied.png");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("keep"), b"x").unwrap();
    let err = plots::likelihood_scan(&target, &[0.0, 1.0, 2.0], &[1.0, 0.0, 1.0], "x", "y", None).unwrap_err();
    assert!(err.to_string().contains("occupied.png"), "{err}");
    let mut names: Vec<String> =
        fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, vec!["not_a_dir".to_string(), "occupied.png".to_string()]);
    assert!(target.is_dir());
}

#[test]
fn existing_file_is_replaced_atomically() {
    let d = out_dir("replace");
    let p = d.join("loss.png");
    fs::write(&p, b"old content").unwrap();
    plots::loss_curves(&p, &[1.0, 0.5, 0.25, 0.2], &[1.1, 0.6, 0.3, 0.3]).unwrap();
    assert_good_png(&p);
}
