//! Acceptance efficiencies per label: the fraction of simulated events that
//! passed the declared acceptance cuts (`data.acceptance`) at each label,
//! as simulation bookkeeping records it (events generated vs. kept).
//!
//! With the efficiencies the training likelihood is the *censored* one: each
//! kept event contributes `log p(x | c)` and the events removed by the cut
//! contribute `log P(rejected | c)`, so the flow learns not only the shape
//! above the cut but also how much of the distribution lies below it — which
//! the truncated likelihood (cuts without efficiencies) cannot tell.
//!
//! # File format (`data.acceptance_efficiency`)
//!
//! CSV with a header line. The first `L` columns are the label values in the
//! order of the run's labels (their header names are informational); the
//! efficiency comes from a column `efficiency`, or from `generated` and
//! `accepted` columns (`accepted / generated`). One row per label point;
//! `#` starts a comment line. `fedhex gen --model phi-omega` writes one
//! (`acceptance.csv`) next to its ROOT files.
//!
//! ```text
//! M_phi,M_omega,generated,accepted,efficiency
//! 1000,0.5,11523,10000,0.867830
//! ```

use crate::error::{Error, Result};
use std::path::Path;

/// Efficiency per label point, read from a table.
#[derive(Debug, Clone, PartialEq)]
pub struct EfficiencyTable {
    /// Label values of each row.
    pub labels: Vec<Vec<f64>>,
    /// Efficiency of each row, in (0, 1].
    pub efficiency: Vec<f64>,
    /// Where the table came from, for messages.
    pub source: String,
}

