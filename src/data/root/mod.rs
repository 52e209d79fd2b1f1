//! Pure-Rust reader and writer for the subset of the ROOT file format that
//! FEDHEX needs: TTrees of numeric branches (flat, counted `T[n]`, fixed `T[k]`
//! and `std::vector<T>`), RNTuples of binary format v1.0 (ROOT 6.34+, uproot
//! 5.7+: numeric leaf fields, `std::vector<T>`/`RVec<T>` collections,
//! `std::array<T, N>`, booleans, cardinalities; every column encoding of the
//! specification), every compression ROOT uses (zlib, LZMA, LZ4, ZSTD), and a
//! writer for flat (and counted jagged) numeric trees and one for `TH1D` histograms. [`Dataset`] opens a
//! name as whichever of the two it is, so callers read TTrees and RNTuples
//! alike.
//!
//! The format knowledge comes from uproot (`reading.py`, `models/*.py`,
//! `interpretation/*.py`, `compression.py`, `writing/_cascade*.py`), groot
//! (`groot/riofs`, `groot/rtree`) and, for RNTuple, ROOT's
//! `tree/ntuple/doc/BinaryFormatSpecification.md`; see each submodule's header.
//!
//! Reading never panics on malformed input: all reads are bounds-checked and
//! allocations are bounded by the file size and by [`MAX_OBJECT`]-style limits.
//!
//! ```ignore
//! // `root` is this module (e.g. `fedhex::data::root`).
//! use root::{Column, RootFile};
//! use std::path::Path;
//! let f = RootFile::open(Path::new("nano.root"))?;
//! let t = f.tree("Events")?;
//! if let Column::Jagged { offsets, values } = t.read("Photon_pt")? {
//!     println!("{} entries, {} photons", offsets.len() - 1, values.len());
//! }
//! // A TTree or an RNTuple, whichever "Events" is:
//! let d = f.dataset("Events")?;
//! println!("{} '{}': {} entries, {:?}", d.kind(), d.name(), d.entries(), d.names());
//! ```

#![deny(missing_docs)]

mod compress;
mod cursor;
mod dataset;
mod error;
mod file;
mod hist;
mod ntuple;
mod read;
mod streamers;
mod tree;
mod values;
mod write;

pub use dataset::Dataset;
pub use error::RootError;
pub use file::{KeyInfo, RootFile, MAX_OBJECT, WHOLE_FILE_LIMIT};
pub use hist::{write_histograms, Th1d};
pub use ntuple::{FieldInfo, FieldKind, RNTuple};
pub use tree::{BranchInfo, BranchKind, Tree};
pub use values::{Column, ElemType, Values};
pub use write::{Compression, StreamingTreeWriter, TreeWriter};
