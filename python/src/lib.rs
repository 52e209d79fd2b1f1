//! `fedhex._native`: the Python bindings of the FEDHEX library (PyO3).
//!
//! Thin on purpose: each function converts its arguments (anything NumPy can
//! turn into a float32 array, checked against the model's shapes), calls the
//! library with the GIL released, and converts the result. No flow code lives
//! here: sampling is [`fedhex::generate::sample_with_cuts`] (the events of
//! `fedhex sample`, byte for byte), densities are [`fedhex::flow::Model::log_prob`],
//! fits are [`fedhex::analysis::fit::fit_label`] (the `fit.json` of `fedhex fit`).
//!
//! Errors: library errors become Python exceptions carrying the library's
//! message (`ValueError` for bad data or arguments, `OSError` for files,
//! `fedhex.FedhexError` otherwise); a panic inside libtorch or the library is
//! caught and raised as `FedhexError`, never unwound across the FFI boundary.

use fedhex::error::Error;
use fedhex::flow::Model as FlowModel;
use numpy::{PyArray1, PyArray2, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyOSError, PyUserWarning, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use tch::{Device, Tensor};

pyo3::create_exception!(
    fedhex,
    FedhexError,
    PyException,
    "An error reported by the FEDHEX library (a corrupt model, a failed fit, a libtorch failure)."
);

/// Generated events `(samples [N, D], labels [N, L])` as NumPy arrays.
type Events<'py> = (Bound<'py, PyArray2<f32>>, Bound<'py, PyArray2<f32>>);

/// Events per network call of `Model.log_prob` (bounds the memory held, like `fedhex fit`'s chunk).
const LOG_PROB_CHUNK: usize = 65_536;

/// Why a call into the library failed, carried out of the GIL-free section.
enum Failure {
    Lib(Error),
    Panic(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Lib(e)
    }
}

impl From<tch::TchError> for Failure {
    fn from(e: tch::TchError) -> Self {
        Failure::Lib(Error::Torch(e))
    }
}

impl From<Failure> for PyErr {
    fn from(f: Failure) -> PyErr {
        match f {
            Failure::Panic(msg) => FedhexError::new_err(format!("internal error (a panic in the library): {msg}")),
            Failure::Lib(e) => {
                let msg = e.to_string();
                match e {
                    Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                        PyFileNotFoundError::new_err(msg)
                    }
                    Error::Io { .. } => PyOSError::new_err(msg),
                    Error::Config(_) | Error::Data(_) => PyValueError::new_err(msg),
                    _ => FedhexError::new_err(msg),
                }
            }
        }
    }
}

/// Runs `f` with the GIL released, turning a panic into a [`Failure`].
fn call<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T, Failure> + Send) -> PyResult<T> {
    py.detach(|| match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Failure::Panic(msg))
        }
    })
    .map_err(PyErr::from)
}

/// `obj` as a C-contiguous float32 array (`numpy.ascontiguousarray`): lists,
/// arrays of any dtype, anything with `__array__`.
fn f32_array<'py>(py: Python<'py>, obj: &Bound<'py, PyAny>, name: &str) -> PyResult<PyReadonlyArrayDyn<'py, f32>> {
    let np = py.import("numpy")?;
    let kw = PyDict::new(py);
    kw.set_item("dtype", np.getattr("float32")?)?;
    let arr = np
        .call_method("ascontiguousarray", (obj,), Some(&kw))
        .map_err(|e| PyValueError::new_err(format!("{name}: not convertible to a float32 array ({e})")))?;
    arr.extract::<PyReadonlyArrayDyn<'py, f32>>().map_err(|e| PyValueError::new_err(format!("{name}: {e}")))
}

