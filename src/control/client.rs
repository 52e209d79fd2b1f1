//! The client side of the control plane, used by `fedhex-ctl`: finds a run
//! (`control.json` or an explicit endpoint and token), calls it, and turns
//! failures into errors with distinct exit codes.

use super::grpc::{ControlFile, CONTROL_FILE};
use super::pb;
use std::path::Path;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Why a control call failed; each kind has its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// No run found (no control.json, bad arguments).
    #[error("{0}")]
    NoRun(String),
    /// The endpoint does not answer (job dead, wrong address, firewall).
    #[error("{0}")]
    Unreachable(String),
    /// The token was missing or wrong.
    #[error("{0}")]
    Unauthenticated(String),
    /// The run has ended; there is nothing to control.
    #[error("{0}")]
    Finished(String),
    /// Anything else the server answered.
    #[error("{0}")]
    Other(String),
}

impl CtlError {
    /// Process exit code: 2 no run, 3 unreachable, 4 unauthenticated, 5 finished, 1 other.
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::NoRun(_) => 2,
            CtlError::Unreachable(_) => 3,
            CtlError::Unauthenticated(_) => 4,
            CtlError::Finished(_) => 5,
            CtlError::Other(_) => 1,
        }
    }

    fn from_status(endpoint: &str, s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::Unauthenticated => {
                CtlError::Unauthenticated(format!("{endpoint}: unauthenticated: {}", s.message()))
            }
            tonic::Code::Unavailable => CtlError::Unreachable(format!("{endpoint}: unreachable: {}", s.message())),
            // The request timed out: the connection was accepted (by the kernel) but
            // nobody answered, as when rank 0 is stopped or hung.
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => {
                CtlError::Unreachable(format!("{endpoint}: no answer ({}); rank 0 may be stopped or hung", s.message()))
            }
            tonic::Code::FailedPrecondition => CtlError::Finished(format!("{endpoint}: {}", s.message())),
            _ => CtlError::Other(format!("{endpoint}: {}: {}", s.code(), s.message())),
        }
    }
}

/// Reads `RUN_DIR/control.json`.
pub fn read_control_file(run_dir: &Path) -> Result<ControlFile, CtlError> {
    let p = run_dir.join(CONTROL_FILE);
    let text = std::fs::read_to_string(&p)
        .map_err(|e| CtlError::NoRun(format!("{}: {e} (is this a run directory of a started job?)", p.display())))?;
    serde_json::from_str(&text).map_err(|e| CtlError::NoRun(format!("{}: not a control file: {e}", p.display())))
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Auth(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A connected client.
pub type Client = pb::control_client::ControlClient<InterceptedService<Channel, Auth>>;

/// Connects to `endpoint` with `token` (a few seconds' timeout). An
/// `https://` endpoint uses TLS, trusting the PEM certificate `ca`.
pub async fn connect(endpoint: &str, token: &str, ca: Option<&Path>) -> Result<Client, CtlError> {
    let mut ep = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| CtlError::NoRun(format!("'{endpoint}' is not a valid endpoint: {e}")))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10));
    if endpoint.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).map_err(|e| CtlError::NoRun(format!("{}: {e}", ca.display())))?;
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        ep = ep.tls_config(tls).map_err(|e| CtlError::NoRun(format!("TLS set-up for {endpoint}: {e}")))?;
    }
    let channel = ep.connect().await.map_err(|e| {
        CtlError::Unreachable(format!("{endpoint}: unreachable ({}); the job may have died", error_chain(&e)))
    })?;
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| CtlError::NoRun("the token contains characters not allowed in gRPC metadata".into()))?;
    Ok(pb::control_client::ControlClient::with_interceptor(channel, Auth(value)))
}

/// An error and its sources, joined with ": ".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Calls `Status`.
pub async fn status(c: &mut Client, endpoint: &str) -> Result<pb::StatusReply, CtlError> {
    c.status(pb::StatusRequest {}).await.map(|r| r.into_inner()).map_err(|s| CtlError::from_status(endpoint, s))
}

/// Calls `Checkpoint`.
pub async fn checkpoint(c: &mut Client, endpoint: &str) -> Result<pb::CheckpointReply, CtlError> {
    c.checkpoint(pb::CheckpointRequest {}).await.map(|r| r.into_inner()).map_err(|s| CtlError::from_status(endpoint, s))
}

/// Calls `Stop`.
pub async fn stop(c: &mut Client, endpoint: &str, now: bool) -> Result<pb::StopReply, CtlError> {
    c.stop(pb::StopRequest { now }).await.map(|r| r.into_inner()).map_err(|s| CtlError::from_status(endpoint, s))
}

/// Opens a `Watch` stream.
pub async fn watch(
    c: &mut Client,
    endpoint: &str,
    max_step_rate: f64,
) -> Result<tonic::Streaming<pb::Event>, CtlError> {
    c.watch(pb::WatchRequest { max_step_rate })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| CtlError::from_status(endpoint, s))
}

/// Maps a stream error to a [`CtlError`].
pub fn stream_error(endpoint: &str, s: tonic::Status) -> CtlError {
    CtlError::from_status(endpoint, s)
}

/// Human name of a state number.
pub fn state_name(state: i32) -> String {
    pb::RunState::try_from(state).map_or_else(|_| format!("state {state}"), |s| s.as_str_name().to_lowercase())
}
