//! Log output of the binaries: `tracing` to stderr, filtered by `RUST_LOG`,
//! with colour codes only when stderr is a terminal and `NO_COLOR` is unset
//! (a Slurm job's `.err` file or a `2> train.log` stays plain text), and, for
//! the ranks of a distributed run, the rank on every line.

use std::io::IsTerminal;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

/// Whether log lines may carry ANSI colour codes: stderr is a terminal and
/// `NO_COLOR` is unset or empty (<https://no-color.org>).
pub fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The time stamp followed by `rank N`.
struct RankTime(usize);

impl FormatTime for RankTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        SystemTime.format_time(w)?;
        write!(w, " rank {}", self.0)
    }
}

/// Installs the global subscriber: `default` is the filter when `RUST_LOG`
/// is unset; with `rank`, every line names it. Does nothing when a
/// subscriber is already installed (tests).
pub fn init(default: &str, rank: Option<usize>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour());
    let _ = match rank {
        Some(r) => builder.with_timer(RankTime(r)).try_init(),
        None => builder.try_init(),
    };
}