/// `[a, b, c]` for messages.
fn shape_str(shape: &[usize]) -> String {
    format!("[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// A loaded FEDHEX model directory (`fedhex.load`). Thread-safe: calls on one
/// model from several threads run one at a time, with the GIL released.
#[pyclass(module = "fedhex", name = "Model", frozen)]
struct Model {
    inner: Mutex<FlowModel>,
    path: String,
    device: String,
    features: Vec<String>,
    labels: Vec<String>,
    label_ranges: Vec<(f64, f64)>,
    acceptance: Vec<String>,
    training_labels: Option<Vec<Vec<f64>>>,
    members: usize,
    description: String,
}

impl Model {
    fn lock(&self) -> MutexGuard<'_, FlowModel> {
        // A panic inside a call is reported as an error; the model is only read, so it stays usable.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Labels `[L]` (one point) or `[K, L]` as rows.
    fn label_rows(&self, py: Python<'_>, labels: &Bound<'_, PyAny>, rows: Option<usize>) -> PyResult<Vec<Vec<f32>>> {
        let arr = f32_array(py, labels, "labels")?;
        let l = self.labels.len();
        let shape = arr.shape().to_vec();
        let expected = match rows {
            None => format!("[{l}] (one label point) or [K, {l}]"),
            Some(n) => format!("[{l}] (one label for every event) or [{n}, {l}]"),
        };
        let bad = || {
            PyValueError::new_err(format!(
                "labels: expected shape {expected} for the model's labels ({}), got {}",
                self.labels.join(", "),
                shape_str(&shape)
            ))
        };
        let flat = arr.as_slice().map_err(|e| PyValueError::new_err(format!("labels: {e}")))?;
        match shape.as_slice() {
            [n] if *n == l => Ok(vec![flat.to_vec()]),
            [k, n] if *n == l && *k > 0 && rows.is_none_or(|r| r == *k) => {
                Ok(flat.chunks_exact(l.max(1)).map(<[f32]>::to_vec).collect())
            }
            _ => Err(bad()),
        }
    }
}

#[pymethods]
impl Model {
    /// Feature (column) names, in the order of the samples' columns.
    #[getter]
    fn features(&self) -> Vec<String> {
        self.features.clone()
    }

    /// Label (condition) names, in the order of the labels' columns.
    #[getter]
    fn labels(&self) -> Vec<String> {
        self.labels.clone()
    }

    /// The training range `(lo, hi)` of each label in raw units.
    #[getter]
    fn label_ranges(&self) -> Vec<(f64, f64)> {
        self.label_ranges.clone()
    }

    /// The label points the model was trained on (validation labels excluded),
    /// or None when the model file does not record them.
    #[getter]
    fn training_labels(&self) -> Option<Vec<Vec<f64>>> {
        self.training_labels.clone()
    }

    /// The acceptance cuts of the training data (applied to generated events), as text.
    #[getter]
    fn acceptance(&self) -> Vec<String> {
        self.acceptance.clone()
    }

    /// The model directory this was loaded from.
    #[getter]
    fn path(&self) -> String {
        self.path.clone()
    }

    /// The device the model runs on (`cpu`, `cuda:0`, ...).
    #[getter]
    fn device(&self) -> String {
        self.device.clone()
    }

    /// Number of flows: 1, or the size of an ensemble (`fedhex ensemble`),
    /// whose density is the equal-weight mixture of its flows'.
    #[getter]
    fn members(&self) -> usize {
        self.members
    }

    /// A few lines describing the model: network, features, labels and their ranges, cuts, training.
    fn description(&self) -> String {
        self.description.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "fedhex.Model('{}', features={:?}, labels={:?}, device='{}')",
            self.path, self.features, self.labels, self.device
        )
    }

    /// Draws `n` events at each label point; see the stub file for the contract.
    #[pyo3(signature = (labels, n, seed=1, batch=None))]
    fn sample<'py>(
        &self,
        py: Python<'py>,
        labels: &Bound<'py, PyAny>,
        n: usize,
        seed: u64,
        batch: Option<usize>,
    ) -> PyResult<Events<'py>> {
        let points = self.label_rows(py, labels, None)?;
        let batch = batch.unwrap_or(fedhex::generate::DEFAULT_BATCH);
        if batch == 0 {
            return Err(PyValueError::new_err("batch must be at least 1"));
        }
        if n == 0 {
            return Err(PyValueError::new_err("n must be at least 1"));
        }
        let (set, warnings) = call(py, || {
            let model = self.lock();
            let warnings = fedhex::generate::check_labels(&model, &points)?;
            let set = fedhex::generate::sample_with_cuts(&model, &points, n, seed, batch, &[])?;
            Ok((set, warnings))
        })?;
        for w in warnings {
            let msg = std::ffi::CString::new(w).unwrap_or_default();
            PyErr::warn(py, py.get_type::<PyUserWarning>().as_any(), &msg, 1)?;
        }
        Ok((PyArray2::from_owned_array(py, set.samples), PyArray2::from_owned_array(py, set.labels)))
    }

    /// `log p(x | label)` per event (float64 values of the library's float32 numbers).
    fn log_prob<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        labels: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let xs = f32_array(py, x, "x")?;
        let d = self.features.len();
        let n = match xs.shape() {
            [n, dd] if *dd == d => *n,
            other => {
                return Err(PyValueError::new_err(format!(
                    "x: expected shape [N, {d}] for the model's features ({}), got {}",
                    self.features.join(", "),
                    shape_str(other)
                )))
            }
        };
        let flat = xs.as_slice().map_err(|e| PyValueError::new_err(format!("x: {e}")))?.to_vec();
        let rows = self.label_rows(py, labels, Some(n))?;
        let l = self.labels.len();
        let cs: Vec<f32> = if rows.len() == 1 { rows[0].repeat(n) } else { rows.concat() };
        let out = call(py, || {
            let model = self.lock();
            let mut out = Vec::with_capacity(n);
            tch::no_grad(|| -> Result<(), Failure> {
                for start in (0..n).step_by(LOG_PROB_CHUNK) {
                    let m = LOG_PROB_CHUNK.min(n - start);
                    let x = Tensor::from_slice(&flat[start * d..(start + m) * d]).view([m as i64, d as i64]);
                    let c = Tensor::from_slice(&cs[start * l..(start + m) * l]).view([m as i64, l as i64]);
                    let lp = model.log_prob(&x, &c).to_device(Device::Cpu).to_kind(tch::Kind::Double);
                    out.extend(Vec::<f64>::try_from(&lp)?);
                }
                Ok(())
            })?;
            Ok(out)
        })?;
        Ok(PyArray1::from_vec(py, out))
    }
}

