//! Whitening: exact inversion (also at the range ends, with logit) and a
//! log-determinant that matches autograd.

use fedhex::comm::SingleProcess;
use fedhex::data::whiten::{WhitenSpec, Whitening};
use ndarray::Array2;
use tch::{Device, Kind, Tensor};

fn fitted(logit: bool) -> (Whitening, Array2<f32>) {
    let xs = Array2::from_shape_fn((1000, 3), |(i, j)| (i as f32 * 0.37 + j as f32).sin() * (j + 1) as f32 + 5.0);
    let spec =
        WhitenSpec { names: vec!["a".into(), "b".into(), "c".into()], logit: vec![logit, false, logit], eps: 1e-3 };
    (Whitening::fit(xs.view(), &spec, &SingleProcess).unwrap(), xs)
}

fn tensor(a: &Array2<f32>) -> Tensor {
    Tensor::from_slice(a.as_slice().unwrap()).view([a.nrows() as i64, a.ncols() as i64])
}

#[test]
fn forward_then_inverse_is_identity_including_bounds() {
    for logit in [false, true] {
        let (w, xs) = fitted(logit);
        let mut with_bounds = xs.clone();
        for j in 0..3 {
            with_bounds[[0, j]] = w.dims[j].min as f32;
            with_bounds[[1, j]] = w.dims[j].max as f32;
        }
        let x = tensor(&with_bounds);
        let z = w.forward(&x);
        assert!(bool::try_from(z.isfinite().all()).unwrap(), "non-finite whitened value (logit {logit})");
        let back = w.inverse(&z);
        let err = (&back - &x).abs().max().double_value(&[]);
        assert!(err < 2e-4, "logit {logit}: round trip error {err}");
        // standardised: mean 0, std 1 on the fitted data
        let zf = w.forward(&tensor(&xs));
        let m = zf.mean_dim(0, false, Kind::Float).abs().max().double_value(&[]);
        assert!(m < 1e-3, "mean {m}");
    }
}

#[test]
fn log_abs_det_matches_autograd() {
    let (w, xs) = fitted(true);
    let x = tensor(&xs).narrow(0, 3, 5).to_kind(Kind::Double).to_kind(Kind::Float).set_requires_grad(true);
    let z = w.forward(&x);
    let ld = w.log_abs_det(&x);
    for row in 0..5 {
        let mut total = 0.0;
        for j in 0..3 {
            let g = Tensor::run_backward(&[z.get(row).get(j)], &[&x], true, false);
            total += g[0].get(row).get(j).double_value(&[]).abs().ln();
        }
        let got = ld.double_value(&[row]);
        assert!((got - total).abs() < 1e-3, "row {row}: {got} vs autograd {total}");
    }
    let _ = Device::Cpu;
}

#[test]
fn constant_dimension_stays_invertible() {
    let xs = Array2::from_shape_fn((10, 2), |(i, j)| if j == 0 { 3.0 } else { i as f32 });
    let spec = WhitenSpec { names: vec!["c".into(), "v".into()], logit: vec![false, false], eps: 1e-3 };
    let w = Whitening::fit(xs.view(), &spec, &SingleProcess).unwrap();
    w.validate().unwrap();
    let x = tensor(&xs);
    assert!((w.inverse(&w.forward(&x)) - &x).abs().max().double_value(&[]) < 1e-5);
}
