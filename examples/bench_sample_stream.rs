//! Memory benchmark of streamed generation (`fedhex sample`'s path): builds a
//! network with fresh weights on two features and two labels — nothing is
//! trained; `small` (2 MADE blocks of 16, the default: fast on a CPU) or
//! `reference` (10 blocks of 128, relu; ~15k events/s on 2 CPU cores, use a
//! GPU) — and generates 1,000,000
//! and 10,000,000 events at one label to `.root` and to `.npz`, each case in
//! its own process, printing events/s and the peak resident memory (`VmHWM`).
//! A streamed writer keeps the peak flat as N grows tenfold.
//!
//! Run with: `cargo run --release --example bench_sample_stream [-- DIR [DEVICE [CHUNK [NET]]]]`
//! (DIR: where the files go, `-` or absent for a temporary directory removed at
//! the end; DEVICE: cpu (default), cuda, ...; CHUNK: events per written chunk,
//! default 2^20; NET: small (default) or reference).
//! One case alone: `... -- --case N OUT DEVICE CHUNK NET`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use fedhex::bench::peak_rss_mib;
use fedhex::comm::SingleProcess;
use fedhex::config::NetworkConfig;
use fedhex::data::files::EventFileWriter;
use fedhex::data::whiten::{WhitenSpec, Whitening};
use fedhex::flow::{Activation, Maf, Model};
use fedhex::generate::{stream_samples, StreamOptions, DEFAULT_BATCH, DEFAULT_CHUNK, DEFAULT_SUPPORT_MARGIN};
use ndarray::Array2;

/// A network with fresh (seeded) weights and a whitening fitted on a synthetic grid.
fn fresh_model(device: tch::Device, net: &str) -> Result<Model> {
    let _rng = fedhex::rng::seeded(11);
    let net = match net {
        "small" => NetworkConfig { n_blocks: 2, hidden: vec![16], activation: Activation::Relu, ..Default::default() },
        "reference" => NetworkConfig {
            transform: fedhex::flow::Transform::Affine,
            permutation: fedhex::flow::Permutation::Reverse,
            ..Default::default()
        },
        other => bail!("network '{other}': expected small or reference"),
    };
    let flow = Maf::new(net.maf(2, 2), device)?;
    let xs = Array2::from_shape_fn((1000, 2), |(i, j)| 1000.0 + ((i * 7 + j * 13) % 101) as f32 * 20.0);
    let ls =
        Array2::from_shape_fn(
            (1000, 2),
            |(i, j)| if j == 0 { 1000.0 + (i % 10) as f32 * 250.0 } else { 0.5 + (i % 7) as f32 },
        );
    let spec =
        |names: [&str; 2]| WhitenSpec { names: names.map(String::from).to_vec(), logit: vec![false; 2], eps: 1e-3 };
    let fw = Whitening::fit(xs.view(), &spec(["phi", "omega"]), &SingleProcess)?;
    let lw = Whitening::fit(ls.view(), &spec(["labelphi", "labelomega"]), &SingleProcess)?;
    Ok(Model::new(flow, fw, lw)?)
}

/// One case in this process: prints `format events seconds events/s peak-MiB before-MiB file-MiB`.
fn case(n: usize, out: &Path, device: &str, chunk: usize, net: &str) -> Result<()> {
    let dev = fedhex::device::resolve(fedhex::device::parse_device(device)?, 0)?;
    let model = fresh_model(dev, net)?;
    let labels = vec![vec![2000.0f32, 3.0]];
    // Warm-up call so that libtorch's own allocations count in the baseline.
    fedhex::generate::sample_at_labels(&model, &labels, 1000, 1, DEFAULT_BATCH)?;
    let before = peak_rss_mib();
    let t0 = Instant::now();
    let mut w =
        EventFileWriter::create(out, "Events", &model.features.names(), &model.labels.names(), n as u64, chunk)?;
    let opts = StreamOptions {
        n_per_label: n,
        cuts: &[],
        seed: 1,
        batch: DEFAULT_BATCH,
        chunk,
        support_margin: DEFAULT_SUPPORT_MARGIN,
    };
    stream_samples(&model, &labels, &opts, |c| w.write(c.samples, c.labels, c.rows))?;
    w.finish()?;
    let secs = t0.elapsed().as_secs_f64();
    let size = std::fs::metadata(out).with_context(|| out.display().to_string())?.len() as f64 / (1 << 20) as f64;
    let fmt = out.extension().and_then(|e| e.to_str()).unwrap_or("?");
    println!(
        "{fmt:>5} {n:>10} {secs:>8.1} {:>12.0} {:>9.0} {before:>10.0} {size:>9.0}",
        n as f64 / secs,
        peak_rss_mib()
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--case") {
        let [_, n, out, device, chunk, net] = args.as_slice() else { bail!("--case N OUT DEVICE CHUNK NET") };
        return case(n.parse()?, Path::new(out), device, chunk.parse()?, net);
    }
    let keep = args.first().is_some_and(|d| d != "-");
    let dir = args
        .first()
        .filter(|d| *d != "-")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("fedhex-bench-stream-{}", std::process::id())));
    let device = args.get(1).cloned().unwrap_or_else(|| "cpu".into());
    let chunk = args.get(2).map(|c| c.parse()).transpose()?.unwrap_or(DEFAULT_CHUNK);
    let net = args.get(3).cloned().unwrap_or_else(|| "small".into());
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    println!("streamed generation at one label, {net} network (fresh weights), {device}, chunk {chunk}");
    println!(
        "{:>5} {:>10} {:>8} {:>12} {:>9} {:>10} {:>9}",
        "fmt", "events", "seconds", "events/s", "peak MiB", "before MiB", "file MiB"
    );
    let exe = std::env::current_exe()?;
    for n in [1_000_000usize, 10_000_000] {
        for ext in ["root", "npz"] {
            let out = dir.join(format!("gen_{n}.{ext}"));
            let st = Command::new(&exe)
                .args(["--case", &n.to_string(), &out.display().to_string(), &device, &chunk.to_string(), &net])
                .status()?;
            if !st.success() {
                bail!("case {n} {ext} failed");
            }
            if !keep {
                let _ = std::fs::remove_file(&out);
            }
        }
    }
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
