//! `fedhex-ctl`: watch and steer a running FEDHEX job over its gRPC control plane.
//!
//! ```text
//! fedhex-ctl --run RUN_DIR status [--json] | watch [--json] | checkpoint | stop [--now] | ranks [--json]
//! fedhex-ctl --endpoint http://node12:50051 --token T status
//! ```
//!
//! Exit codes: 0 ok, 1 other error, 2 no run found / bad arguments,
//! 3 endpoint unreachable, 4 unauthenticated, 5 run has finished.

use clap::{Parser, Subcommand};
use fedhex::control::client::{self, state_name, CtlError};
use fedhex::control::pb;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "fedhex-ctl", version, about = "Watch and steer a running FEDHEX training job")]
struct Cli {
    /// Run directory of the job (holds control.json).
    #[arg(long, default_value = ".")]
    run: PathBuf,
    /// Endpoint (http://HOST:PORT), overriding control.json.
    #[arg(long, env = "FEDHEX_ENDPOINT")]
    endpoint: Option<String>,
    /// Token, overriding control.json.
    #[arg(long, env = "FEDHEX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM certificate to trust for an https:// endpoint (default: control.json's tls_ca).
    #[arg(long, env = "FEDHEX_CA")]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Epoch, step, losses, speed, ETA, last checkpoint, ranks.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Follow progress live; exits when the run ends.
    Watch {
        /// Most step lines per second.
        #[arg(long, default_value_t = 2.0)]
        rate: f64,
        /// One JSON object per event and line.
        #[arg(long)]
        json: bool,
    },
    /// Ask for a checkpoint at the next epoch boundary.
    Checkpoint,
    /// Stop gracefully at the end of the epoch (or, with --now, of the current step).
    Stop {
        /// Stop after the current step instead of the current epoch.
        #[arg(long)]
        now: bool,
    },
    /// Per-rank host, device, memory and CPU use.
    Ranks {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn target(cli: &Cli) -> Result<(String, String, Option<PathBuf>), CtlError> {
    let file = match (&cli.endpoint, &cli.token) {
        (Some(e), Some(t)) => return Ok((e.clone(), t.clone(), cli.ca.clone())),
        _ => client::read_control_file(&cli.run),
    };
    match file {
        Ok(f) if f.finished && cli.endpoint.is_none() => Err(CtlError::Finished(format!(
            "run {} has ended ({}); results are in {}",
            f.run_id,
            f.final_state.to_lowercase(),
            cli.run.display()
        ))),
        Ok(f) => {
            let ca = cli.ca.clone().or_else(|| (!f.tls_ca.is_empty()).then(|| PathBuf::from(&f.tls_ca)));
            Ok((cli.endpoint.clone().unwrap_or(f.endpoint), cli.token.clone().unwrap_or(f.token), ca))
        }
        Err(e) if cli.endpoint.is_some() => {
            Err(CtlError::NoRun(format!("--endpoint needs --token (or FEDHEX_TOKEN): {e}")))
        }
        Err(e) => Err(e),
    }
}

fn dur(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "?".into();
    }
    let s = s.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn print_ranks(st: &pb::StatusReply) {
    println!(
        "  {:>4}  {:<20} {:>8} {:<8} {:>10} {:>7} {:>12} {:>7} {:>9}  activity",
        "rank", "host", "pid", "device", "rss MiB", "cpu %", "last step ms", "threads", "idle"
    );
    for r in &st.ranks {
        println!(
            "  {:>4}  {:<20} {:>8} {:<8} {:>10.0} {:>7.0} {:>12.1} {:>7} {:>9}  {}{}",
            r.rank,
            r.host,
            r.pid,
            r.device,
            r.rss_bytes as f64 / 1048576.0,
            r.cpu_percent,
            1000.0 * r.last_step_seconds,
            r.threads,
            dur(r.seconds_since_progress),
            if r.stalled { "STALLED: " } else { "" },
            r.activity
        );
    }
}

fn print_status(st: &pb::StatusReply) {
    println!("run         {} ({})", st.run_id, state_name(st.state));
    println!(
        "progress    epoch {}/{}, step {}/{} (global step {})",
        st.epoch, st.epochs, st.step, st.steps_per_epoch, st.global_step
    );
    println!(
        "loss        train {:.5}  validation {:.5}  last batch {:.5}",
        st.train_loss, st.val_loss, st.last_step_loss
    );
    println!("speed       {:.0} events/s, ETA {}", st.events_per_second, dur(st.eta_seconds));
    match &st.last_checkpoint {
        Some(c) => println!("checkpoint  epoch {} step {}: {}", c.epoch, c.step_in_epoch, c.path),
        None => println!("checkpoint  none yet"),
    }
    if !st.message.is_empty() {
        println!("message     {}", st.message);
    }
    if !st.stall.is_empty() {
        println!("stall       {} (no progress for {} or more)", st.stall, dur(st.stall_seconds));
    }
    println!("ranks       {}", st.world_size);
    print_ranks(st);
}

fn event_line(ev: &pb::Event) -> Option<String> {
    use pb::event::Kind;
    Some(match ev.kind.as_ref()? {
        Kind::Step(s) => format!(
            "step   epoch {} step {}/{} (global {}) loss {:.5} {:.0} ev/s",
            s.epoch + 1,
            s.step,
            s.steps_per_epoch,
            s.global_step,
            s.loss,
            s.events_per_second
        ),
        Kind::Epoch(e) => format!(
            "epoch  {} done: train {:.5} validation {:.5} lr {:.3e} {:.1}s {:.0} ev/s",
            e.epoch, e.train_loss, e.val_loss, e.learning_rate, e.seconds, e.events_per_second
        ),
        Kind::Checkpoint(c) => format!("ckpt   epoch {} step {}: {}", c.epoch, c.step_in_epoch, c.path),
        Kind::State(s) => format!("state  {}", state_name(*s)),
        Kind::Stall(s) if s.cleared => format!("stall  rank {} ({}) moves again", s.rank, s.host),
        Kind::Stall(s) => {
            format!("stall  rank {} ({}) no progress for {}: {}", s.rank, s.host, dur(s.seconds), s.message)
        }
    })
}

/// When rank 0 does not answer: what the ranks' heartbeat files in the run
/// directory tell (rank 0 itself may be the stalled one).
fn heartbeat_diagnosis(run: &std::path::Path) -> Option<String> {
    use fedhex::comm::heartbeat;
    let beats = heartbeat::read_newest_job(&run.join(heartbeat::DIR))?;
    let now = fedhex::comm::progress::unix_ms();
    let d = heartbeat::diagnose(None, &beats, &[], now, now);
    let mut lines = vec!["the ranks' heartbeats (RUN_DIR/heartbeat) say:".to_string()];
    for r in &d.ranks {
        let seen = beats[r.rank].as_ref().map_or("no heartbeat".to_string(), |b| {
            format!("last heartbeat {} ago", dur(now.saturating_sub(b.beat_ms) as f64 / 1000.0))
        });
        lines.push(format!(
            "  rank {} (host {}, pid {}): {}, idle {}, {seen}",
            r.rank,
            r.host,
            r.pid,
            r.activity(),
            dur(r.seconds_since_progress)
        ));
    }
    let summary = d.summary();
    if !summary.is_empty() {
        lines.push(format!("  {summary}"));
    }
    Some(lines.join("\n"))
}

/// Prints a control-plane message as JSON (its serde form, from the proto).
fn print_json(v: &impl serde::Serialize) -> Result<(), CtlError> {
    let s = serde_json::to_string(v).map_err(|e| CtlError::Other(format!("JSON: {e}")))?;
    println!("{s}");
    Ok(())
}

async fn run(cli: Cli) -> Result<(), CtlError> {
    let (endpoint, token, ca) = target(&cli)?;
    let mut c = client::connect(&endpoint, &token, ca.as_deref()).await?;
    match cli.cmd {
        Cmd::Status { json } => {
            let st = client::status(&mut c, &endpoint).await?;
            if json {
                print_json(&st)?;
            } else {
                print_status(&st);
            }
        }
        Cmd::Ranks { json } => {
            let st = client::status(&mut c, &endpoint).await?;
            if json {
                print_json(&st.ranks)?;
            } else {
                print_ranks(&st);
            }
        }
        Cmd::Checkpoint => {
            let r = client::checkpoint(&mut c, &endpoint).await?;
            println!("checkpoint requested: it will be written at the end of epoch {}", r.at_epoch);
        }
        Cmd::Stop { now } => {
            let r = client::stop(&mut c, &endpoint, now).await?;
            if now {
                println!("stop requested: all ranks stop after the current step and save a resumable checkpoint");
            } else {
                println!("stop requested: all ranks stop at the end of epoch {} with a checkpoint", r.at_epoch);
            }
        }
        Cmd::Watch { rate, json } => {
            let mut stream = client::watch(&mut c, &endpoint, rate).await?;
            let mut last_state = None;
            let mut out = std::io::stdout().lock();
            loop {
                match stream.message().await {
                    Ok(Some(ev)) => {
                        if let Some(pb::event::Kind::State(s)) = ev.kind {
                            last_state = Some(s);
                        }
                        let line = if json { serde_json::to_string(&ev).ok() } else { event_line(&ev) };
                        if let Some(l) = line {
                            // A closed pipe (`| head`) ends the watch quietly.
                            if writeln!(out, "{l}").and_then(|_| out.flush()).is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(s) if s.code() == tonic::Code::Unknown || s.code() == tonic::Code::Unavailable => {
                        if last_state.is_some_and(|s| s == pb::RunState::Finished as i32) {
                            break;
                        }
                        return Err(CtlError::Unreachable(format!("{endpoint}: connection lost: {}", s.message())));
                    }
                    Err(s) => return Err(client::stream_error(&endpoint, s)),
                }
            }
            if last_state == Some(pb::RunState::Failed as i32) {
                return Err(CtlError::Other("the run failed".into()));
            }
        }
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let run_dir = cli.run.clone();
    let explicit = cli.endpoint.is_some();
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("error: {e}");
        // Rank 0 (the server) may be the rank that stalls: the heartbeats still tell.
        if matches!(e, CtlError::Unreachable(_) | CtlError::Other(_)) && !explicit {
            if let Some(d) = heartbeat_diagnosis(&run_dir) {
                eprintln!("{d}");
            }
        }
        std::process::exit(e.exit_code());
    }
}
