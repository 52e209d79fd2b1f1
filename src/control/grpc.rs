//! The gRPC service (tonic) on rank 0: proto ⇄ [`ControlState`], token
//! authentication, server reflection, and the server's own thread and runtime.
//! No training code here.

use super::{pb, ControlState, Event, Phase, Stamped};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// Largest request the service decodes (its requests are tiny).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Name of the discovery file in the run directory.
pub const CONTROL_FILE: &str = "control.json";

/// What `control.json` holds (mode 0600): how to reach and authenticate to a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlFile {
    /// `http://HOST:PORT` of the service.
    pub endpoint: String,
    /// Bearer token every call must carry.
    pub token: String,
    /// Identifier of the run.
    pub run_id: String,
    /// Host and process of rank 0.
    pub host: String,
    /// Process id of rank 0.
    pub pid: u32,
    /// Set when the run has ended; the endpoint is then gone.
    pub finished: bool,
    /// Final state when finished ("FINISHED" or "FAILED").
    #[serde(default)]
    pub final_state: String,
    /// With TLS: the certificate (PEM path) clients should trust.
    #[serde(default)]
    pub tls_ca: String,
}

/// TLS identity of the server (PEM files).
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// CA certificate clients should trust (recorded in control.json).
    pub ca: PathBuf,
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh random token (32 bytes, hex).
pub fn new_token() -> Result<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| Error::Comm(format!("no randomness for the control token: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn authorize(token: Arc<String>) -> impl Fn(Request<()>) -> std::result::Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let given = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        let expected = format!("Bearer {token}");
        if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or wrong token (see control.json in the run directory)"))
        }
    }
}

/// The service implementation: reads snapshots, sets flags.
#[derive(Debug, Clone)]
pub struct Service {
    state: Arc<ControlState>,
}

type EventStream = Pin<Box<dyn Stream<Item = std::result::Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl pb::control_server::Control for Service {
    async fn status(&self, _req: Request<pb::StatusRequest>) -> std::result::Result<Response<pb::StatusReply>, Status> {
        Ok(Response::new(pb::StatusReply::from(&self.state.snapshot())))
    }

    type WatchStream = EventStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> std::result::Result<Response<EventStream>, Status> {
        let rate = req.into_inner().max_step_rate;
        let rate = if rate.is_finite() && rate > 0.0 { rate } else { 2.0 };
        let min_gap = Duration::from_secs_f64(1.0 / rate);
        let rx = self.state.subscribe();
        let now_phase = || Stamped { unix_time: super::unix_now(), event: Event::Phase(self.state.snapshot().phase) };
        let current = now_phase();
        let ended = self.state.ended();
        let mut last_step: Option<tokio::time::Instant> = None;
        let mut done = ended;
        // A lagging receiver skips what it missed (bounded ring): a slow client
        // never slows the trainer nor grows memory.
        let events =
            tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|r| r.ok()).filter(move |ev| match ev.event {
                Event::Step { .. } => {
                    let now = tokio::time::Instant::now();
                    if last_step.is_some_and(|t| now.duration_since(t) < min_gap) {
                        false
                    } else {
                        last_step = Some(now);
                        true
                    }
                }
                _ => true,
            });
        let stream = tokio_stream::once(current).chain(events).take_while(move |ev| {
            if done {
                return false;
            }
            if let Event::Phase(p) = ev.event {
                done = p.ended();
            }
            true
        });
        // Protobuf only here, at the edge.
        let stream: EventStream = if ended {
            Box::pin(tokio_stream::once(Ok(pb::Event::from(&now_phase()))))
        } else {
            Box::pin(stream.map(|ev| Ok(pb::Event::from(&ev))))
        };
        Ok(Response::new(stream))
    }

    async fn checkpoint(
        &self,
        _req: Request<pb::CheckpointRequest>,
    ) -> std::result::Result<Response<pb::CheckpointReply>, Status> {
        if self.state.ended() {
            return Err(Status::failed_precondition("the run has ended"));
        }
        Ok(Response::new(pb::CheckpointReply { at_epoch: self.state.apply(super::Command::Checkpoint) }))
    }

    async fn stop(&self, req: Request<pb::StopRequest>) -> std::result::Result<Response<pb::StopReply>, Status> {
        if self.state.ended() {
            return Err(Status::failed_precondition("the run has ended"));
        }
        let now = req.into_inner().now;
        Ok(Response::new(pb::StopReply { at_epoch: self.state.apply(super::Command::Stop { now }), now }))
    }
}

