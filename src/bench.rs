//! Throughput measurement of the flow (training step, sampling, log-prob),
//! shared by `fedhex bench`, the criterion benches and the GPU check.

use crate::config::NetworkConfig;
use crate::error::Result;
use crate::flow::Maf;
use crate::train::clip::GradClip;
use crate::train::optim::{Adam, AdamConfig};
use crate::train::step::{update, Gradient, GradientPass, Packet};
use serde::Serialize;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Events per second of the three hot paths.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Device used.
    pub device: String,
    /// libtorch intra-op threads.
    pub threads: usize,
    /// Events per batch.
    pub batch: usize,
    /// Training events per second (forward, backward, Adam step).
    pub train_events_per_s: f64,
    /// Sampling events per second.
    pub sample_events_per_s: f64,
    /// Log-probability evaluations per second.
    pub log_prob_events_per_s: f64,
    /// Peak resident memory of the process so far, MiB (Linux; 0 elsewhere).
    pub peak_rss_mib: f64,
    /// The CPU engine's kernels on this CPU (`avx512`, `avx2`, `portable`).
    pub cpu_kernels: String,
}

pub use crate::resources::peak_rss_mib;

/// Waits for queued device work (no-op on CPU).
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// One training step of `flow` on the events `rows` of `(x, c)`, as training
/// takes it: the loss and gradient by `pass` (the CPU engine or autograd),
/// then the update (no clipping, learning rate 1e-4).
pub fn train_step(
    flow: &Maf,
    opt: &mut Adam,
    pass: &mut GradientPass,
    (x, c): (&Tensor, &Tensor),
    rows: &[i64],
    packet: &mut Packet,
) {
    let grad = pass.gradient(flow, opt, (x, c), rows, packet, || None, |_| None);
    let device_grad = match &grad {
        Gradient::Device { flat, .. } => Some(flat),
        Gradient::Host { .. } => None,
    };
    update(opt, &mut GradClip::new(0.0, 0.0), packet, device_grad, rows.len(), 1e-4, 0);
}

fn time_it(device: Device, min_seconds: f64, events: usize, mut f: impl FnMut()) -> f64 {
    f();
    sync(device);
    let start = Instant::now();
    let mut n = 0usize;
    while n < 3 || start.elapsed().as_secs_f64() < min_seconds {
        f();
        n += 1;
    }
    sync(device);
    (n * events) as f64 / start.elapsed().as_secs_f64()
}

/// Measures the flow of `net` with `d` features and `l` labels at `batch`
/// events, each path for at least `min_seconds`.
pub fn flow_throughput(
    net: &NetworkConfig,
    d: usize,
    l: usize,
    batch: usize,
    device: Device,
    min_seconds: f64,
) -> Result<Throughput> {
    let flow = {
        let _rng = crate::rng::seeded(0);
        Maf::new(net.maf(d, l), device)?
    };
    let mut opt = Adam::new(flow.var_store(), AdamConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8 });
    let x = Tensor::randn([batch as i64, d as i64], (Kind::Float, device));
    let c = Tensor::randn([batch as i64, l as i64], (Kind::Float, device));
    let mut pass = GradientPass::new(&flow, &opt, &x, &c);
    let mut packet = Packet::new(opt.numel() as usize);
    let rows: Vec<i64> = (0..batch as i64).collect();
    let train = time_it(device, min_seconds, batch, || {
        train_step(&flow, &mut opt, &mut pass, (&x, &c), &rows, &mut packet);
    });
    let engine = crate::flow::Engine::select(&flow);
    let sample = time_it(device, min_seconds, batch, || {
        let _ = engine.sample(&flow, &c);
    });
    let log_prob = time_it(device, min_seconds, batch, || {
        let _ = engine.log_prob(&flow, &x, &c);
    });
    Ok(Throughput {
        device: format!("{device:?}"),
        threads: tch::get_num_threads().max(0) as usize,
        batch,
        train_events_per_s: train,
        sample_events_per_s: sample,
        log_prob_events_per_s: log_prob,
        peak_rss_mib: peak_rss_mib(),
        cpu_kernels: crate::flow::engine::cpu::kernels().to_string(),
    })
}
