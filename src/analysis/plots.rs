//! PNG plots of training and evaluation results (`plotters`, bitmap backend).
//!
//! Text is rendered with the `ab_glyph` rasteriser from a bundled copy of
//! DejaVu Sans (`assets/fonts/DejaVuSans.ttf`, Bitstream Vera licence, free
//! redistribution; see `assets/fonts/LICENSE-DejaVu.txt`), compiled into the
//! binary with `include_bytes!`, so no fontconfig or system font is needed.
//! All figures are at least 1200 px wide with ≥ 18 px text.
//!
//! Every function renders into a temporary file `.<name>.<pid>.<n>.tmp.png`
//! in the destination directory and renames it onto the final path only
//! after the image was written completely, so a reader never sees a partial
//! file; on failure the temporary file is removed and a [`PlotError`] naming
//! the destination path is returned.  The output is always PNG, whatever the
//! extension of `path`.
//!
//! Non-finite values (NaN, ±∞) in the data are skipped, never plotted.
//!
//! Statistics drawn:
//! * [`four_panel`]: normalised histograms `nᵢ/(N Δx)` and the per-bin pulls
//!   `pᵢ = (gᵢ/M − rᵢ/N) / √(gᵢ/M² + rᵢ/N²)` (Poisson errors of both
//!   samples, `N`, `M` the sample sizes), drawn with unit error bars; the
//!   panel title quotes `Σ pᵢ² / (k − 1)` over the `k` non-empty bins.  The
//!   histogram range is the reference's 0.1 %–99.9 % quantile range padded by
//!   5 %; entries outside are counted in the title as overflow.
//! * [`compare_2d`]: the same pull, per 2-D bin, clipped to ±5.
//! * Weighted samples ([`four_panel_weighted`], [`compare_2d_weighted`]):
//!   `nᵢ` becomes the bin's sum of weights, `N` the sample's, and the pull's
//!   variance uses the sums of squared weights,
//!   `(gᵢ/M − rᵢ/N) / √(g₂ᵢ/M² + r₂ᵢ/N²)` (`g₂ = g` unweighted).
//! * [`likelihood_scan`]: the curve, its minimum and the level `min + 0.5`
//!   (the 1σ crossing when the curve is `−ln L`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::plot_backend::{AnyBackend, PlotFormat};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

/// The bundled font (DejaVu Sans), registered as `sans-serif`.
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FONT: &str = "sans-serif";

const TITLE_SIZE: u32 = 30;
const LABEL_SIZE: u32 = 24;
const TICK_SIZE: u32 = 20;
const CELL_TEXT_SIZE: u32 = 18;

const REF_COLOR: RGBColor = RGBColor(31, 119, 180);
const GEN_COLOR: RGBColor = RGBColor(255, 127, 14);
const MARK_COLOR: RGBColor = RGBColor(214, 39, 40);
const GREY: RGBColor = RGBColor(140, 140, 140);

/// At most this many events per label are drawn by [`grid_overview`]
/// (every k-th event, deterministic), to keep the scatter legible and fast.
pub const MAX_SCATTER_PER_LABEL: usize = 2000;

/// Errors of the plotting functions; each names the destination path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlotError {
    /// The image could not be drawn, encoded or moved to its destination.
    #[error("cannot write plot {path}: {message}")]
    Write {
        /// Destination path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The input data cannot be plotted.
    #[error("cannot plot {path}: {message}")]
    InvalidInput {
        /// Destination path.
        path: PathBuf,
        /// What is wrong with the input.
        message: String,
    },
}

/// Densities, step outline, colour and legend name of one histogram.
type HistSeries<'a> = (&'a [f64], &'a [(f64, f64)], RGBColor, &'a str);

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn invalid(path: &Path, message: impl Into<String>) -> PlotError {
    PlotError::InvalidInput { path: path.to_path_buf(), message: message.into() }
}

fn ensure_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES)
                .map_err(|_| "the bundled DejaVu Sans font could not be parsed".to_string())
        })
        .clone()
}

fn temp_path(path: &Path) -> Option<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name()?.to_string_lossy();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let ext = PlotFormat::of_path(path).ext();
    Some(path.with_file_name(format!(".{name}.{}.{n}.tmp.{ext}", std::process::id())))
}

/// Renders with `draw` into a temporary file and renames it onto `path`:
/// SVG when `path` ends in `.svg`, else PNG.
fn render<F>(path: &Path, size: (u32, u32), draw: F) -> Result<(), PlotError>
where
    F: FnOnce(&DrawingArea<AnyBackend, Shift>) -> DrawResult,
{
    let write_err = |message: String| PlotError::Write { path: path.to_path_buf(), message };
    ensure_font().map_err(write_err)?;
    let tmp = temp_path(path).ok_or_else(|| invalid(path, "path has no file name"))?;
    let result = (|| -> DrawResult {
        let root = AnyBackend::new(&tmp, size, PlotFormat::of_path(path)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
        Ok(())
    })();
    // The backend is dropped here; on error its drop may still have written
    // the temporary file, which is removed.
    match result {
        Ok(()) => fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            write_err(format!("rename of the temporary file failed: {e}"))
        }),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(write_err(e.to_string()))
        }
    }
}

// ---------------------------------------------------------------------------
// Small numeric helpers
// ---------------------------------------------------------------------------

fn sorted_finite(v: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut s: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
    s.sort_unstable_by(f64::total_cmp);
    s
}

