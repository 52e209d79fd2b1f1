//! Criterion benches: one training step, sampling and log-prob of the
//! reference network (10 affine MADE blocks with the order reversed between
//! them, hidden [128], 2 features, 2 labels, batch 1024) and of the default
//! network (the same with `affine_spline` blocks and learned LU mixing) on
//! the CPU with 1 and 2 intra-op threads, through the hand-written CPU pass
//! where it applies (as training does). Throughput is reported in events
//! (elements) per second; and what the stall watchdog's progress marks add
//! to a collective (`collective/*`). Run: `make bench`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fedhex::bench::train_step;
use fedhex::config::NetworkConfig;
use fedhex::flow::{Maf, Permutation, Transform};
use fedhex::train::optim::{Adam, AdamConfig};
use fedhex::train::step::{GradientPass, Packet};
use tch::{Device, Kind, Tensor};

const BATCH: i64 = 1024;

fn network(name: &str) -> NetworkConfig {
    match name {
        "reference" => {
            NetworkConfig { transform: Transform::Affine, permutation: Permutation::Reverse, ..Default::default() }
        }
        _ => NetworkConfig::default(),
    }
}

fn flow_benches(c: &mut Criterion) {
    for name in ["reference", "default"] {
        for threads in [1, 2] {
            tch::set_num_threads(threads);
            let flow = {
                let _rng = fedhex::rng::seeded(0);
                Maf::new(network(name).maf(2, 2), Device::Cpu).expect("benchmark network")
            };
            let x = Tensor::randn([BATCH, 2], (Kind::Float, Device::Cpu));
            let cs = Tensor::randn([BATCH, 2], (Kind::Float, Device::Cpu));
            let mut opt = Adam::new(flow.var_store(), AdamConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8 });
            let mut g = c.benchmark_group(format!("{name}_net_{threads}thread"));
            g.throughput(Throughput::Elements(BATCH as u64));
            let mut pass = GradientPass::new(&flow, &opt, &x, &cs);
            let mut packet = Packet::new(opt.numel() as usize);
            let rows: Vec<i64> = (0..BATCH).collect();
            g.bench_function("train_step_b1024", |b| {
                b.iter(|| train_step(&flow, &mut opt, &mut pass, (&x, &cs), &rows, &mut packet))
            });
            let engine = fedhex::flow::Engine::select(&flow);
            g.bench_function("sample_b1024", |b| b.iter(|| engine.sample(&flow, &cs)));
            g.bench_function("log_prob_b1024", |b| b.iter(|| engine.log_prob(&flow, &x, &cs)));
            g.finish();
        }
    }
}

/// What the stall watchdog adds to every collective: the progress marks
/// [`fedhex::comm::progress::Watched`] records around it (two clock reads,
/// four relaxed atomic stores), measured around the single-process
/// all-reduce of the reference network's packet (which does nothing), so the
/// difference is the wrapper alone.
fn comm_benches(c: &mut Criterion) {
    use fedhex::comm::progress::{Progress, Watched};
    use fedhex::comm::{Communicator, SingleProcess};
    let mut buf = vec![0f32; 20_000];
    let plain: &dyn Communicator = &SingleProcess;
    let watched = Watched::new(&SingleProcess, Progress::new());
    let mut g = c.benchmark_group("collective");
    g.bench_function("allreduce_single_process", |b| b.iter(|| plain.allreduce_sum_f32(&mut buf)));
    g.bench_function("allreduce_single_process_watched", |b| b.iter(|| watched.allreduce_sum_f32(&mut buf)));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = flow_benches, comm_benches
}
criterion_main!(benches);