/// Loads a model directory (or its model.json) onto `device`: "cpu", "cuda", "cuda:N" or "auto".
#[pyfunction]
#[pyo3(signature = (path, device="cpu"))]
fn load(py: Python<'_>, path: PathBuf, device: &str) -> PyResult<Model> {
    if !path.exists() {
        return Err(PyFileNotFoundError::new_err(format!("model {}: no such model directory", path.display())));
    }
    let spec = fedhex::device::parse_device(device).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let (model, ranges) = call(py, || {
        let dev = fedhex::device::resolve(spec, 0)?;
        let model = FlowModel::load(&path, dev)?;
        let ranges = model.label_ranges();
        Ok((model, ranges))
    })?;
    let features = model.features.names();
    let labels = model.labels.names();
    let label_ranges: Vec<(f64, f64)> = ranges.into_iter().map(|[a, b]| (a, b)).collect();
    let acceptance: Vec<String> = model.acceptance.iter().map(|a| a.describe(&features)).collect();
    let training_labels: Option<Vec<Vec<f64>>> =
        model.training.get("training_labels").and_then(|v| serde_json::from_value(v.clone()).ok());
    let device = format!("{:?}", model.flow.device()).to_lowercase().replace("cuda(", "cuda:").replace(')', "");
    let description = describe(&model, &path, &device, &features, &labels, &label_ranges, &acceptance);
    let members = model.n_members();
    Ok(Model {
        inner: Mutex::new(model),
        path: path.display().to_string(),
        device,
        features,
        labels,
        label_ranges,
        acceptance,
        training_labels,
        members,
        description,
    })
}

