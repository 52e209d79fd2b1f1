//! [`Dataset`]: a TTree or an RNTuple behind one interface (entries, names
//! of the readable branches/fields, read one as a [`Column`]), so callers
//! such as `data::source` need not care which of the two a file holds.

use super::error::RootError;
use super::ntuple::RNTuple;
use super::tree::Tree;
use super::values::Column;

/// A named entry-wise data set in a ROOT file: a TTree or an RNTuple.
#[derive(Debug)]
pub enum Dataset {
    /// A TTree (branches).
    Tree(Tree),
    /// An RNTuple (top-level fields).
    Ntuple(RNTuple),
}

impl Dataset {
    /// `"tree"` or `"ntuple"`, for messages (`tree 'Events'`, `ntuple 'Events'`).
    pub fn kind(&self) -> &'static str {
        match self {
            Dataset::Tree(_) => "tree",
            Dataset::Ntuple(_) => "ntuple",
        }
    }

    /// `"branch"` or `"field"`, for messages.
    pub fn member_kind(&self) -> &'static str {
        match self {
            Dataset::Tree(_) => "branch",
            Dataset::Ntuple(_) => "field",
        }
    }

    /// Its name (the key name).
    pub fn name(&self) -> &str {
        match self {
            Dataset::Tree(t) => t.name(),
            Dataset::Ntuple(n) => n.name(),
        }
    }

    /// Number of entries.
    pub fn entries(&self) -> u64 {
        match self {
            Dataset::Tree(t) => t.entries(),
            Dataset::Ntuple(n) => n.entries(),
        }
    }

    /// Branch names (TTree) or top-level field names (RNTuple).
    pub fn names(&self) -> Vec<String> {
        match self {
            Dataset::Tree(t) => t.branch_names(),
            Dataset::Ntuple(n) => n.field_names(),
        }
    }

    /// Reads a whole branch or top-level field.
    pub fn read(&self, name: &str) -> Result<Column, RootError> {
        match self {
            Dataset::Tree(t) => t.read(name),
            Dataset::Ntuple(n) => n.read(name),
        }
    }
}
