//! `fedhex-worker`: one MPI rank of a training job.
//!
//! ```text
//! mpirun -n 4 fedhex-worker train --config run.toml [--set key=value] [--resume]
//! srun fedhex-worker train --config run.toml --resume
//! ```
//!
//! Rank 0 coordinates and writes checkpoints and the model; the other ranks
//! log only warnings and errors. Any error ends every rank with a non-zero
//! exit; a panic aborts the whole MPI job so no rank waits forever.

use anyhow::Result;
use clap::{Parser, Subcommand};
use fedhex::comm::mpi::MpiComm;
use fedhex::comm::Communicator;
use fedhex::config::RunConfig;
use fedhex::train::run::{run, stop_on_signals, RunOptions};
use fedhex::train::{Controls, Finish};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "fedhex-worker", version, about = "One MPI rank of a FEDHEX training job")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train (all ranks run the same command).
    Train {
        /// The run configuration (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Override a key: section.key=value (TOML value), repeatable.
        #[arg(long = "set")]
        set: Vec<String>,
        /// Continue from the newest complete checkpoint in the run directory.
        #[arg(long)]
        resume: bool,
        /// Control-plane listen address (as control.listen), e.g. 0.0.0.0:0 for cluster use.
        #[arg(long)]
        listen: Option<String>,
    },
}

fn init_tracing(rank: usize) {
    let default = if rank == 0 { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() {
    let cli = Cli::parse();
    let comm = match MpiComm::init() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    init_tracing(comm.rank());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<Finish> {
        match &cli.cmd {
            Cmd::Train { config, set, resume, listen } => {
                let cfg = RunConfig::load(config, &fedhex::config::overrides(set, listen.as_deref()));
                let cfg = fedhex::comm::agree(&comm, cfg)?;
                let controls = Arc::new(Controls::default());
                stop_on_signals(controls.clone())?;
                let out = run(&cfg, &comm, RunOptions { resume: *resume, controls, observer: None })?;
                let mut rss = vec![0.0; comm.size()];
                rss[comm.rank()] = fedhex::bench::peak_rss_mib();
                comm.allreduce_sum_f64(&mut rss)?;
                let mut busy = vec![0.0; comm.size()];
                busy[comm.rank()] = 1e6 * out.busy.0 / (out.busy.1.max(1) as f64);
                comm.allreduce_sum_f64(&mut busy)?;
                if comm.is_root() {
                    let rss: Vec<String> = rss.iter().map(|m| format!("{m:.0}")).collect();
                    println!("peak resident memory per rank (MiB): {}", rss.join(" "));
                    let busy: Vec<String> = busy.iter().map(|u| format!("{u:.2}")).collect();
                    println!("step time per local event per rank (us, before the all-reduce): {}", busy.join(" "));
                    let last = out.history.last();
                    println!(
                        "{:?} after {} epochs: train NLL {:.4}, validation NLL {:.4}; run directory {}",
                        out.finish,
                        out.history.len(),
                        last.map_or(f64::NAN, |r| r.train_nll),
                        last.map_or(f64::NAN, |r| r.val_nll),
                        cfg.outputs.run_dir.display()
                    );
                }
                Ok(out.finish)
            }
        }
    }));
    match outcome {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            if comm.is_root() {
                eprintln!("error: {e:#}");
            }
            drop(comm);
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("fatal: rank {} panicked; aborting the MPI job", comm.rank());
            comm.abort(3);
        }
    }
}