fn quantile(sorted: &[f64], p: f64) -> f64 {
    let h = (sorted.len().saturating_sub(1)) as f64 * p.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Pads `[lo, hi]` by `frac` of its width; a degenerate range gets a unit width.
fn pad(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    if hi > lo {
        let w = hi - lo;
        (lo - frac * w, hi + frac * w)
    } else {
        let h = if lo != 0.0 { 0.05 * lo.abs() } else { 0.5 };
        (lo - h, hi + h)
    }
}

/// The x range of the [`four_panel`] histograms for sorted finite reference values.
fn panel_range(sorted_reference: &[f64]) -> (f64, f64) {
    pad(quantile(sorted_reference, 0.001), quantile(sorted_reference, 0.999), 0.05)
}

/// The x range [`four_panel`] bins on: the reference sample's 0.1 % and
/// 99.9 % quantiles widened by 5 % of their distance (`None` without a finite value).
pub fn four_panel_range(reference: &[f64]) -> Option<(f64, f64)> {
    let rs = sorted_finite(reference.iter().copied());
    (!rs.is_empty()).then(|| panel_range(&rs))
}

/// Histogram of the finite values in `[lo, hi]` (`hi` goes to the last bin).
fn histogram(values: &[f64], lo: f64, hi: f64, bins: usize) -> (Vec<f64>, usize) {
    let mut counts = vec![0.0; bins];
    let mut outside = 0;
    let width = (hi - lo) / bins as f64;
    for &v in values.iter().filter(|v| v.is_finite()) {
        if v < lo || v > hi {
            outside += 1;
            continue;
        }
        let i = (((v - lo) / width) as usize).min(bins - 1);
        counts[i] += 1.0;
    }
    (counts, outside)
}

/// Pull of (weighted) bins `(g/M − r/N)/√(g₂/M² + r₂/N²)` with the sums of
/// squared weights `r₂`, `g₂` (the counts for unweighted bins) and the
/// totals `N`, `M` (sums of weights); `None` where the variance is zero.
fn pull_weighted(r: f64, r2: f64, g: f64, g2: f64, n: f64, m: f64) -> Option<f64> {
    let var = g2 / (m * m) + r2 / (n * n);
    (var > 0.0).then(|| (g / m - r / n) / var.sqrt())
}

/// Per-bin `Σw`, `Σw²` over `[lo, hi]` (as [`histogram`]), the values
/// outside and the total weight of the finite values; unweighted values
/// count 1 (and then the numbers are [`histogram`]'s).
fn histogram_weighted(
    values: &[f64],
    weights: Option<&[f64]>,
    lo: f64,
    hi: f64,
    bins: usize,
) -> (Vec<f64>, Vec<f64>, usize, f64) {
    let Some(w) = weights else {
        let (c, out) = histogram(values, lo, hi, bins);
        let n = values.iter().filter(|v| v.is_finite()).count() as f64;
        return (c.clone(), c, out, n);
    };
    let (mut c, mut c2) = (vec![0.0; bins], vec![0.0; bins]);
    let (mut outside, mut total) = (0, 0.0);
    let width = (hi - lo) / bins as f64;
    for (&v, &wi) in values.iter().zip(w).filter(|(v, _)| v.is_finite()) {
        total += wi;
        if v < lo || v > hi {
            outside += 1;
            continue;
        }
        let i = (((v - lo) / width) as usize).min(bins - 1);
        c[i] += wi;
        c2[i] += wi * wi;
    }
    (c, c2, outside, total)
}

/// `weights` (when given) has one finite entry per value; the sum of the
/// weights of the finite values is positive.
fn check_plot_weights(path: &Path, what: &str, values: &[f64], weights: Option<&[f64]>) -> Result<(), PlotError> {
    let Some(w) = weights else { return Ok(()) };
    if w.len() != values.len() {
        return Err(invalid(path, format!("{what}: {} weights for {} values", w.len(), values.len())));
    }
    if w.iter().any(|v| !v.is_finite()) {
        return Err(invalid(path, format!("{what}: non-finite weight")));
    }
    Ok(())
}

/// Sample caption: `N = 400` or, weighted, `N = 400, Σw = 12.3`.
fn sample_size_text(n: usize, weights: Option<f64>) -> String {
    match weights {
        None => format!("N = {n}"),
        Some(sw) => format!("N = {n}, Σw = {}", fmt_num(sw)),
    }
}

/// Three significant digits, scientific notation outside `[1e-3, 1e5)`.
fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.2e}");
    }
    let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
    format!("{v:.decimals$}")
}

/// Tick labels of an axis spanning `lo..hi`: enough decimals that ticks about
/// a tenth of the range apart print differently (5.115, 5.120, 5.125 rather
/// than 5.12, 5.12, 5.13); scientific notation for very large or small values.
fn tick_formatter(lo: f64, hi: f64) -> impl Fn(&f64) -> String {
    let span = (hi - lo).abs();
    let big = lo.abs().max(hi.abs());
    let decimals = if span > 0.0 && span.is_finite() {
        (1 - (span / 10.0).log10().floor() as i32).clamp(0, 9) as usize
    } else {
        3
    };
    move |v: &f64| {
        if !v.is_finite() {
            "n/a".into()
        } else if big >= 1e5 || (big > 0.0 && big < 1e-3) {
            format!("{v:.2e}")
        } else {
            let s = format!("{v:.decimals$}");
            // Ticks differ in their last kept digit; drop zeros only when every tick could.
            if s.parse::<f64>().is_ok_and(|x| x == 0.0) {
                "0".into()
            } else {
                s
            }
        }
    }
}