fn describe(
    model: &FlowModel,
    path: &std::path::Path,
    device: &str,
    features: &[String],
    labels: &[String],
    ranges: &[(f64, f64)],
    acceptance: &[String],
) -> String {
    let cfg = serde_json::to_string(&model.flow.config()).unwrap_or_default();
    let mut s = format!("FEDHEX model {} on {device}\n", path.display());
    s.push_str(&format!("  network: {cfg}\n"));
    if model.n_members() > 1 {
        s.push_str(&format!(
            "  ensemble of {} flows like this one (the mixture of their densities)\n",
            model.n_members()
        ));
    }
    s.push_str(&format!("  features ({}): {}\n", features.len(), features.join(", ")));
    let labs: Vec<String> = labels.iter().zip(ranges).map(|(n, (lo, hi))| format!("{n} in [{lo}, {hi}]")).collect();
    s.push_str(&format!("  labels ({}): {}\n", labels.len(), labs.join(", ")));
    if !acceptance.is_empty() {
        s.push_str(&format!("  acceptance: {}\n", acceptance.join("; ")));
    }
    let t = &model.training;
    let get = |k: &str| t.get(k).filter(|v| !v.is_null()).map(|v| v.to_string());
    if let Some(e) = get("epochs") {
        s.push_str(&format!(
            "  training: {e} epochs, {} label points, final validation NLL {}\n",
            get("labels").unwrap_or_else(|| "?".into()),
            get("final_val_nll").unwrap_or_else(|| "n/a".into())
        ));
    }
    s
}

/// Maximum-likelihood fit of the label to `events` `[N, D]`: the library's
/// `fit_label` with `fedhex fit`'s options; returns what `fedhex fit` writes to
/// fit.json for one group, as a dict.
#[pyfunction]
#[pyo3(signature = (model, events, truth=None, seed=0, iterations=300, acceptance_samples=20000, scan="slice"))]
#[allow(clippy::too_many_arguments)]
fn fit<'py>(
    py: Python<'py>,
    model: &Model,
    events: &Bound<'py, PyAny>,
    truth: Option<Vec<f64>>,
    seed: u64,
    iterations: usize,
    acceptance_samples: usize,
    scan: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let xs = f32_array(py, events, "events")?;
    let d = model.features.len();
    let shape = xs.shape().to_vec();
    let n = match shape.as_slice() {
        [n, dd] if *dd == d && *n > 0 => *n,
        _ => {
            return Err(PyValueError::new_err(format!(
                "events: expected shape [N, {d}] with N >= 1 for the model's features ({}), got {}",
                model.features.join(", "),
                shape_str(&shape)
            )))
        }
    };
    if let Some(t) = &truth {
        if t.len() != model.labels.len() {
            return Err(PyValueError::new_err(format!(
                "truth: expected {} values ({}), got {}",
                model.labels.len(),
                model.labels.join(", "),
                t.len()
            )));
        }
    }
    let scan = fedhex::analysis::fit::ScanKind::parse(scan).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let events = ndarray::Array2::from_shape_vec(
        (n, d),
        xs.as_slice().map_err(|e| PyValueError::new_err(e.to_string()))?.to_vec(),
    )
    .map_err(|e| PyValueError::new_err(format!("events: {e}")))?;
    let json = call(py, || {
        let m = model.lock();
        let opts = fedhex::analysis::fit::FitOptions {
            truth,
            scan,
            iterations,
            acceptance_samples,
            seed,
            ..Default::default()
        };
        let r = fedhex::analysis::fit::fit_label(&m, events.view(), &opts)?;
        serde_json::to_string(&r).map_err(|e| Failure::Lib(Error::Data(format!("fit result: {e}"))))
    })?;
    py.import("json")?.call_method1("loads", (json,))
}

/// The libtorch version the extension was built against.
#[pyfunction]
fn libtorch_version() -> String {
    fedhex::flow::model::libtorch_version()
}

/// The native module `fedhex._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(fit, m)?)?;
    m.add_function(wrap_pyfunction!(libtorch_version, m)?)?;
    m.add("FedhexError", m.py().get_type::<FedhexError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_BATCH", fedhex::generate::DEFAULT_BATCH)?;
    Ok(())
}
