//! NumPy input and output: `.npz` archives holding `samples` `[N, D]` and
//! `labels` `[N, L]` (float32 or float64; a 1-D array is one column).

use super::EventSet;
use crate::error::{Error, Result};
use ndarray::{Array1, Array2};
use ndarray_npy::{NpzReader, NpzWriter};
use std::path::Path;

fn read_array(npz: &mut NpzReader<std::fs::File>, path: &Path, name: &str) -> Result<Array2<f32>> {
    let names =
        npz.names().map_err(|e| Error::Data(format!("{}: not a readable .npz archive: {e}", path.display())))?;
    let entry =
        names.iter().find(|n| n.as_str() == name || n.as_str() == format!("{name}.npy")).cloned().ok_or_else(|| {
            Error::Data(format!("{}: no array '{name}' (archive holds: {})", path.display(), names.join(", ")))
        })?;
    let bad = |e: ndarray_npy::ReadNpzError| {
        Error::Data(format!("{}: array '{name}': {e} (need a 1-D or 2-D float32/float64 array)", path.display()))
    };
    if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<f32>, ndarray::Ix2>(&entry) {
        return Ok(a);
    }
    if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<f64>, ndarray::Ix2>(&entry) {
        return Ok(a.mapv(|v| v as f32));
    }
    if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<f32>, ndarray::Ix1>(&entry) {
        return Ok(column(a));
    }
    match npz.by_name::<ndarray::OwnedRepr<f64>, ndarray::Ix1>(&entry) {
        Ok(a) => Ok(column(a.mapv(|v| v as f32))),
        Err(e) => Err(bad(e)),
    }
}

fn column(a: Array1<f32>) -> Array2<f32> {
    let n = a.len();
    a.into_shape_with_order((n, 1)).unwrap_or_else(|_| Array2::zeros((0, 1)))
}

/// Reads an `.npz` with `samples` and `labels` arrays.
pub fn read_npz(path: &Path, feature_names: Vec<String>, label_names: Vec<String>) -> Result<EventSet> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut npz = NpzReader::new(file)
        .map_err(|e| Error::Data(format!("{}: not a readable .npz archive: {e}", path.display())))?;
    let samples = read_array(&mut npz, path, "samples")?;
    let labels = read_array(&mut npz, path, "labels")?;
    EventSet::new(samples, labels, feature_names, label_names, &path.display().to_string())
}

/// Writes `samples` and `labels` as float32 arrays to an `.npz`, through a
/// temporary file renamed into place when complete.
pub fn write_npz(path: &Path, samples: &Array2<f32>, labels: &Array2<f32>) -> Result<()> {
    let tmp = crate::flow::model::sibling(path, "tmp");
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut npz = NpzWriter::new(file);
        let werr = |e: ndarray_npy::WriteNpzError| Error::Data(format!("{}: {e}", path.display()));
        npz.add_array("samples", samples).map_err(werr)?;
        npz.add_array("labels", labels).map_err(werr)?;
        let file = npz.finish().map_err(werr)?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
