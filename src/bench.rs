//! Throughput measurement of the flow (training step, sampling, log-prob),
//! shared by `fedhex bench`, the criterion benches and the GPU check.

use crate::config::NetworkConfig;
use crate::error::Result;
use crate::flow::fast::{to_host, FastTrainer};
use crate::flow::Maf;
use crate::train::optim::{Adam, AdamConfig};
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
}

pub use crate::resources::peak_rss_mib;

/// Waits for queued device work (no-op on CPU).
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// One training step of `flow` on `(x, c)` with `opt`.
pub fn train_step(flow: &Maf, opt: &mut Adam, x: &Tensor, c: &Tensor) {
    opt.zero_grad();
    let loss = flow.log_prob(x, c).sum(Kind::Float).neg();
    loss.backward();
    let g = opt.flat_grad();
    opt.step_flat(&g, 1.0 / x.size()[0] as f64, 1e-4);
}

/// One training step through the hand-written CPU pass ([`FastTrainer`]):
/// `x`, `c` are host copies of the batch, `rows` its row numbers, `grad` a
/// buffer of [`FastTrainer::numel`] floats.
pub fn fast_train_step(
    fast: &mut FastTrainer,
    opt: &mut Adam,
    x: &[f32],
    c: &[f32],
    rows: &[i64],
    grad: &mut [f32],
) -> f64 {
    let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1);
    let loss = fast.loss_and_grad(opt.flat_params(), x, c, rows, threads, grad);
    opt.step_host(grad, 1.0 / rows.len() as f64, 1e-4);
    loss
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
    let train = match crate::flow::engine::trainer(&flow, opt.names(), opt.numels()) {
        Some(mut fast) => {
            let (hx, hc) = (to_host(&x), to_host(&c));
            let rows: Vec<i64> = (0..batch as i64).collect();
            let mut grad = vec![0f32; fast.numel()];
            time_it(device, min_seconds, batch, || {
                fast_train_step(&mut fast, &mut opt, &hx, &hc, &rows, &mut grad);
            })
        }
        None => time_it(device, min_seconds, batch, || train_step(&flow, &mut opt, &x, &c)),
    };
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
    })
}
