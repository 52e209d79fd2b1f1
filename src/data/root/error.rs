//! Error type of the ROOT reader/writer.
//!
//! Every [`RootError`] renders with the file path first and, where known, the
//! tree, branch, key or basket that was being read, e.g.
//! `data/a.root: tree 'Events': branch 'Photon_pt': basket 3 at offset 12345: zlib decompression failed: ...`.
//!
//! Internally the parsers return the light-weight [`Fail`], which carries only
//! the "what went wrong" part; the public entry points attach the path and the
//! context with [`Fail::at`].

use std::fmt;
use std::path::Path;

/// Everything that can go wrong while reading or writing a ROOT file.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// The operating system refused a read/write/open.
    #[error("{path}: {context}I/O error: {source}")]
    Io {
        /// File path.
        path: String,
        /// What was being done (may be empty, else ends in `": "`).
        context: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the `root` magic or is too short for a header.
    #[error("{path}: not a ROOT file ({reason})")]
    NotRoot {
        /// File path.
        path: String,
        /// Why (e.g. "bad magic", "empty file").
        reason: String,
    },
    /// A record points past the end of the file or of its buffer.
    #[error("{path}: {context}truncated: {detail}")]
    Truncated {
        /// File path.
        path: String,
        /// Tree/branch/key/basket context (may be empty, else ends in `": "`).
        context: String,
        /// What was expected and what was there.
        detail: String,
    },
    /// A record has inconsistent or impossible contents.
    #[error("{path}: {context}malformed: {detail}")]
    Malformed {
        /// File path.
        path: String,
        /// Tree/branch/key/basket context (may be empty, else ends in `": "`).
        context: String,
        /// What is wrong.
        detail: String,
    },
    /// A compressed block could not be decompressed.
    #[error("{path}: {context}{algorithm} decompression failed: {detail}")]
    Decompression {
        /// File path.
        path: String,
        /// Tree/branch/key/basket context (may be empty, else ends in `": "`).
        context: String,
        /// `zlib`, `lzma`, `lz4`, `zstd`, ...
        algorithm: String,
        /// Decoder message.
        detail: String,
    },
    /// No tree (TTree key) of that name.
    #[error("{path}: no TTree named '{name}' (trees in file: {available})")]
    TreeNotFound {
        /// File path.
        path: String,
        /// Requested name.
        name: String,
        /// Comma separated list of the trees that exist.
        available: String,
    },
    /// The key exists but is not a TTree.
    #[error("{path}: key '{name}' is a {class}, not a TTree")]
    NotATree {
        /// File path.
        path: String,
        /// Key name.
        name: String,
        /// Its class.
        class: String,
    },
    /// No branch of that name.
    #[error("{path}: tree '{tree}': no branch named '{branch}'{suggestions}")]
    BranchNotFound {
        /// File path.
        path: String,
        /// Tree name.
        tree: String,
        /// Requested branch.
        branch: String,
        /// `" (did you mean: a, b, c?)"` or empty.
        suggestions: String,
    },
    /// The branch exists but holds a type this reader does not decode.
    #[error("{path}: tree '{tree}': branch '{branch}': unsupported type {type_name}: {reason}")]
    Unsupported {
        /// File path.
        path: String,
        /// Tree name.
        tree: String,
        /// Branch name.
        branch: String,
        /// ROOT/C++ type description.
        type_name: String,
        /// Why it is not supported.
        reason: String,
    },
    /// No TTree and no RNTuple of that name.
    #[error("{path}: no TTree or RNTuple named '{name}' (in file: {available})")]
    DatasetNotFound {
        /// File path.
        path: String,
        /// Requested name.
        name: String,
        /// Comma separated list of the trees and ntuples that exist.
        available: String,
    },
    /// The key exists but is neither a TTree nor an RNTuple.
    #[error("{path}: key '{name}' is a {class}, not a TTree or an RNTuple")]
    NotADataset {
        /// File path.
        path: String,
        /// Key name.
        name: String,
        /// Its class.
        class: String,
    },
    /// No top-level field of that name in an RNTuple.
    #[error("{path}: ntuple '{ntuple}': no field named '{field}'{suggestions}")]
    FieldNotFound {
        /// File path.
        path: String,
        /// RNTuple name.
        ntuple: String,
        /// Requested field.
        field: String,
        /// `" (did you mean: a, b, c?)"` or a few field names.
        suggestions: String,
    },
    /// The RNTuple field exists but holds a type this reader does not decode.
    #[error("{path}: ntuple '{ntuple}': field '{field}': unsupported type {type_name}: {reason}")]
    UnsupportedField {
        /// File path.
        path: String,
        /// RNTuple name.
        ntuple: String,
        /// Field name.
        field: String,
        /// C++ type name of the field.
        type_name: String,
        /// Why it is not supported (boxed to keep `RootError` small).
        reason: Box<str>,
    },
    /// Invalid arguments to the writer or to `read_range`.
    #[error("{path}: {context}invalid argument: {detail}")]
    InvalidArgument {
        /// File path.
        path: String,
        /// Context (may be empty, else ends in `": "`).
        context: String,
        /// What is wrong.
        detail: String,
    },
}

/// Internal, path-less failure produced by the low level parsers.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Fail {
    /// Needed `need` bytes at `at`, buffer/file has `have`.
    Truncated(String),
    /// Inconsistent contents.
    Malformed(String),
    /// Decoder failure: (algorithm, message).
    Decompress(String, String),
    /// Unsupported feature: (type name, reason).
    Unsupported(String, String),
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Truncated(d) => write!(f, "truncated: {d}"),
            Fail::Malformed(d) => write!(f, "malformed: {d}"),
            Fail::Decompress(a, d) => write!(f, "{a} decompression failed: {d}"),
            Fail::Unsupported(t, r) => write!(f, "unsupported {t}: {r}"),
        }
    }
}

/// Shorthand for internal results.
pub(super) type PResult<T> = Result<T, Fail>;

/// Builds a `Fail::Malformed` with a formatted message.
pub(super) fn malformed(msg: impl Into<String>) -> Fail {
    Fail::Malformed(msg.into())
}

/// Renders a path for error messages.
pub(super) fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// Joins context pieces into the `"a: b: "` prefix used in messages.
pub(super) fn ctx_prefix(parts: &[String]) -> String {
    let mut s = String::new();
    for p in parts {
        if !p.is_empty() {
            s.push_str(p);
            s.push_str(": ");
        }
    }
    s
}

impl Fail {
    /// Attaches the file path and a context prefix (see [`ctx_prefix`]).
    pub(super) fn at(self, path: &str, context: String) -> RootError {
        let path = path.to_string();
        match self {
            Fail::Truncated(detail) => RootError::Truncated { path, context, detail },
            Fail::Malformed(detail) => RootError::Malformed { path, context, detail },
            Fail::Decompress(algorithm, detail) => RootError::Decompression { path, context, algorithm, detail },
            Fail::Unsupported(type_name, reason) => {
                RootError::Malformed { path, context, detail: format!("unsupported {type_name}: {reason}") }
            }
        }
    }
}