impl EfficiencyTable {
    /// Reads the table at `path` for `n_labels` label dimensions.
    ///
    /// # Errors
    /// A missing or unreadable file, a header without `efficiency` (or
    /// `generated` and `accepted`), too few columns, values that are not
    /// numbers, efficiencies outside (0, 1], or duplicate label rows — each
    /// naming the file, line and column.
    pub fn read(path: &Path, n_labels: usize) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, n_labels, &path.display().to_string())
    }

    /// Parses the CSV text (see the module documentation); `source` names it in errors.
    pub fn parse(text: &str, n_labels: usize, source: &str) -> Result<Self> {
        let bad = |line: usize, msg: String| Error::Data(format!("{source}:{line}: {msg}"));
        let mut rows = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let (hline, header) = rows.next().ok_or_else(|| Error::Data(format!("{source}: empty efficiency table")))?;
        let names: Vec<&str> = header.split(',').map(str::trim).collect();
        let col = |n: &str| names.iter().position(|h| h.eq_ignore_ascii_case(n));
        enum How {
            Direct(usize),
            Ratio(usize, usize),
        }
        let how = match (col("efficiency"), col("generated"), col("accepted")) {
            (Some(e), _, _) => How::Direct(e),
            (None, Some(g), Some(a)) => How::Ratio(g, a),
            _ => {
                return Err(bad(
                    hline,
                    format!("header '{header}' needs a column 'efficiency' (or 'generated' and 'accepted')"),
                ))
            }
        };
        let needed = match how {
            How::Direct(e) => e.max(n_labels.saturating_sub(1)) + 1,
            How::Ratio(g, a) => g.max(a).max(n_labels.saturating_sub(1)) + 1,
        };
        if names.len() < n_labels + 1
            || names[..n_labels]
                .iter()
                .any(|h| ["efficiency", "generated", "accepted"].iter().any(|k| h.eq_ignore_ascii_case(k)))
        {
            return Err(bad(hline, format!("header '{header}': the first {n_labels} column(s) must be the labels")));
        }
        let mut table = EfficiencyTable { labels: vec![], efficiency: vec![], source: source.to_string() };
        for (line, row) in rows {
            let cells: Vec<&str> = row.split(',').map(str::trim).collect();
            if cells.len() < needed {
                return Err(bad(line, format!("{} column(s), the header needs {needed}", cells.len())));
            }
            let num =
                |j: usize| -> Result<f64> {
                    cells[j].parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                        bad(line, format!("column '{}': '{}' is not a finite number", names[j], cells[j]))
                    })
                };
            let labels = (0..n_labels).map(num).collect::<Result<Vec<f64>>>()?;
            let eff = match how {
                How::Direct(e) => num(e)?,
                How::Ratio(g, a) => {
                    let (g, a) = (num(g)?, num(a)?);
                    if g <= 0.0 || a > g {
                        return Err(bad(line, format!("accepted {a} of generated {g} is not an efficiency")));
                    }
                    a / g
                }
            };
            if !(eff > 0.0 && eff <= 1.0) {
                return Err(bad(line, format!("efficiency {eff} at label {labels:?} must lie in (0, 1]")));
            }
            if table.lookup(&labels).is_some() {
                return Err(bad(line, format!("label {labels:?} appears twice")));
            }
            table.labels.push(labels);
            table.efficiency.push(eff);
        }
        if table.labels.is_empty() {
            return Err(Error::Data(format!("{source}: no rows")));
        }
        Ok(table)
    }

    /// The efficiency at `label` (matched to a row by [`crate::data::same_label`]), if listed.
    pub fn lookup(&self, label: &[f64]) -> Option<f64> {
        self.labels.iter().position(|row| crate::data::same_label(row, label)).map(|i| self.efficiency[i])
    }

    /// The efficiency of every label in `labels`.
    ///
    /// # Errors
    /// A label missing from the table (named, with the table's source).
    pub fn for_labels(&self, labels: &[Vec<f32>]) -> Result<Vec<f64>> {
        labels
            .iter()
            .map(|lab| {
                let l: Vec<f64> = lab.iter().map(|&v| f64::from(v)).collect();
                self.lookup(&l)
                    .ok_or_else(|| Error::Data(format!("{}: no efficiency for the training label {l:?}", self.source)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_efficiency_or_ratio_and_matches_f32_labels() {
        let t =
            EfficiencyTable::parse("# made by hand\nm1,m2,efficiency\n1000,0.5,0.8\n1000,1.5,1\n", 2, "t.csv").unwrap();
        assert_eq!(t.for_labels(&[vec![1000.0, 0.5], vec![1000.0, 1.5]]).unwrap(), vec![0.8, 1.0]);
        let t = EfficiencyTable::parse("m,generated,accepted\n0.1,200,50\n", 1, "t.csv").unwrap();
        assert_eq!(t.lookup(&[f64::from(0.1f32)]), Some(0.25));
        let e = t.for_labels(&[vec![0.2]]).unwrap_err().to_string();
        assert!(e.contains("t.csv") && e.contains("0.2"), "{e}");
    }

    #[test]
    fn bad_tables_name_file_line_and_column() {
        let err = |text: &str| EfficiencyTable::parse(text, 2, "eff.csv").unwrap_err().to_string();
        let e = err("a,b,c\n1,2,3\n");
        assert!(e.contains("eff.csv:1") && e.contains("efficiency"), "{e}");
        let e = err("a,b,efficiency\n1,2,x\n");
        assert!(e.contains("eff.csv:2") && e.contains("'efficiency'") && e.contains("'x'"), "{e}");
        let e = err("a,b,efficiency\n1,2,1.5\n");
        assert!(e.contains("eff.csv:2") && e.contains("(0, 1]"), "{e}");
        let e = err("a,b,efficiency\n1,2,0\n");
        assert!(e.contains("(0, 1]"), "{e}");
        let e = err("a,b,efficiency\n1,2,0.5\n1,2,0.6\n");
        assert!(e.contains("eff.csv:3") && e.contains("twice"), "{e}");
        let e = err("a,b,efficiency\n1,2\n");
        assert!(e.contains("eff.csv:2") && e.contains("column"), "{e}");
        let e = err("a,efficiency\n1,0.5\n");
        assert!(e.contains("first 2 column"), "{e}");
        let e = err("a,b,generated,accepted\n1,2,10,11\n");
        assert!(e.contains("eff.csv:2") && e.contains("not an efficiency"), "{e}");
        let e = err("a,b,efficiency\n");
        assert!(e.contains("no rows"), "{e}");
        let e = EfficiencyTable::read(Path::new("/nonexistent/eff.csv"), 2).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/eff.csv"), "{e}");
    }
}