/// A running control server; [`ControlServer::finish`] ends it.
pub struct ControlServer {
    state: Arc<ControlState>,
    /// The address it listens on.
    pub addr: SocketAddr,
    file: ControlFile,
    file_path: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn write_control_file(path: &Path, cf: &ControlFile) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = crate::atomic::sibling(path, "tmp");
    let json = serde_json::to_vec_pretty(cf).map_err(|e| Error::Comm(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    f.write_all(&json).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Host name of this machine.
pub fn host_name() -> String {
    sysinfo::System::host_name().unwrap_or_else(|| "localhost".into())
}

/// Binds the control plane's listening socket (e.g. `127.0.0.1:0`,
/// `0.0.0.0:0` on a cluster), non-blocking, with an error naming the address.
pub fn bind(listen: &str) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| Error::Comm(format!("control plane: cannot listen on {listen}: {e}")))?;
    listener.set_nonblocking(true).map_err(|e| Error::Comm(format!("control plane: {e}")))?;
    Ok(listener)
}

/// Serves the control service (token-checked, with reflection, TLS when an
/// identity is given) on `listener` until `shutdown` completes. Tests drive
/// it in-process on a bound `127.0.0.1:0`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ControlState>,
    token: Arc<String>,
    identity: Option<tonic::transport::Identity>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let control =
        pb::control_server::ControlServer::new(Service { state }).max_decoding_message_size(MAX_REQUEST_BYTES);
    let control = tonic::service::interceptor::InterceptedService::new(control, authorize(token.clone()));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    let mut server = tonic::transport::Server::builder();
    if let Some(id) = identity {
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(id))
            .map_err(|e| Error::Comm(format!("control plane TLS: {e}")))?;
    }
    let mut builder =
        server.concurrency_limit_per_connection(32).timeout(Duration::from_secs(3600)).add_service(control);
    if let Ok(r) = reflection {
        builder = builder.add_service(tonic::service::interceptor::InterceptedService::new(r, authorize(token)));
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    builder
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Comm(format!("control plane: {e}")))
}

impl ControlServer {
    /// Writes `RUN_DIR/control.json` (endpoint + fresh token, mode 0600) and
    /// serves on `listener` ([`bind`]) on a thread and runtime of its own.
    pub fn start(
        std_listener: std::net::TcpListener,
        run_dir: &Path,
        state: Arc<ControlState>,
        tls: Option<Tls>,
    ) -> Result<Self> {
        let identity = match &tls {
            Some(t) => {
                let read = |p: &Path| std::fs::read(p).map_err(|e| Error::io(p, e));
                Some(tonic::transport::Identity::from_pem(read(&t.cert)?, read(&t.key)?))
            }
            None => None,
        };
        let addr = std_listener.local_addr().map_err(|e| Error::Comm(format!("control plane: {e}")))?;
        let host = host_name();
        let shown = if addr.ip().is_unspecified() { host.clone() } else { addr.ip().to_string() };
        let token = new_token()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let shown = if tls.is_some() && addr.ip().is_loopback() { "localhost".to_string() } else { shown };
        let tls_ca = tls
            .as_ref()
            .map(|t| std::fs::canonicalize(&t.ca).unwrap_or_else(|_| t.ca.clone()).display().to_string())
            .unwrap_or_default();
        let file = ControlFile {
            tls_ca,
            endpoint: format!("{scheme}://{shown}:{}", addr.port()),
            token: token.clone(),
            run_id: state.snapshot().run_id,
            host,
            pid: std::process::id(),
            finished: false,
            final_state: String::new(),
        };
        let file_path = run_dir.join(CONTROL_FILE);
        write_control_file(&file_path, &file)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fedhex-control")
            .enable_all()
            .build()
            .map_err(|e| Error::Comm(format!("control plane runtime: {e}")))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = state.clone();
        let token = Arc::new(token);
        let thread = std::thread::Builder::new()
            .name("fedhex-control".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!("control plane: {e}");
                            return;
                        }
                    };
                    let (gtx, grx) = tokio::sync::oneshot::channel::<()>();
                    let server = tokio::spawn(serve(listener, served, token, identity, async {
                        let _ = grx.await;
                    }));
                    let _ = rx.await;
                    let _ = gtx.send(());
                    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(2), server).await {
                        tracing::error!("{e}");
                    }
                });
            })
            .map_err(|e| Error::Comm(format!("control plane thread: {e}")))?;
        tracing::info!("control plane on {} (see {})", file.endpoint, file_path.display());
        Ok(ControlServer { state, addr, file, file_path, shutdown: Some(tx), thread: Some(thread) })
    }

    /// The state it serves.
    pub fn state(&self) -> &Arc<ControlState> {
        &self.state
    }

    /// A handle that marks the run failed from another thread: the step
    /// timeout's watchdog uses it right before it aborts the job, so
    /// watchers and `control.json` tell why the run ended.
    pub fn failure(&self) -> Failure {
        Failure { state: self.state.clone(), file: self.file.clone(), file_path: self.file_path.clone() }
    }

    /// Marks the run ended (watchers get the final state), records it in
    /// `control.json`, and stops the server.
    pub fn finish(mut self, ok: bool, message: Option<String>) {
        let phase = if ok { Phase::Finished } else { Phase::Failed };
        self.state.set_phase(phase, message);
        std::thread::sleep(Duration::from_millis(200));
        self.file.finished = true;
        self.file.final_state = pb::RunState::from(phase).as_str_name().into();
        if let Err(e) = write_control_file(&self.file_path, &self.file) {
            tracing::warn!("{e}");
        }
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Marks a run failed without stopping its server (see [`ControlServer::failure`]).
#[derive(Debug, Clone)]
pub struct Failure {
    state: Arc<ControlState>,
    file: ControlFile,
    file_path: PathBuf,
}

impl Failure {
    /// Sets the phase to failed with `message` (watchers get it) and records
    /// the end in `control.json`.
    pub fn fail(&self, message: &str) {
        self.state.set_phase(Phase::Failed, Some(message.to_string()));
        // Time for watchers to receive the final state.
        std::thread::sleep(Duration::from_millis(200));
        let mut file = self.file.clone();
        file.finished = true;
        file.final_state = pb::RunState::from(Phase::Failed).as_str_name().into();
        if let Err(e) = write_control_file(&self.file_path, &file) {
            tracing::warn!("{e}");
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop();
    }
}
