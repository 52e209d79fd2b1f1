//! Criterion benches: one training step, sampling and log-prob of the
//! reference network (10 MADE blocks, hidden [128], 2 features, 2 labels,
//! batch 1024) on the CPU with 1 and 2 intra-op threads. Throughput is
//! reported in events (elements) per second. Run: `make bench`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fedhex::bench::train_step;
use fedhex::config::NetworkConfig;
use fedhex::flow::Maf;
use fedhex::train::optim::{Adam, AdamConfig};
use tch::{Device, Kind, Tensor};

const BATCH: i64 = 1024;

fn reference() -> (Maf, Tensor, Tensor) {
    let flow = {
        let _rng = fedhex::rng::seeded(0);
        Maf::new(NetworkConfig::default().maf(2, 2), Device::Cpu).expect("reference network")
    };
    let x = Tensor::randn([BATCH, 2], (Kind::Float, Device::Cpu));
    let c = Tensor::randn([BATCH, 2], (Kind::Float, Device::Cpu));
    (flow, x, c)
}

fn flow_benches(c: &mut Criterion) {
    for threads in [1, 2] {
        tch::set_num_threads(threads);
        let (flow, x, cs) = reference();
        let mut opt = Adam::new(flow.var_store(), AdamConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8 });
        let mut g = c.benchmark_group(format!("reference_net_{threads}thread"));
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function("train_step_b1024", |b| b.iter(|| train_step(&flow, &mut opt, &x, &cs)));
        g.bench_function("sample_b1024", |b| b.iter(|| flow.sample(&cs)));
        g.bench_function("log_prob_b1024", |b| b.iter(|| tch::no_grad(|| flow.log_prob(&x, &cs))));
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = flow_benches
}
criterion_main!(benches);
