//! Pure-Rust reader and writer for the subset of the ROOT file format that
//! FEDHEX needs: TTrees of numeric branches (flat, counted `T[n]`, fixed `T[k]`
//! and `std::vector<T>`), every compression ROOT uses (zlib, LZMA, LZ4, ZSTD),
//! and a writer for flat (and counted jagged) numeric trees.
//!
//! The format knowledge comes from uproot (`reading.py`, `models/*.py`,
//! `interpretation/*.py`, `compression.py`, `writing/_cascade*.py`) and groot
//! (`groot/riofs`, `groot/rtree`); see each submodule's header.
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
//! ```

#![deny(missing_docs)]

mod compress;
mod cursor;
mod dataset;
mod error;
mod file;
mod ntuple;
mod read;
mod streamers;
mod tree;
mod values;
mod write;

pub use dataset::Dataset;
pub use error::RootError;
pub use file::{KeyInfo, RootFile, MAX_OBJECT, WHOLE_FILE_LIMIT};
pub use ntuple::{FieldInfo, FieldKind, RNTuple};
pub use tree::{BranchInfo, BranchKind, Tree};
pub use values::{Column, ElemType, Values};
pub use write::{Compression, StreamingTreeWriter, TreeWriter};
