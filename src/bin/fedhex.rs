//! `fedhex`: generate data, train (one process), sample, check, and inspect the installation.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use fedhex::config::RunConfig;
use fedhex::data::gaussian::{check_moments, Covariance, GaussianSpec, Layout};
use fedhex::data::npy::{read_npz, write_npz};
use fedhex::flow::Model;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "fedhex", version, about = "Conditional normalizing flows for Monte Carlo interpolation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the configuration (the full default with --default).
    Config {
        /// Print the full default configuration with a comment per key.
        #[arg(long)]
        default: bool,
        /// A configuration file to check and print with overrides applied.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a key: section.key=value (TOML value).
        #[arg(long = "set")]
        set: Vec<String>,
    },
    /// Generate a synthetic Gaussian data set (.npz plus a .gen.json truth file).
    Gen(GenArgs),
    /// Train a flow in this process.
    Train(fedhex::config::TrainArgs),
    /// Generate events from a trained model at given labels.
    Sample {
        #[command(flatten)]
        args: fedhex::generate::SampleArgs,
        /// Output: .root (tree Events, one branch per feature and label) or .npz.
        #[arg(long)]
        out: PathBuf,
    },
    /// Compare generated events with a Gaussian generator's true mean and covariance.
    Moments {
        /// The generator description written by `fedhex gen` (.gen.json).
        #[arg(long)]
        truth: PathBuf,
        /// Generated events (.npz).
        #[arg(long)]
        samples: PathBuf,
        /// Exit non-zero when a mean is off by more than this many true widths.
        #[arg(long)]
        max_pull: Option<f64>,
    },
    /// Print versions, devices and threads; fail when something required is missing.
    Doctor,
    /// Measure training, sampling and log-prob throughput of a network.
    Bench {
        /// Intra-op threads (0: all cores).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Batch sizes (repeatable).
        #[arg(long = "batch", default_values_t = [1024])]
        batches: Vec<usize>,
        /// Device: auto, cpu, cuda, cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// MADE blocks.
        #[arg(long, default_value_t = 10)]
        blocks: usize,
        /// Hidden widths, comma separated.
        #[arg(long, default_value = "128")]
        hidden: String,
        /// Features and labels.
        #[arg(long, default_value_t = 2)]
        dim: usize,
        /// Block transform: affine (the reference network), spline, affine_spline (the default network's).
        #[arg(long, value_enum, default_value = "affine")]
        transform: fedhex::flow::Transform,
        /// Order between blocks: reverse (the reference network), random, lu (the default network's).
        #[arg(long, value_enum, default_value = "reverse")]
        permutation: fedhex::flow::Permutation,
        /// Print one JSON line per batch size instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validate a model against reference events: metrics, verdicts, plots, report.json/.txt, index.html.
    Analyze(AnalyzeArgs),
    /// Fit the label of observed events by maximum likelihood (best label, uncertainties, scans).
    Fit(FitArgs),
    /// Combine trained models (same features, labels and preprocessing; e.g. one configuration
    /// trained with different seeds) into one ensemble model: the equal-weight mixture of their
    /// densities, used like any model by sample, analyze, fit and Python.
    Ensemble {
        /// The models (directories or their model.json); ensembles among them are flattened.
        #[arg(required = true, num_args = 2..)]
        models: Vec<PathBuf>,
        /// Output model directory (written atomically; replaced if it exists).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum GenModel {
    /// Gaussian test beds (--layout, --cov); writes one .npz.
    Gaussian,
    /// The Φ → γω pseudo-detector; writes one ROOT file per grid point into --out (a directory),
    /// or, with --at, one file of events at the given (M_Φ, M_ω) points.
    PhiOmega,
    /// The seven-feature, three-label Φ → γω generator (labels M_Φ, M_ω and the relative width
    /// Γ/M_Φ); a ROOT file per point of --grid AxBxC into --out, or, with --at / --at-default,
    /// one file of events at the given points.
    PhiOmegaNd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LayoutArg {
    Grid2d,
    Line,
    Circle,
    Cube,
}

#[derive(Clone, Copy, ValueEnum)]
enum CovArg {
    Diagonal,
    Full,
    Growing,
    Rotating,
}

#[derive(clap::Args)]
struct GenArgs {
    /// Generator model.
    #[arg(long, value_enum, default_value = "gaussian")]
    model: GenModel,
    /// phi-omega: grid points along M_Φ and M_ω (default 10x10); phi-omega-nd: along M_Φ, M_ω
    /// and Γ/M_Φ (default 5x5x3).
    #[arg(long)]
    grid: Option<String>,
    /// phi-omega: generate at these (M_Φ,M_ω) points instead of the grid (repeatable), into one
    /// file --out; phi-omega-nd: (M_Φ,M_ω,Γ/M_Φ) points.
    #[arg(long = "at")]
    at: Vec<String>,
    /// phi-omega-nd: generate at the 12 default off-grid evaluation points (with any --at) into one file --out.
    #[arg(long = "at-default")]
    at_default: bool,
    /// Label layout.
    #[arg(long, value_enum, default_value = "grid2d")]
    layout: LayoutArg,
    /// Points per axis (grid2d, cube) or points (line, circle).
    #[arg(long, default_value_t = 5)]
    points: usize,
    /// Range of the grid/line.
    #[arg(long, default_value_t = 0.0)]
    lo: f64,
    /// Range of the grid/line.
    #[arg(long, default_value_t = 1.0)]
    hi: f64,
    /// Feature dimension (line, cube).
    #[arg(long, default_value_t = 3)]
    dim: usize,
    /// Covariance strategy.
    #[arg(long, value_enum, default_value = "diagonal")]
    cov: CovArg,
    /// Width (major width for rotating).
    #[arg(long, default_value_t = 0.05)]
    sigma: f64,
    /// Correlation (full), growth (growing), minor width (rotating).
    #[arg(long, default_value_t = 0.5)]
    shape: f64,
    /// Half-turns per label unit (rotating).
    #[arg(long, default_value_t = 0.5)]
    turns: f64,
    /// Events per label point.
    #[arg(short = 'n', long, default_value_t = 2000)]
    n: usize,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output: .npz for gaussian (the truth goes to NAME.gen.json); a directory
    /// (grid) or a .root/.npz file (--at) for phi-omega.
    #[arg(long)]
    out: PathBuf,
}

/// `x.root` → `x.draws.json`: where `fedhex sample` records, per label, the
/// draws rejected by the acceptance cuts, the support check and the ranges.
fn draws_path(out: &Path) -> PathBuf {
    out.with_extension("draws.json")
}

/// The `[data.root]` selection of the run configuration `config`, if given.
fn selection(config: Option<&Path>) -> Result<Option<fedhex::data::source::RootInput>> {
    Ok(fedhex::config::root_selection(config)?)
}

fn truth_path(out: &Path) -> PathBuf {
    out.with_extension("gen.json")
}

fn gen_phiomega(a: &GenArgs) -> Result<()> {
    use fedhex::data::phiomega::{LabelGrid, PhiOmegaModel};
    let model = PhiOmegaModel::default();
    if !a.at.is_empty() {
        let points =
            a.at.iter()
                .map(|p| {
                    let l = fedhex::generate::parse_label(p)?;
                    match l.as_slice() {
                        [mp, mo] => Ok([f64::from(*mp), f64::from(*mo)]),
                        _ => bail!("--at '{p}': need M_phi,M_omega"),
                    }
                })
                .collect::<Result<Vec<_>>>()?;
        let events = fedhex::data::phiomega::event_set(&model, &points, a.n, a.seed)?;
        let n = events.len();
        fedhex::data::files::write_events(&a.out, &events, "Events")?;
        println!("wrote {n} events at {} point(s) to {}", a.at.len(), a.out.display());
        return Ok(());
    }
    let grid = a.grid.as_deref().unwrap_or("10x10");
    let (np, no) = grid
        .split_once('x')
        .and_then(|(p, o)| Some((p.trim().parse().ok()?, o.trim().parse().ok()?)))
        .with_context(|| format!("--grid '{grid}': expected NxM, e.g. 10x10"))?;
    let points = LabelGrid { n_phi: np, n_omega: no, ..Default::default() }.points()?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let files = fedhex::data::phiomega::write_phiomega_grid(&a.out, &model, &points, a.n, a.seed)?;
    wrote_grid(files.len(), a);
    Ok(())
}

/// The line `fedhex gen` prints after writing a grid of ROOT files.
fn wrote_grid(files: usize, a: &GenArgs) {
    println!(
        "wrote {files} ROOT files ({} events each, tree Events) and acceptance.csv (efficiency per point) to {}",
        a.n,
        a.out.display()
    );
}

fn gen_phiomega_nd(a: &GenArgs) -> Result<()> {
    use fedhex::data::phiomega_nd::{self as nd, NdGrid, PhiOmegaNdModel};
    let model = PhiOmegaNdModel::default();
    if a.n == 0 {
        bail!("-n: the number of events per point must be > 0");
    }
    if !a.at.is_empty() || a.at_default {
        if a.grid.is_some() {
            bail!("--grid cannot be combined with --at/--at-default");
        }
        let mut points = if a.at_default { nd::default_eval_points() } else { Vec::new() };
        for p in &a.at {
            let l = fedhex::generate::parse_label(p).with_context(|| format!("--at '{p}'"))?;
            let point = match l.as_slice() {
                [mp, mo, w] => [f64::from(*mp), f64::from(*mo), f64::from(*w)],
                _ => bail!("--at '{p}': need M_phi,M_omega,W_phi (three numbers)"),
            };
            model.check_label(point).with_context(|| format!("--at '{p}'"))?;
            points.push(point);
        }
        let events = nd::event_set(&model, &points, a.n, a.seed)?;
        fedhex::data::files::write_events(&a.out, &events, "Events")?;
        println!("wrote {} events at {} point(s) to {}", events.len(), points.len(), a.out.display());
        return Ok(());
    }
    let spec = a.grid.as_deref().unwrap_or("5x5x3");
    let points = NdGrid::parse(spec).and_then(|g| g.points()).with_context(|| format!("--grid '{spec}'"))?;
    let files = nd::write_nd_grid(&a.out, &model, &points, a.n, a.seed)?;
    wrote_grid(files.len(), a);
    Ok(())
}

fn gen(a: &GenArgs) -> Result<()> {
    match a.model {
        GenModel::PhiOmega | GenModel::Gaussian if a.at_default => bail!("--at-default is for --model phi-omega-nd"),
        GenModel::PhiOmega => return gen_phiomega(a),
        GenModel::PhiOmegaNd => return gen_phiomega_nd(a),
        GenModel::Gaussian => {}
    }
    let layout = match a.layout {
        LayoutArg::Grid2d => Layout::Grid2d { n: a.points, lo: a.lo, hi: a.hi },
        LayoutArg::Line => Layout::Line { n: a.points, lo: a.lo, hi: a.hi, dim: a.dim },
        LayoutArg::Circle => Layout::Circle { n: a.points, radius: 1.0 },
        LayoutArg::Cube => Layout::Cube { n: a.points, dim: a.dim },
    };
    let covariance = match a.cov {
        CovArg::Diagonal => Covariance::Diagonal { sigma: a.sigma },
        CovArg::Full => Covariance::Full { sigma: a.sigma, rho: a.shape },
        CovArg::Growing => Covariance::Growing { sigma: a.sigma, growth: a.shape },
        CovArg::Rotating => Covariance::Rotating { major: a.sigma, minor: a.sigma * a.shape, turns: a.turns },
    };
    let spec = GaussianSpec { layout, covariance, n_per_label: a.n, seed: a.seed };
    let events = spec.generate()?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_npz(&a.out, &events.samples, &events.labels)?;
    let tp = truth_path(&a.out);
    std::fs::write(&tp, serde_json::to_string_pretty(&spec)?).with_context(|| format!("writing {}", tp.display()))?;
    println!(
        "wrote {} events at {} labels to {} (truth: {})",
        events.len(),
        spec.labels().len(),
        a.out.display(),
        tp.display()
    );
    Ok(())
}

fn train(args: &fedhex::config::TrainArgs) -> Result<()> {
    let cfg = args.load()?;
    let resume = args.resume;
    let controls = std::sync::Arc::new(fedhex::train::Controls::default());
    fedhex::app::run::stop_on_signals(controls.clone())?;
    let opts = fedhex::app::run::RunOptions { resume, controls, observer: None };
    let outcome = fedhex::app::run::run(&cfg, &fedhex::comm::SingleProcess, opts)?;
    let last = outcome.history.last();
    println!(
        "{:?} after {} epochs: train NLL {:.4}, validation NLL {:.4}; model in {}",
        outcome.finish,
        outcome.history.len(),
        last.map_or(f64::NAN, |r| r.train_nll),
        last.map_or(f64::NAN, |r| r.val_nll),
        cfg.outputs.run_dir.join("model").display()
    );
    Ok(())
}

fn sample(args: &fedhex::generate::SampleArgs, out: &Path) -> Result<()> {
    let req = args.resolve(0)?;
    for w in &req.warnings {
        tracing::warn!("{w}");
    }
    let (model, labels) = (&req.model, &req.labels);
    let total = req.total(args.n);
    let (features, label_names) = (model.features.names(), model.labels.names());
    let mut writer =
        fedhex::data::files::EventFileWriter::create(out, "Events", &features, &label_names, total, args.chunk)?;
    let opts = args.stream_options(&req.cuts);
    let draws = fedhex::generate::stream_samples(model, labels, &opts, |c| writer.write(c.samples, c.labels, c.rows))?;
    writer.finish()?;
    let stats = draws_path(out);
    fedhex::atomic::write_synced(&stats, serde_json::to_string_pretty(&draws)?.as_bytes())?;
    print!("{}", fedhex::generate::draws_table(&draws, 20));
    println!(
        "wrote {total} events at {} label(s) to {} (draws per label: {})",
        labels.len(),
        out.display(),
        stats.display()
    );
    Ok(())
}

fn ensemble(paths: &[PathBuf], out: &Path) -> Result<()> {
    let mut models = Vec::with_capacity(paths.len());
    for p in paths {
        let m = Model::load(p, tch::Device::Cpu).with_context(|| format!("loading ensemble member {}", p.display()))?;
        models.push((p.display().to_string(), m));
    }
    let model = Model::ensemble(models)?;
    model.save(out).with_context(|| format!("writing the ensemble to {}", out.display()))?;
    println!("wrote an ensemble of {} flows to {}", model.n_members(), out.display());
    Ok(())
}

fn moments(truth: &Path, samples: &Path, max_pull: Option<f64>) -> Result<()> {
    let text = std::fs::read_to_string(truth).with_context(|| format!("reading {}", truth.display()))?;
    let spec: GaussianSpec =
        serde_json::from_str(&text).with_context(|| format!("{}: not a generator description", truth.display()))?;
    let events = read_npz(samples, vec![], vec![])?;
    let checks = check_moments(&spec, &events)?;
    let mut worst: f64 = 0.0;
    for c in &checks {
        println!("label {:?} ({} events)", c.label, c.n);
        let d = c.mean.len();
        for i in 0..d {
            println!(
                "  x{i}: mean {:+.4} (true {:+.4})   std {:.4} (true {:.4})",
                c.mean[i],
                c.true_mean[i],
                c.cov[i][i].sqrt(),
                c.true_cov[i][i].sqrt()
            );
        }
        for i in 0..d {
            for j in 0..i {
                let r = c.cov[i][j] / (c.cov[i][i] * c.cov[j][j]).sqrt();
                let tr = c.true_cov[i][j] / (c.true_cov[i][i] * c.true_cov[j][j]).sqrt();
                println!("  corr(x{i},x{j}): {r:+.3} (true {tr:+.3})");
            }
        }
        println!(
            "  worst mean offset {:.3} true widths; worst width error {:.1}%; worst correlation error {:.3}",
            c.max_mean_pull,
            100.0 * c.max_std_rel,
            c.max_corr_diff
        );
        worst = worst.max(c.max_mean_pull);
    }
    if let Some(m) = max_pull {
        if worst > m {
            bail!("a generated mean is {worst:.3} true widths from the truth (limit {m})");
        }
    }
    Ok(())
}

fn doctor() -> Result<()> {
    println!("fedhex      {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch    {}", fedhex::flow::model::libtorch_version());
    let t = tch::Tensor::from_slice(&[1f32, 2.0, 3.0]);
    let s = t.sum(tch::Kind::Float).double_value(&[]);
    if s != 6.0 {
        bail!("libtorch does not compute correctly (1+2+3 gave {s})");
    }
    println!("libtorch ok (CPU tensor arithmetic)");
    let n = fedhex::device::cuda_count();
    println!(
        "cuda        available: {} devices: {n} cudnn: {}",
        tch::Cuda::is_available(),
        tch::Cuda::cudnn_is_available()
    );
    println!(
        "threads     libtorch intra-op: {}, cores available: {}",
        tch::get_num_threads(),
        fedhex::device::available_cores()
    );
    match std::process::Command::new("mpirun").arg("--version").output() {
        Ok(o) if o.status.success() => {
            let v = String::from_utf8_lossy(&o.stdout);
            println!("mpi         {}", v.lines().next().unwrap_or("unknown").trim());
        }
        _ => println!("mpi         mpirun not found on PATH (needed only for multi-rank training)"),
    }
    Ok(())
}

fn main() {
    fedhex::logging::init("info", None);
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Cmd::Config { default, config, set } => (|| -> Result<()> {
            if *default {
                print!("{}", fedhex::config::default_toml());
                return Ok(());
            }
            let cfg = match config {
                Some(p) => RunConfig::load(p, set)?,
                None => RunConfig::from_toml("", set, "--set")?,
            };
            print!("{}", cfg.to_toml()?);
            Ok(())
        })(),
        Cmd::Gen(a) => gen(a),
        Cmd::Train(args) => train(args),
        Cmd::Sample { args, out } => sample(args, out),
        Cmd::Moments { truth, samples, max_pull } => moments(truth, samples, *max_pull),
        Cmd::Doctor => doctor(),
        Cmd::Bench { threads, batches, device, seconds, blocks, hidden, dim, transform, permutation, json } => {
            (|| -> Result<()> {
                let dev = fedhex::device::resolve(fedhex::device::parse_device(device)?, 0)?;
                let used = fedhex::device::set_threads(*threads);
                let net = fedhex::config::NetworkConfig {
                    n_blocks: *blocks,
                    hidden: hidden.split(',').map(|w| w.trim().parse()).collect::<Result<_, _>>()?,
                    // By default the reference network of the prototype and of zuko's MAF: affine blocks.
                    transform: *transform,
                    permutation: *permutation,
                    ..Default::default()
                };
                if !json {
                    println!(
                        "{:>8} {:>14} {:>14} {:>14} {:>10}   ({used} threads, {dev:?}, CPU kernels: {})",
                        "batch",
                        "train ev/s",
                        "sample ev/s",
                        "logp ev/s",
                        "peak MiB",
                        fedhex::flow::engine::cpu::kernels()
                    );
                }
                for &b in batches {
                    let t = fedhex::bench::flow_throughput(&net, *dim, *dim, b, dev, *seconds)?;
                    if *json {
                        println!("{}", serde_json::to_string(&t)?);
                    } else {
                        println!(
                            "{:>8} {:>14.0} {:>14.0} {:>14.0} {:>10.0}",
                            b, t.train_events_per_s, t.sample_events_per_s, t.log_prob_events_per_s, t.peak_rss_mib
                        );
                    }
                }
                Ok(())
            })()
        }
        Cmd::Analyze(a) => analyze(a),
        Cmd::Fit(a) => fit(a),
        Cmd::Ensemble { models, out } => ensemble(models, out),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[derive(clap::Args)]
struct AnalyzeArgs {
    /// Model directory (or its model.json).
    #[arg(long)]
    model: PathBuf,
    /// Reference events: .npz (samples, labels) or .root (flat branches named as the model's features and labels).
    #[arg(long = "reference", required = true, num_args = 1..)]
    reference: Vec<PathBuf>,
    /// Generated events to compare (default: generate -n events per reference label with the model).
    #[arg(long)]
    generated: Vec<PathBuf>,
    /// An independent second reference sample, for the statistical floor.
    #[arg(long)]
    reference2: Vec<PathBuf>,
    /// Read the ROOT references through this run configuration's [data.root] selection
    /// (tree, feature and label expressions, cut), e.g. the training run's config.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Held-out labels (comma separated, repeatable), added to the model's training.holdout_labels.
    #[arg(long = "holdout", num_args = 1..)]
    holdout: Vec<String>,
    /// Events generated per label (default: as many as the reference has there).
    #[arg(short = 'n', long)]
    n: Option<usize>,
    /// Output directory (replaced atomically).
    #[arg(long, default_value = "report")]
    out: PathBuf,
    /// Seed of the generation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tree name in ROOT files.
    #[arg(long, default_value = "Events")]
    tree: String,
    /// Metric of the heat map over the label grid.
    #[arg(long, value_enum, default_value = "auc")]
    heat_metric: fedhex::analysis::report::HeatMetric,
    /// Labels with per-label plots, at most (held-out first).
    #[arg(long, default_value_t = 16)]
    max_plot_labels: usize,
    /// Image format of the plots: png or svg.
    #[arg(long, default_value = "png", value_parser = parse_plot_format)]
    plot_format: fedhex::analysis::plot_backend::PlotFormat,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn parse_plot_format(s: &str) -> std::result::Result<fedhex::analysis::plot_backend::PlotFormat, String> {
    fedhex::analysis::plot_backend::PlotFormat::parse(s)
        .ok_or_else(|| format!("unknown plot format '{s}' (png or svg)"))
}

fn analyze(a: &AnalyzeArgs) -> Result<()> {
    use fedhex::analysis::report;
    let dev = fedhex::device::resolve(fedhex::device::parse_device(&a.device)?, 0)?;
    let model = Model::load(&a.model, dev)?;
    let sel = selection(a.config.as_deref())?;
    let read = |paths: &[PathBuf], sel: Option<&fedhex::data::source::RootInput>| {
        fedhex::data::files::read_events_selected(
            paths,
            &model.features.names(),
            &model.labels.names(),
            &a.tree,
            true,
            sel,
        )
    };
    let reference = read(&a.reference, sel.as_ref())?;
    let mut opts = report::AnalyzeOptions::new(&a.model, reference, &a.out);
    if !a.generated.is_empty() {
        // Generated events are written with flat branches named like the model's columns.
        opts.generated = Some(read(&a.generated, None)?);
    }
    if !a.reference2.is_empty() {
        opts.reference2 = Some(read(&a.reference2, sel.as_ref())?);
    }
    opts.holdout = a.holdout.iter().map(|s| fedhex::generate::parse_label(s)).collect::<Result<_, _>>()?;
    opts.n_generate = a.n;
    opts.seed = a.seed;
    opts.device = dev;
    opts.heat_metric = a.heat_metric;
    opts.max_plot_labels = a.max_plot_labels;
    opts.plot_format = a.plot_format;
    drop(model);
    let r = report::analyze(&opts)?;
    for w in &r.warnings {
        tracing::warn!("{w}");
    }
    for l in &r.labels {
        println!("{}", l.verdict.line);
    }
    println!("{}", r.interpolation.line);
    println!("{}", r.reproduction.line);
    println!("report: {}", a.out.join(report::REPORT_HTML).display());
    Ok(())
}

#[derive(clap::Args)]
struct FitArgs {
    /// Model directory (or its model.json).
    #[arg(long)]
    model: PathBuf,
    /// Observed events: .npz (samples[, labels]; without labels: one pooled fit) or .root (flat branches named as the model's features).
    #[arg(long = "events", required = true, num_args = 1..)]
    events: Vec<PathBuf>,
    /// Output directory for fit.json and the likelihood scans (default: print only).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Fit all events together, ignoring any label columns (default: one fit per label group, its label as truth).
    #[arg(long)]
    pool: bool,
    /// The true label, if known (comma separated); used for pulls and drawn in the scans.
    #[arg(long)]
    truth: Option<String>,
    /// Likelihood scan per label dimension.
    #[arg(long, value_enum, default_value = "slice")]
    scan: fedhex::analysis::fit::ScanKind,
    /// Adam iterations.
    #[arg(long, default_value_t = 300)]
    iterations: usize,
    /// Models with acceptance cuts: flow samples that estimate the acceptance at each label (0: fit the density before the cut).
    #[arg(long, default_value_t = 20_000)]
    acceptance_samples: usize,
    /// Seed of those samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tree name in ROOT files.
    #[arg(long, default_value = "Events")]
    tree: String,
    /// Read ROOT events through this run configuration's [data.root] selection (tree, expressions, cut).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn fit(a: &FitArgs) -> Result<()> {
    use fedhex::analysis::fit::{fit_label_weighted, FitOptions};
    let dev = fedhex::device::resolve(fedhex::device::parse_device(&a.device)?, 0)?;
    let model = Model::load(&a.model, dev)?;
    // ROOT: label branches are optional in observed data; read them only when grouping.
    let (features, label_names) = (model.features.names(), model.labels.names());
    let sel = selection(a.config.as_deref())?;
    let read = |with_labels| {
        fedhex::data::files::read_events_selected(
            &a.events,
            &features,
            &label_names,
            &a.tree,
            with_labels,
            sel.as_ref(),
        )
    };
    let events = match read(!a.pool) {
        Ok(e) => e,
        Err(_) if !a.pool => read(false)?,
        Err(e) => return Err(e.into()),
    };
    let truth: Option<Vec<f64>> = match &a.truth {
        Some(t) => Some(fedhex::generate::parse_label(t)?.into_iter().map(f64::from).collect()),
        None => None,
    };
    let groups: Vec<(Option<Vec<f32>>, Vec<usize>)> = if a.pool || events.n_labels() != model.n_labels() {
        vec![(None, (0..events.len()).collect())]
    } else {
        let g = events.label_groups();
        g.labels.into_iter().map(Some).zip(g.members).collect()
    };
    let mut results = Vec::new();
    for (i, (label, rows)) in groups.iter().enumerate() {
        let sel = events.select(rows);
        let opts = FitOptions {
            out: a.out.clone(),
            plot_prefix: if groups.len() > 1 { format!("scan_group{i}") } else { "scan".into() },
            truth: truth.clone().or_else(|| label.as_ref().map(|l| l.iter().map(|v| f64::from(*v)).collect())),
            scan: a.scan,
            iterations: a.iterations,
            acceptance_samples: a.acceptance_samples,
            seed: a.seed,
            ..Default::default()
        };
        // Weighted events (a .npz `weights` array or `[data.root] weight`): the weighted NLL and the sandwich covariance.
        let r = fit_label_weighted(&model, sel.samples.view(), sel.weights.as_ref().map(|w| w.view()), &opts)?;
        let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.6}")).collect::<Vec<_>>().join(", ");
        println!(
            "{}{} events{}: best ({}) ± ({}), NLL {:.4}{}",
            label.as_ref().map_or(String::new(), |l| format!("label {l:?}: ")),
            r.n_events,
            r.weights.map_or(String::new(), |w| format!(" (weighted: Σw {:.4}, n_eff {:.1})", w.sum, w.n_eff)),
            fmt(&r.best),
            fmt(&r.uncertainty),
            r.nll,
            r.pulls.as_ref().map_or(String::new(), |p| format!(", pulls ({})", fmt(p)))
        );
        for w in &r.warnings {
            tracing::warn!("{w}");
        }
        results.push(r);
    }
    if let Some(out) = &a.out {
        println!("fit: {}", fedhex::analysis::fit::write_results(out, &results)?.display());
    }
    Ok(())
}
