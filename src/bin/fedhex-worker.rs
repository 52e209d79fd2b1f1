//! `fedhex-worker`: one MPI rank of a training or generation job.
//!
//! ```text
//! mpirun -n 4 fedhex-worker train --config run.toml [--set key=value] [--resume]
//! srun fedhex-worker train --config run.toml --resume
//! srun fedhex-worker sample --model run/model --grid 1000:3000:41 --grid 0.5:9.5:37 -n 1000000 --out gen/
//! ```
//!
//! Rank 0 coordinates and writes checkpoints and the model (training) or the
//! manifest (generation: `generate::distributed`); the other ranks log only
//! warnings and errors. Any error ends every rank with a non-zero exit; a
//! panic aborts the whole MPI job so no rank waits forever.

use anyhow::Result;
use clap::{Parser, Subcommand};
use fedhex::app::run::{run, stop_on_signals, RunOptions};
use fedhex::comm::mpi::MpiComm;
use fedhex::comm::Communicator;
use fedhex::train::Controls;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "fedhex-worker", version, about = "One MPI rank of a FEDHEX training or generation job")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train (all ranks run the same command).
    Train(fedhex::config::TrainArgs),
    /// Generate events at given labels, the labels split over the ranks: one file per rank
    /// in --out and a manifest.json (all ranks run the same command).
    Sample(fedhex::generate::distributed::PartsArgs),
}

fn init_tracing(rank: usize) {
    fedhex::logging::init(if rank == 0 { "info" } else { "warn" }, Some(rank));
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
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<()> {
        match &cli.cmd {
            Cmd::Train(args) => {
                let cfg = fedhex::comm::agree(&comm, args.load())?;
                let controls = Arc::new(Controls::default());
                stop_on_signals(controls.clone())?;
                let out = run(&cfg, &comm, RunOptions { resume: args.resume, controls, observer: None })?;
                if let Some(summary) = fedhex::app::run::summary(&comm, &cfg, &out)? {
                    println!("{summary}");
                }
                Ok(())
            }
            Cmd::Sample(args) => {
                let manifest = fedhex::generate::distributed::sample_parts(&comm, args)?;
                if comm.is_root() {
                    print!("{}", fedhex::generate::draws_table(&manifest.draws(), 20));
                    println!(
                        "wrote {} events at {} label(s) in {} file(s) to {} (manifest: {})",
                        manifest.events,
                        manifest.labels,
                        manifest.files.len(),
                        args.out.display(),
                        args.out.join(fedhex::generate::distributed::MANIFEST).display()
                    );
                }
                Ok(())
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