/// A single value in full (six significant digits, trailing zeros dropped):
/// legends such as "true value 5.125".
fn fmt_precise(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e6).contains(&a) {
        return format!("{v:.5e}");
    }
    let decimals = if a == 0.0 { 0 } else { (5 - a.log10().floor() as i32).max(0) as usize };
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Viridis colour map (piecewise-linear through 6 anchors), `t ∈ [0, 1]`.
fn viridis(t: f64) -> RGBColor {
    const A: [(f64, f64, f64); 6] = [
        (68.0, 1.0, 84.0),
        (65.0, 68.0, 135.0),
        (42.0, 120.0, 142.0),
        (34.0, 168.0, 132.0),
        (122.0, 209.0, 81.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let x = t * (A.len() - 1) as f64;
    let i = (x.floor() as usize).min(A.len() - 2);
    let f = x - i as f64;
    let c = |a: f64, b: f64| (a + f * (b - a)).round() as u8;
    RGBColor(c(A[i].0, A[i + 1].0), c(A[i].1, A[i + 1].1), c(A[i].2, A[i + 1].2))
}

/// Diverging blue–white–red map for `t ∈ [−1, 1]`.
fn diverging(t: f64) -> RGBColor {
    let t = if t.is_finite() { t.clamp(-1.0, 1.0) } else { 0.0 };
    let mix = |a: f64, b: f64, f: f64| (a + f * (b - a)).round() as u8;
    if t < 0.0 {
        let f = -t;
        RGBColor(mix(255.0, 33.0, f), mix(255.0, 102.0, f), mix(255.0, 172.0, f))
    } else {
        RGBColor(mix(255.0, 178.0, t), mix(255.0, 24.0, t), mix(255.0, 43.0, t))
    }
}

fn is_dark(c: RGBColor) -> bool {
    0.299 * f64::from(c.0) + 0.587 * f64::from(c.1) + 0.114 * f64::from(c.2) < 128.0
}

fn font(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().into()
}

// ---------------------------------------------------------------------------
// Loss curves
// ---------------------------------------------------------------------------

/// Training and validation loss per epoch on a logarithmic y axis.
///
/// If any loss is negative (e.g. a flow's negative log-likelihood), `|loss|`
/// is plotted, the title and legend say so, and the epochs with a negative
/// loss are marked with triangles.  Zero and non-finite losses are skipped.
/// `val` may be empty.
pub fn loss_curves(path: impl AsRef<Path>, train: &[f64], val: &[f64]) -> Result<(), PlotError> {
    let path = path.as_ref();
    let any_negative = train.iter().chain(val).any(|&v| v.is_finite() && v < 0.0);
    let points = |v: &[f64]| -> Vec<(f64, f64, bool)> {
        v.iter()
            .enumerate()
            .filter(|(_, x)| x.is_finite() && **x != 0.0)
            .map(|(i, &x)| ((i + 1) as f64, x.abs(), x < 0.0))
            .collect()
    };
    let (pt, pv) = (points(train), points(val));
    let abs_vals = sorted_finite(pt.iter().chain(&pv).map(|p| p.1));
    let (Some(&ymin), Some(&ymax)) = (abs_vals.first(), abs_vals.last()) else {
        return Err(invalid(path, "no finite, non-zero loss values"));
    };
    let n_epochs = train.len().max(val.len()) as f64;
    let (ylo, yhi) = (ymin / 1.5, ymax * 1.5);
    let (title, suffix) = if any_negative {
        ("Loss curves: |loss| shown (some losses < 0, marked ▲)", " |loss|")
    } else {
        ("Loss curves", " loss")
    };
    render(path, (1400, 900), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, font(TITLE_SIZE))
            .margin(20)
            .x_label_area_size(70)
            .y_label_area_size(110)
            .build_cartesian_2d(0.5..n_epochs + 0.5, (ylo..yhi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(if any_negative { "|loss|" } else { "loss" })
            .axis_desc_style(font(LABEL_SIZE))
            .label_style(font(TICK_SIZE))
            .x_label_formatter(&|v| {
                if (v - v.round()).abs() < 1e-9 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                }
            })
            .y_labels(8)
            .y_label_formatter(&|v| fmt_num(*v))
            .draw()?;
        for (pts, name, color) in [(&pt, "train", REF_COLOR), (&pv, "validation", GEN_COLOR)] {
            if pts.is_empty() {
                continue;
            }
            let style = ShapeStyle::from(&color).stroke_width(3);
            chart
                .draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), style))?
                .label(format!("{name}{suffix}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 30, y)], style));
            chart
                .draw_series(pts.iter().filter(|p| p.2).map(|p| TriangleMarker::new((p.0, p.1), 7, color.filled())))?;
        }
        if any_negative {
            chart
                .draw_series(std::iter::empty::<TriangleMarker<(f64, f64), i32>>())?
                .label("loss < 0 (|loss| shown)")
                .legend(|(x, y)| TriangleMarker::new((x + 15, y), 7, BLACK.filled()));
        }
        chart
            .configure_series_labels()
            .label_font(font(TICK_SIZE))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .legend_area_size(45)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Grid overview
// ---------------------------------------------------------------------------

/// Events of one label: the label `[l₀, l₁]` and its events `[x₀, x₁]`.
pub type LabelledEvents = ([f64; 2], Vec<[f64; 2]>);

/// All training labels' events in one 2-D scatter with the generated events
/// overlaid (axis names "feature 0", "feature 1"); see [`grid_overview_named`].
pub fn grid_overview(
    path: impl AsRef<Path>,
    training: &[LabelledEvents],
    generated: &[LabelledEvents],
) -> Result<(), PlotError> {
    grid_overview_named(path, training, generated, ["feature 0", "feature 1"])
}

/// Scatter of all training events (blue) and generated events (orange) in
/// the feature plane, with the training labels (black ×) and the generated
/// labels (red ▲) marked, assuming labels live in the feature space (as the
/// true masses do for Φ → γω).  At most [`MAX_SCATTER_PER_LABEL`] events per
/// label are drawn.  The view is the 0.1 %–99.9 % quantile range of all
/// events, extended to contain every label.
pub fn grid_overview_named(
    path: impl AsRef<Path>,
    training: &[LabelledEvents],
    generated: &[LabelledEvents],
    names: [&str; 2],
) -> Result<(), PlotError> {
    grid_overview_split(path, training, &[], generated, names, "training")
}

/// Like [`grid_overview_named`] for a report: reference events at the
/// training labels (blue, black ×) and at held-out labels (green, green ◆)
/// are told apart, and `what` names the reference sample in the legend
/// (`"reference"`: "reference events, training labels").
pub fn grid_overview_split(
    path: impl AsRef<Path>,
    training: &[LabelledEvents],
    held_out: &[LabelledEvents],
    generated: &[LabelledEvents],
    names: [&str; 2],
    what: &str,
) -> Result<(), PlotError> {
    let path = path.as_ref();
    let finite = |p: &[f64; 2]| p[0].is_finite() && p[1].is_finite();
    let thin = |ev: &[[f64; 2]]| -> Vec<(f64, f64)> {
        let step = ev.len().div_ceil(MAX_SCATTER_PER_LABEL).max(1);
        ev.iter().step_by(step).filter(|p| finite(p)).map(|p| (p[0], p[1])).collect()
    };
    let tr: Vec<(f64, f64)> = training.iter().flat_map(|(_, e)| thin(e)).collect();
    let ho: Vec<(f64, f64)> = held_out.iter().flat_map(|(_, e)| thin(e)).collect();
    let ge: Vec<(f64, f64)> = generated.iter().flat_map(|(_, e)| thin(e)).collect();
    if tr.is_empty() && ho.is_empty() && ge.is_empty() {
        return Err(invalid(path, "no finite events to plot"));
    }
    let label_points = |g: &[LabelledEvents]| -> Vec<(f64, f64)> {
        g.iter().filter(|(l, _)| finite(l)).map(|(l, _)| (l[0], l[1])).collect()
    };
    let labels_tr = label_points(training);
    let labels_ho = label_points(held_out);
    let labels_ge = label_points(generated);
    let axis_range = |sel: fn(&(f64, f64)) -> f64| {
        let s = sorted_finite(tr.iter().chain(&ho).chain(&ge).map(sel));
        let mut lo = quantile(&s, 0.001);
        let mut hi = quantile(&s, 0.999);
        for l in labels_tr.iter().chain(&labels_ho).chain(&labels_ge) {
            lo = lo.min(sel(l));
            hi = hi.max(sel(l));
        }
        pad(lo, hi, 0.04)
    };
    let (x0, x1) = axis_range(|p| p.0);
    let (y0, y1) = axis_range(|p| p.1);
    let inside = move |p: &&(f64, f64)| p.0 >= x0 && p.0 <= x1 && p.1 >= y0 && p.1 <= y1;
    let n_tr: usize = training.iter().chain(held_out).map(|(_, e)| e.len()).sum();
    let n_ge: usize = generated.iter().map(|(_, e)| e.len()).sum();
    let mut title = what.to_string();
    if let Some(c) = title.get(..1) {
        title = c.to_uppercase() + &title[1..];
    }
    let counts = if held_out.is_empty() {
        format!("{} labels", training.len())
    } else {
        format!("{} training + {} held-out labels", training.len(), held_out.len())
    };
    let held_colour = RGBColor(44, 160, 44);
    render(path, (1400, 1100), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("{title} ({counts}, {n_tr} events) vs generated ({} labels, {n_ge} events)", generated.len()),
                font(TITLE_SIZE),
            )
            .margin(20)
            .x_label_area_size(70)
            .y_label_area_size(100)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(names[0])
            .y_desc(names[1])
            .axis_desc_style(font(LABEL_SIZE))
            .label_style(font(TICK_SIZE))
            .x_label_formatter(&|v| fmt_num(*v))
            .y_label_formatter(&|v| fmt_num(*v))
            .draw()?;
        let tr_legend =
            if what == "training" { "training events".to_string() } else { format!("{what} events, training labels") };
        if !tr.is_empty() {
            chart
                .draw_series(tr.iter().filter(inside).map(|&p| Circle::new(p, 2, REF_COLOR.mix(0.35).filled())))?
                .label(tr_legend)
                .legend(|(x, y)| Circle::new((x + 15, y), 6, REF_COLOR.filled()));
        }
        if !ho.is_empty() {
            chart
                .draw_series(ho.iter().filter(inside).map(|&p| Circle::new(p, 2, held_colour.mix(0.45).filled())))?
                .label(format!("{what} events, held-out labels"))
                .legend(move |(x, y)| Circle::new((x + 15, y), 6, held_colour.filled()));
        }
        chart
            .draw_series(ge.iter().filter(inside).map(|&p| Circle::new(p, 2, GEN_COLOR.mix(0.35).filled())))?
            .label("generated events")
            .legend(|(x, y)| Circle::new((x + 15, y), 6, GEN_COLOR.filled()));
        if !labels_tr.is_empty() {
            chart
                .draw_series(labels_tr.iter().map(|&p| Cross::new(p, 8, BLACK.stroke_width(3))))?
                .label("training labels")
                .legend(|(x, y)| Cross::new((x + 15, y), 8, BLACK.stroke_width(3)));
        }
        if !labels_ho.is_empty() {
            chart
                .draw_series(labels_ho.iter().map(|&p| Cross::new(p, 10, held_colour.stroke_width(4))))?
                .label("held-out labels")
                .legend(move |(x, y)| Cross::new((x + 15, y), 10, held_colour.stroke_width(4)));
        }
        if !labels_ge.is_empty() {
            chart
                .draw_series(labels_ge.iter().map(|&p| TriangleMarker::new(p, 9, MARK_COLOR.filled())))?
                .label("generated labels")
                .legend(|(x, y)| TriangleMarker::new((x + 15, y), 9, MARK_COLOR.filled()));
        }
        chart
            .configure_series_labels()
            .label_font(font(TICK_SIZE))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .legend_area_size(45)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Four-panel 1-D comparison
// ---------------------------------------------------------------------------

/// Reference histogram, generated histogram, both overlaid, and the binned
/// pulls `(gen − ref)/σ` with unit error bars (see the module docs), for one
/// feature.  `bins ≥ 1`; both samples need a finite value.
pub fn four_panel(
    path: impl AsRef<Path>,
    feature_name: &str,
    reference: &[f64],
    generated: &[f64],
    bins: usize,
) -> Result<(), PlotError> {
    four_panel_weighted(path, feature_name, reference, None, generated, None, bins)
}

/// [`four_panel`] with per-value weights of either sample (`None`:
/// unweighted, and then exactly [`four_panel`]): weighted histograms
/// `Σw/(W Δx)` and the pulls with the sums of squared weights,
/// `(g/M − r/N)/√(g₂/M² + r₂/N²)` (`N`, `M` the sums of weights). The x range
/// is the reference values' (unweighted) quantile range, the span of the
/// events. Each weighted sample's weights must sum to a positive number.
pub fn four_panel_weighted(
    path: impl AsRef<Path>,
    feature_name: &str,
    reference: &[f64],
    reference_weights: Option<&[f64]>,
    generated: &[f64],
    generated_weights: Option<&[f64]>,
    bins: usize,
) -> Result<(), PlotError> {
    let path = path.as_ref();
    if bins == 0 {
        return Err(invalid(path, "bins must be ≥ 1"));
    }
    check_plot_weights(path, "reference", reference, reference_weights)?;
    check_plot_weights(path, "generated", generated, generated_weights)?;
    let rs = sorted_finite(reference.iter().copied());
    let gs = sorted_finite(generated.iter().copied());
    if rs.is_empty() || gs.is_empty() {
        return Err(invalid(path, "both samples need at least one finite value"));
    }
    let (lo, hi) = panel_range(&rs);
    let (rc, rc2, r_out, n) = histogram_weighted(reference, reference_weights, lo, hi, bins);
    let (gc, gc2, g_out, m) = histogram_weighted(generated, generated_weights, lo, hi, bins);
    if !(n > 0.0 && m > 0.0) {
        return Err(invalid(
            path,
            format!("the weights sum to {n} (reference) and {m} (generated); both must be positive"),
        ));
    }
    let w = (hi - lo) / bins as f64;
    let edge = |i: usize| lo + w * i as f64;
    let rd: Vec<f64> = rc.iter().map(|c| c / (n * w)).collect();
    let gd: Vec<f64> = gc.iter().map(|c| c / (m * w)).collect();
    let ymax = rd.iter().chain(&gd).fold(0.0f64, |a, &b| a.max(b)).max(1e-300) * 1.15;
    let pulls: Vec<(f64, f64)> = (0..bins)
        .filter_map(|i| pull_weighted(rc[i], rc2[i], gc[i], gc2[i], n, m).map(|p| (edge(i) + 0.5 * w, p)))
        .collect();
    let ndf = pulls.len().saturating_sub(1).max(1);
    let chi2_ndf = pulls.iter().map(|p| p.1 * p.1).sum::<f64>() / ndf as f64;
    let pmax = pulls.iter().fold(3.0f64, |a, p| a.max(p.1.abs() + 1.5)).min(50.0);
    let step = |d: &[f64]| -> Vec<(f64, f64)> {
        let mut v = vec![(lo, 0.0)];
        for (i, &y) in d.iter().enumerate() {
            v.push((edge(i), y));
            v.push((edge(i + 1), y));
        }
        v.push((hi, 0.0));
        v
    };
    let (rstep, gstep) = (step(&rd), step(&gd));
    render(path, (1600, 1200), |root| {
        let area = root.titled(feature_name, font(TITLE_SIZE + 4))?;
        let panels = area.split_evenly((2, 2));
        let hist_panel =
            |a: &DrawingArea<AnyBackend, Shift>, title: String, which: &[HistSeries]| -> DrawResult {
                let mut c = ChartBuilder::on(a)
                    .caption(title, font(LABEL_SIZE))
                    .margin(15)
                    .x_label_area_size(60)
                    .y_label_area_size(90)
                    .build_cartesian_2d(lo..hi, 0.0..ymax)?;
                c.configure_mesh()
                    .x_desc(feature_name)
                    .y_desc("density")
                    .axis_desc_style(font(TICK_SIZE + 2))
                    .label_style(font(TICK_SIZE))
                    .x_label_formatter(&|v| fmt_num(*v))
                    .y_label_formatter(&|v| fmt_num(*v))
                    .draw()?;
                let overlay = which.len() > 1;
                for (k, &(d, outline, color, name)) in which.iter().enumerate() {
                    if !overlay || k == 0 {
                        c.draw_series(d.iter().enumerate().map(|(i, &y)| {
                            Rectangle::new([(edge(i), 0.0), (edge(i + 1), y)], color.mix(0.45).filled())
                        }))?;
                    }
                    let style = color.stroke_width(if overlay && k > 0 { 3 } else { 2 });
                    c.draw_series(LineSeries::new(outline.iter().copied(), style))?
                        .label(name)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 30, y)], style));
                }
                if overlay {
                    c.configure_series_labels()
                        .label_font(font(TICK_SIZE))
                        .background_style(WHITE.mix(0.85))
                        .border_style(BLACK)
                        .legend_area_size(45)
                        .position(SeriesLabelPosition::UpperRight)
                        .draw()?;
                }
                Ok(())
            };
        hist_panel(
            &panels[0],
            format!("reference ({}, {} outside)", sample_size_text(rs.len(), reference_weights.map(|_| n)), r_out),
            &[(&rd, &rstep, REF_COLOR, "reference")],
        )?;
        hist_panel(
            &panels[1],
            format!("generated ({}, {} outside)", sample_size_text(gs.len(), generated_weights.map(|_| m)), g_out),
            &[(&gd, &gstep, GEN_COLOR, "generated")],
        )?;
        hist_panel(
            &panels[2],
            "overlay".to_string(),
            &[(&rd, &rstep, REF_COLOR, "reference"), (&gd, &gstep, GEN_COLOR, "generated")],
        )?;
        let mut c = ChartBuilder::on(&panels[3])
            .caption(format!("(gen − ref)/σ per bin, Σ pull²/ndf = {}", fmt_num(chi2_ndf)), font(LABEL_SIZE))
            .margin(15)
            .x_label_area_size(60)
            .y_label_area_size(90)
            .build_cartesian_2d(lo..hi, -pmax..pmax)?;
        c.configure_mesh()
            .x_desc(feature_name)
            .y_desc("pull")
            .axis_desc_style(font(TICK_SIZE + 2))
            .label_style(font(TICK_SIZE))
            .x_label_formatter(&|v| fmt_num(*v))
            .y_label_formatter(&|v| fmt_num(*v))
            .draw()?;
        c.draw_series(LineSeries::new([(lo, 0.0), (hi, 0.0)], BLACK.stroke_width(2)))?;
        for level in [-2.0, 2.0] {
            c.draw_series(DashedLineSeries::new([(lo, level), (hi, level)], 10, 6, GREY.stroke_width(2)))?;
        }
        c.draw_series(pulls.iter().map(|&(x, p)| {
            PathElement::new(vec![(x, (p - 1.0).max(-pmax)), (x, (p + 1.0).min(pmax))], BLACK.stroke_width(2))
        }))?;
        c.draw_series(pulls.iter().map(|&(x, p)| Circle::new((x, p.clamp(-pmax, pmax)), 4, BLACK.filled())))?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// 2-D comparison
// ---------------------------------------------------------------------------

const BINS_2D: usize = 50;

/// Side-by-side 2-D histograms of reference and generated events (common
/// binning and colour scale, viridis, empty bins white) and the per-bin pull
/// map `(gen − ref)/σ` (blue–white–red, clipped to ±5).  The view is the
/// reference's 0.5 %–99.5 % quantile range per axis, padded by 5 %.
pub fn compare_2d(
    path: impl AsRef<Path>,
    reference: &[[f64; 2]],
    generated: &[[f64; 2]],
    names: [&str; 2],
) -> Result<(), PlotError> {
    compare_2d_weighted(path, reference, None, generated, None, names)
}

/// [`compare_2d`] with per-event weights of either sample (`None`:
/// unweighted, and then exactly [`compare_2d`]): cells of `Σw/W`, pulls with
/// the sums of squared weights (as [`four_panel_weighted`]); cells with
/// `Σw ≤ 0` are left white.
pub fn compare_2d_weighted(
    path: impl AsRef<Path>,
    reference: &[[f64; 2]],
    reference_weights: Option<&[f64]>,
    generated: &[[f64; 2]],
    generated_weights: Option<&[f64]>,
    names: [&str; 2],
) -> Result<(), PlotError> {
    let path = path.as_ref();
    for (what, v, w) in [("reference", reference, reference_weights), ("generated", generated, generated_weights)] {
        if let Some(w) = w {
            if w.len() != v.len() || w.iter().any(|x| !x.is_finite()) {
                return Err(invalid(
                    path,
                    format!("{what}: {} weights for {} events, all finite needed", w.len(), v.len()),
                ));
            }
        }
    }
    let finite_w = |v: &[[f64; 2]], w: Option<&[f64]>| -> (Vec<[f64; 2]>, Option<Vec<f64>>) {
        let keep = |p: &[f64; 2]| p[0].is_finite() && p[1].is_finite();
        (
            v.iter().filter(|p| keep(p)).copied().collect(),
            w.map(|w| v.iter().zip(w).filter(|(p, _)| keep(p)).map(|(_, &x)| x).collect()),
        )
    };
    let ((r, rw), (g, gw)) = (finite_w(reference, reference_weights), finite_w(generated, generated_weights));
    if r.is_empty() || g.is_empty() {
        return Err(invalid(path, "both samples need at least one finite event"));
    }
    let range = |c: usize| {
        let s = sorted_finite(r.iter().map(|p| p[c]));
        pad(quantile(&s, 0.005), quantile(&s, 0.995), 0.05)
    };
    let ((x0, x1), (y0, y1)) = (range(0), range(1));
    let (wx, wy) = ((x1 - x0) / BINS_2D as f64, (y1 - y0) / BINS_2D as f64);
    // Per cell Σw and Σw² (unweighted: the counts twice).
    let hist2 = |v: &[[f64; 2]], w: Option<&[f64]>| -> (Vec<f64>, Vec<f64>) {
        let mut h = vec![0.0; BINS_2D * BINS_2D];
        let mut h2 = vec![0.0; BINS_2D * BINS_2D];
        for (k, p) in v.iter().enumerate() {
            if p[0] < x0 || p[0] > x1 || p[1] < y0 || p[1] > y1 {
                continue;
            }
            let i = (((p[0] - x0) / wx) as usize).min(BINS_2D - 1);
            let j = (((p[1] - y0) / wy) as usize).min(BINS_2D - 1);
            let wk = w.map_or(1.0, |w| w[k]);
            h[i * BINS_2D + j] += wk;
            h2[i * BINS_2D + j] += wk * wk;
        }
        (h, h2)
    };
    let ((hr, hr2), (hg, hg2)) = (hist2(&r, rw.as_deref()), hist2(&g, gw.as_deref()));
    let total = |v: &[[f64; 2]], w: &Option<Vec<f64>>| w.as_ref().map_or(v.len() as f64, |w| w.iter().sum());
    let (n, m) = (total(&r, &rw), total(&g, &gw));
    if !(n > 0.0 && m > 0.0) {
        return Err(invalid(
            path,
            format!("the weights sum to {n} (reference) and {m} (generated); both must be positive"),
        ));
    }
    let dmax = hr.iter().map(|c| c / n).chain(hg.iter().map(|c| c / m)).fold(0.0f64, f64::max).max(1e-300);
    let cell = |k: usize| {
        let (i, j) = (k / BINS_2D, k % BINS_2D);
        [(x0 + wx * i as f64, y0 + wy * j as f64), (x0 + wx * (i + 1) as f64, y0 + wy * (j + 1) as f64)]
    };
    render(path, (1950, 760), |root| {
        let panels = root.split_evenly((1, 3));
        let titles = [
            format!("reference ({})", sample_size_text(r.len(), rw.as_ref().map(|_| n))),
            format!("generated ({})", sample_size_text(g.len(), gw.as_ref().map(|_| m))),
            "pull (gen − ref)/σ, clipped ±5".to_string(),
        ];
        for (k, panel) in panels.iter().enumerate() {
            let mut c = ChartBuilder::on(panel)
                .caption(&titles[k], font(LABEL_SIZE))
                .margin(15)
                .x_label_area_size(65)
                .y_label_area_size(90)
                .build_cartesian_2d(x0..x1, y0..y1)?;
            c.configure_mesh()
                .disable_mesh()
                .x_desc(names[0])
                .y_desc(names[1])
                .axis_desc_style(font(TICK_SIZE + 2))
                .label_style(font(TICK_SIZE))
                .x_labels(6)
                .x_label_formatter(&|v| fmt_num(*v))
                .y_label_formatter(&|v| fmt_num(*v))
                .draw()?;
            let colors: Vec<Option<RGBColor>> = match k {
                0 => hr.iter().map(|&c| (c > 0.0).then(|| viridis(c / n / dmax))).collect(),
                1 => hg.iter().map(|&c| (c > 0.0).then(|| viridis(c / m / dmax))).collect(),
                _ => (0..hr.len())
                    .map(|k| pull_weighted(hr[k], hr2[k], hg[k], hg2[k], n, m).map(|p| diverging(p / 5.0)))
                    .collect(),
            };
            c.draw_series(
                colors
                    .iter()
                    .enumerate()
                    .filter_map(|(idx, col)| col.map(|col| Rectangle::new(cell(idx), col.filled()))),
            )?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Heat map over the label grid
// ---------------------------------------------------------------------------

/// Metric over the label grid (axes "label 0", "label 1"); see [`heat_map_named`].
pub fn heat_map(
    path: impl AsRef<Path>,
    labels: &[[f64; 2]],
    values: &[f64],
    metric_name: &str,
    marked: &[bool],
) -> Result<(), PlotError> {
    heat_map_named(path, labels, values, metric_name, marked, ["label 0", "label 1"], &HeatScale::default())
}

/// Cell edges for ascending unique centres: midpoints, outer cells symmetric.
fn cell_edges(centres: &[f64]) -> Vec<f64> {
    if centres.len() == 1 {
        let (lo, hi) = pad(centres[0], centres[0], 0.0);
        return vec![lo, hi];
    }
    let mut e = Vec::with_capacity(centres.len() + 1);
    e.push(centres[0] - 0.5 * (centres[1] - centres[0]));
    for w in centres.windows(2) {
        e.push(0.5 * (w[0] + w[1]));
    }
    let k = centres.len();
    e.push(centres[k - 1] + 0.5 * (centres[k - 1] - centres[k - 2]));
    e
}

fn unique_sorted(v: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut s = sorted_finite(v);
    let scale = s.iter().fold(0.0f64, |a, b| a.max(b.abs())).max(1e-300);
    s.dedup_by(|a, b| (*a - *b).abs() <= 1e-9 * scale);
    s
}

/// The colour scale of a heat map: fixed ends (so two reports compare at a
/// glance; values beyond them take the end colours and still print exactly in
/// their cells) and, optionally, a reference level marked on the colour bar
/// (the statistical floor).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeatScale {
    /// Colour-scale ends; `None`: the range of the values.
    pub range: Option<(f64, f64)>,
    /// A level drawn as a line across the colour bar, with its name.
    pub mark: Option<(f64, String)>,
}

/// A metric over the label grid: one coloured cell per label (viridis,
/// with the value printed in it; NaN values grey "n/a"), held-out labels
/// (`marked[i] == true`) framed in red, and a colour bar.  `marked` may be
/// empty (nothing marked); otherwise it must have one entry per label, as
/// `values` must.  Cells are centred on the distinct label coordinates.
/// `scale` fixes the colour scale ([`HeatScale`]).
pub fn heat_map_named(
    path: impl AsRef<Path>,
    labels: &[[f64; 2]],
    values: &[f64],
    metric_name: &str,
    marked: &[bool],
    names: [&str; 2],
    scale: &HeatScale,
) -> Result<(), PlotError> {
    let path = path.as_ref();
    if labels.len() != values.len() || !(marked.is_empty() || marked.len() == labels.len()) {
        return Err(invalid(
            path,
            format!("{} labels, {} values and {} marks do not match", labels.len(), values.len(), marked.len()),
        ));
    }
    let ok: Vec<usize> = (0..labels.len()).filter(|&i| labels[i][0].is_finite() && labels[i][1].is_finite()).collect();
    if ok.is_empty() {
        return Err(invalid(path, "no finite labels"));
    }
    let xs = unique_sorted(ok.iter().map(|&i| labels[i][0]));
    let ys = unique_sorted(ok.iter().map(|&i| labels[i][1]));
    let (ex, ey) = (cell_edges(&xs), cell_edges(&ys));
    let locate = |centres: &[f64], v: f64| -> usize {
        let mut best = 0;
        for (k, c) in centres.iter().enumerate() {
            if (c - v).abs() < (centres[best] - v).abs() {
                best = k;
            }
        }
        best
    };
    let vs = sorted_finite(ok.iter().map(|&i| values[i]));
    let (vmin, vmax) = match (scale.range, vs.first(), vs.last()) {
        (Some((a, b)), _, _) if b > a => (a, b),
        (_, Some(&a), Some(&b)) if b > a => (a, b),
        (_, Some(&a), Some(_)) => pad(a, a, 0.0),
        _ => (0.0, 1.0),
    };
    let any_marked = marked.iter().any(|&b| b);
    render(path, (1500, 1100), |root| {
        let mut notes = Vec::new();
        if any_marked {
            notes.push("red frame: held out".to_string());
        }
        if let Some((level, name)) = scale.mark.as_ref().filter(|(l, _)| l.is_finite()) {
            notes.push(format!("red line on the scale: {name} {}", fmt_num(*level)));
        }
        let title = if notes.is_empty() {
            format!("{metric_name} over the label grid")
        } else {
            format!("{metric_name} over the label grid ({})", notes.join("; "))
        };
        let area = root.titled(&title, font(TITLE_SIZE))?;
        let (main, bar) = area.split_horizontally(1290);
        let mut c = ChartBuilder::on(&main)
            .margin(15)
            .x_label_area_size(70)
            .y_label_area_size(100)
            .build_cartesian_2d(ex[0]..ex[ex.len() - 1], ey[0]..ey[ey.len() - 1])?;
        c.configure_mesh()
            .disable_mesh()
            .x_desc(names[0])
            .y_desc(names[1])
            .axis_desc_style(font(LABEL_SIZE))
            .label_style(font(TICK_SIZE))
            .x_label_formatter(&|v| fmt_num(*v))
            .y_label_formatter(&|v| fmt_num(*v))
            .draw()?;
        let mut frames = Vec::new();
        for &i in &ok {
            let (ix, iy) = (locate(&xs, labels[i][0]), locate(&ys, labels[i][1]));
            let rect = [(ex[ix], ey[iy]), (ex[ix + 1], ey[iy + 1])];
            let v = values[i];
            let color = if v.is_finite() {
                viridis(((v - vmin) / (vmax - vmin)).clamp(0.0, 1.0))
            } else {
                RGBColor(200, 200, 200)
            };
            c.draw_series(std::iter::once(Rectangle::new(rect, color.filled())))?;
            c.draw_series(std::iter::once(Rectangle::new(rect, WHITE.stroke_width(1))))?;
            let text_color = if is_dark(color) { WHITE } else { BLACK };
            let style = font(CELL_TEXT_SIZE).color(&text_color).pos(Pos::new(HPos::Center, VPos::Center));
            let centre = (0.5 * (ex[ix] + ex[ix + 1]), 0.5 * (ey[iy] + ey[iy + 1]));
            c.draw_series(std::iter::once(Text::new(fmt_num(v), centre, style)))?;
            if marked.get(i).copied().unwrap_or(false) {
                frames.push(rect);
            }
        }
        c.draw_series(frames.into_iter().map(|r| Rectangle::new(r, MARK_COLOR.stroke_width(5))))?;
        // Colour bar.
        let mut cb = ChartBuilder::on(&bar)
            .margin_top(15)
            .margin_bottom(85)
            .margin_right(10)
            .y_label_area_size(120)
            .build_cartesian_2d(0.0..1.0, vmin..vmax)?;
        cb.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .label_style(font(TICK_SIZE))
            .y_label_formatter(&|v| fmt_num(*v))
            .draw()?;
        let steps = 100;
        cb.draw_series((0..steps).map(|k| {
            let a = vmin + (vmax - vmin) * k as f64 / steps as f64;
            let b = vmin + (vmax - vmin) * (k + 1) as f64 / steps as f64;
            Rectangle::new([(0.0, a), (1.0, b)], viridis((k as f64 + 0.5) / steps as f64).filled())
        }))?;
        if let Some((level, _)) = scale.mark.as_ref().filter(|(l, _)| l.is_finite()) {
            // A level beyond the scale is drawn at its end (its value is in the title).
            let at = level.clamp(vmin, vmax);
            cb.draw_series(std::iter::once(PathElement::new(vec![(0.0, at), (1.0, at)], MARK_COLOR.stroke_width(5))))?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Likelihood scan
// ---------------------------------------------------------------------------

/// A 1-D scan `ys(xs)` (e.g. `−ln L` versus a parameter) with its minimum
/// marked (red dot, dashed vertical line, value in the legend), the level
/// `min + 0.5`, and, if given, the true value as a green vertical line.
/// Non-finite points are skipped; at least one finite point is needed.
pub fn likelihood_scan(
    path: impl AsRef<Path>,
    xs: &[f64],
    ys: &[f64],
    x_name: &str,
    y_name: &str,
    truth: Option<f64>,
) -> Result<(), PlotError> {
    let path = path.as_ref();
    if xs.len() != ys.len() {
        return Err(invalid(path, format!("{} x values but {} y values", xs.len(), ys.len())));
    }
    let mut pts: Vec<(f64, f64)> =
        xs.iter().zip(ys).filter(|(x, y)| x.is_finite() && y.is_finite()).map(|(&x, &y)| (x, y)).collect();
    pts.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let Some(&best) = pts.iter().min_by(|a, b| a.1.total_cmp(&b.1)) else {
        return Err(invalid(path, "no finite scan points"));
    };
    let truth = truth.filter(|t| t.is_finite());
    let xlo = pts[0].0.min(truth.unwrap_or(f64::INFINITY));
    let xhi = pts[pts.len() - 1].0.max(truth.unwrap_or(f64::NEG_INFINITY));
    let (x0, x1) = pad(xlo, xhi, 0.04);
    let ymax = pts.iter().fold(best.1 + 0.5, |a, p| a.max(p.1));
    let (y0, y1) = pad(best.1, ymax, 0.06);
    render(path, (1400, 900), |root| {
        let mut c = ChartBuilder::on(root)
            .caption(format!("Scan of {y_name} versus {x_name}"), font(TITLE_SIZE))
            .margin(20)
            .x_label_area_size(70)
            .y_label_area_size(110)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        c.configure_mesh()
            .x_desc(x_name)
            .y_desc(y_name)
            .axis_desc_style(font(LABEL_SIZE))
            .label_style(font(TICK_SIZE))
            .x_label_formatter(&tick_formatter(x0, x1))
            .y_label_formatter(&tick_formatter(y0, y1))
            .draw()?;
        let line = REF_COLOR.stroke_width(3);
        c.draw_series(LineSeries::new(pts.iter().copied(), line))?
            .label(y_name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 30, y)], line));
        c.draw_series(pts.iter().map(|&p| Circle::new(p, 4, REF_COLOR.filled())))?;
        c.draw_series(DashedLineSeries::new([(x0, best.1 + 0.5), (x1, best.1 + 0.5)], 10, 6, GREY.stroke_width(2)))?
            .label("minimum + 0.5")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 30, y)], GREY.stroke_width(2)));
        c.draw_series(DashedLineSeries::new([(best.0, y0), (best.0, y1)], 10, 6, MARK_COLOR.stroke_width(2)))?;
        c.draw_series(std::iter::once(Circle::new(best, 9, MARK_COLOR.filled())))?
            .label(format!("minimum at {} = {}", x_name, fmt_precise(best.0)))
            .legend(|(x, y)| Circle::new((x + 15, y), 8, MARK_COLOR.filled()));
        if let Some(t) = truth {
            let green = RGBColor(44, 160, 44).stroke_width(3);
            c.draw_series(LineSeries::new([(t, y0), (t, y1)], green))?
                .label(format!("true value {}", fmt_precise(t)))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 30, y)], green));
        }
        c.configure_series_labels()
            .label_font(font(TICK_SIZE))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .legend_area_size(45)
            .position(SeriesLabelPosition::UpperMiddle)
            .draw()?;
        Ok(())
    })
}
