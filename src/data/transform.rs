//! Physics-aware preprocessing: per-dimension chains of invertible elementwise
//! steps applied to raw features (and labels) before the whitening, stored in
//! the model file and inverted exactly on output.
//!
//! A chain is written as steps separated by `|`, applied left to right:
//!
//! ```text
//! log                 y = ln x                      (x > 0)
//! shift(a)            y = x - a
//! scale(a)            y = x / a                     (a != 0)
//! bounded(lo)         y = ln(x - lo)                (a lower physical bound, e.g. an acceptance cut)
//! logit(lo, hi)       y = ln((x - lo) / (hi - x))   (known physical bounds)
//! div(LABEL)          y = x / c_LABEL               (the detector response: ratio to the true value)
//! sub(LABEL)          y = x - c_LABEL
//! log_ratio(LABEL)    div(LABEL) | log
//! ```
//!
//! `LABEL` is a label name; the raw label value of each event is used. Label
//! chains may only use the steps that do not refer to labels. Each step knows
//! its `log |dy/dx|`, so the density of raw values stays exact.
//!
//! Known acceptance cuts (`omega > 0.415`) are part of the preprocessing too:
//! the training data were truncated by them, so the model is trained with the
//! truncated likelihood and its samples are cut the same way (see
//! [`Acceptance`]).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// One invertible elementwise step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// `y = ln x`.
    Log,
    /// `y = x - by`.
    Shift {
        /// Offset.
        by: f64,
    },
    /// `y = x / by`.
    Scale {
        /// Divisor (non-zero).
        by: f64,
    },
    /// `y = ln(x - lo)`.
    Bounded {
        /// Lower bound.
        lo: f64,
    },
    /// `y = ln((x - lo) / (hi - x))`.
    Logit {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// `y = x / c[label]` (raw label).
    DivLabel {
        /// Label index.
        label: usize,
    },
    /// `y = x - c[label]` (raw label).
    SubLabel {
        /// Label index.
        label: usize,
    },
}

impl Step {
    fn uses_label(&self) -> bool {
        matches!(self, Step::DivLabel { .. } | Step::SubLabel { .. })
    }

    /// Human-readable form, as written in a configuration.
    pub fn describe(&self, label_names: &[String]) -> String {
        let lab = |i: &usize| label_names.get(*i).cloned().unwrap_or_else(|| format!("label{i}"));
        match self {
            Step::Log => "log".into(),
            Step::Shift { by } => format!("shift({by})"),
            Step::Scale { by } => format!("scale({by})"),
            Step::Bounded { lo } => format!("bounded({lo})"),
            Step::Logit { lo, hi } => format!("logit({lo}, {hi})"),
            Step::DivLabel { label } => format!("div({})", lab(label)),
            Step::SubLabel { label } => format!("sub({})", lab(label)),
        }
    }

    /// `(y, log|dy/dx|)` of a column `x: [N]`; `c: [N, L]` raw labels.
    fn forward(&self, x: &Tensor, c: &Tensor) -> (Tensor, Option<Tensor>) {
        match self {
            Step::Log => (x.log(), Some(x.log().neg())),
            Step::Shift { by } => (x - *by, None),
            Step::Scale { by } => (x / *by, Some(x.full_like(-by.abs().ln()))),
            Step::Bounded { lo } => {
                let d = x - *lo;
                (d.log(), Some(d.log().neg()))
            }
            Step::Logit { lo, hi } => {
                let a = x - *lo;
                let b = x.neg() + *hi;
                let y = a.log() - b.log();
                let ldj = (a.log() + b.log()).neg() + (hi - lo).ln();
                (y, Some(ldj))
            }
            Step::DivLabel { label } => {
                let cl = c.select(1, *label as i64);
                (x / &cl, Some(cl.abs().log().neg()))
            }
            Step::SubLabel { label } => (x - c.select(1, *label as i64), None),
        }
    }

    fn inverse(&self, y: &Tensor, c: &Tensor) -> Tensor {
        match self {
            Step::Log => y.exp(),
            Step::Shift { by } => y + *by,
            Step::Scale { by } => y * *by,
            Step::Bounded { lo } => y.exp() + *lo,
            Step::Logit { lo, hi } => y.sigmoid() * (hi - lo) + *lo,
            Step::DivLabel { label } => y * c.select(1, *label as i64),
            Step::SubLabel { label } => y + c.select(1, *label as i64),
        }
    }

    /// Whether a raw value lies in the step's domain (for error messages).
    fn domain(&self, x: f64, c: &[f64]) -> std::result::Result<(), String> {
        let ok = match self {
            Step::Log => x > 0.0,
            Step::Bounded { lo } => x > *lo,
            Step::Logit { lo, hi } => x > *lo && x < *hi,
            Step::DivLabel { label } => c.get(*label).is_some_and(|v| *v != 0.0),
            Step::Shift { .. } | Step::Scale { .. } | Step::SubLabel { .. } => true,
        };
        if ok {
            Ok(())
        } else {
            Err(match self {
                Step::Log => format!("needs values > 0, got {x}"),
                Step::Bounded { lo } => format!("needs values > {lo}, got {x}"),
                Step::Logit { lo, hi } => format!("needs values in ({lo}, {hi}), got {x}"),
                _ => "needs a non-zero label".to_string(),
            })
        }
    }

    fn apply_f64(&self, x: f64, c: &[f64]) -> f64 {
        match self {
            Step::Log => x.ln(),
            Step::Shift { by } => x - by,
            Step::Scale { by } => x / by,
            Step::Bounded { lo } => (x - lo).ln(),
            Step::Logit { lo, hi } => ((x - lo) / (hi - x)).ln(),
            Step::DivLabel { label } => x / c.get(*label).copied().unwrap_or(f64::NAN),
            Step::SubLabel { label } => x - c.get(*label).copied().unwrap_or(f64::NAN),
        }
    }
}

/// Parses a chain such as `"div(labelomega) | log"` against the label names.
pub fn parse_chain(spec: &str, label_names: &[String], what: &str) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    for part in spec.split('|').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = |why: &str| Error::Config(format!("{what}: transform step '{part}': {why}"));
        let (name, args) = match part.split_once('(') {
            Some((n, rest)) => {
                let inner = rest.strip_suffix(')').ok_or_else(|| bad("missing ')'"))?;
                (n.trim(), inner.split(',').map(str::trim).collect::<Vec<_>>())
            }
            None => (part, vec![]),
        };
        let num = |i: usize| -> Result<f64> {
            let t = args.get(i).ok_or_else(|| bad("missing number"))?;
            match t.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(v),
                _ => Err(bad(&format!("'{t}' is not a finite number"))),
            }
        };
        let label = |i: usize| -> Result<usize> {
            let t = args.get(i).ok_or_else(|| bad("missing label name"))?;
            label_names
                .iter()
                .position(|n| n == t)
                .ok_or_else(|| bad(&format!("no label '{t}' (labels: {})", label_names.join(", "))))
        };
        let want = |n: usize| -> Result<()> {
            if args.len() == n || (n == 0 && args.iter().all(|a| a.is_empty())) {
                Ok(())
            } else {
                Err(bad(&format!("takes {n} argument(s)")))
            }
        };
        match name {
            "log" => {
                want(0)?;
                steps.push(Step::Log)
            }
            "shift" => {
                want(1)?;
                steps.push(Step::Shift { by: num(0)? })
            }
            "scale" => {
                want(1)?;
                let by = num(0)?;
                if by == 0.0 {
                    return Err(bad("needs a non-zero divisor"));
                }
                steps.push(Step::Scale { by })
            }
            "bounded" => {
                want(1)?;
                steps.push(Step::Bounded { lo: num(0)? })
            }
            "logit" => {
                want(2)?;
                let (lo, hi) = (num(0)?, num(1)?);
                if lo >= hi {
                    return Err(bad("needs bounds lo < hi (use bounded(lo) for a lower bound only)"));
                }
                steps.push(Step::Logit { lo, hi })
            }
            "div" => {
                want(1)?;
                steps.push(Step::DivLabel { label: label(0)? })
            }
            "sub" => {
                want(1)?;
                steps.push(Step::SubLabel { label: label(0)? })
            }
            "log_ratio" => {
                want(1)?;
                steps.push(Step::DivLabel { label: label(0)? });
                steps.push(Step::Log)
            }
            other => {
                return Err(bad(&format!(
                    "unknown step '{other}' (known: log, shift, scale, bounded, logit, div, sub, log_ratio)"
                )))
            }
        }
    }
    Ok(steps)
}

/// Chains of steps for every dimension of a group (features or labels).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transforms {
    /// One chain per dimension (empty chain: identity). Empty vector: identity everywhere.
    pub chains: Vec<Vec<Step>>,
}

impl Transforms {
    /// Builds the chains of `names` from a name → chain map; names not in the map get none.
    pub fn from_specs(
        specs: &std::collections::BTreeMap<String, String>,
        names: &[String],
        label_names: &[String],
        group: &str,
        allow_labels: bool,
    ) -> Result<Self> {
        if let Some(unknown) = specs.keys().find(|k| !names.contains(k)) {
            return Err(Error::Config(format!(
                "data.{group}_transforms: no {group} '{unknown}' (the {group}s are: {})",
                names.join(", ")
            )));
        }
        let mut chains = Vec::with_capacity(names.len());
        for n in names {
            let chain = match specs.get(n) {
                Some(s) => parse_chain(s, label_names, &format!("data.{group}_transforms.{n}"))?,
                None => vec![],
            };
            if !allow_labels && chain.iter().any(Step::uses_label) {
                return Err(Error::Config(format!(
                    "data.{group}_transforms.{n}: label transforms cannot refer to labels (div/sub/log_ratio)"
                )));
            }
            chains.push(chain);
        }
        Ok(Transforms { chains: if chains.iter().all(Vec::is_empty) { vec![] } else { chains } })
    }

    /// True when every dimension is left as it is.
    pub fn is_identity(&self) -> bool {
        self.chains.iter().all(Vec::is_empty)
    }

    /// Checks the chains against `d` dimensions and `l` labels.
    pub fn validate(&self, d: usize, l: usize, group: &str) -> Result<()> {
        if !self.chains.is_empty() && self.chains.len() != d {
            return Err(Error::Data(format!("{group} transforms: {} chains for {d} dimensions", self.chains.len())));
        }
        for chain in &self.chains {
            for s in chain {
                if let Step::DivLabel { label } | Step::SubLabel { label } = s {
                    if *label >= l {
                        return Err(Error::Data(format!("{group} transforms refer to label {label} of {l}")));
                    }
                }
            }
        }
        Ok(())
    }

    /// Raw → transformed values and `log |det dy/dx|` per event.
    ///
    /// # Shapes
    /// `xs: [N, D]`, `cs: [N, L]` (raw labels; may be `[N, 0]` for label chains) → `([N, D], [N])`
    pub fn forward(&self, xs: &Tensor, cs: &Tensor) -> (Tensor, Tensor) {
        let n = xs.size()[0];
        let mut ldj = Tensor::zeros([n], (Kind::Float, xs.device()));
        if self.is_identity() {
            return (xs.shallow_clone(), ldj);
        }
        let cols: Vec<Tensor> = self
            .chains
            .iter()
            .enumerate()
            .map(|(j, chain)| {
                let mut v = xs.select(1, j as i64);
                for s in chain {
                    let (y, l) = s.forward(&v, cs);
                    if let Some(l) = l {
                        ldj += l;
                    }
                    v = y;
                }
                v
            })
            .collect();
        (Tensor::stack(&cols, 1), ldj)
    }

    /// Transformed → raw values (exact inverse of [`Transforms::forward`]).
    pub fn inverse(&self, ys: &Tensor, cs: &Tensor) -> Tensor {
        if self.is_identity() {
            return ys.shallow_clone();
        }
        let cols: Vec<Tensor> = self
            .chains
            .iter()
            .enumerate()
            .map(|(j, chain)| {
                let mut v = ys.select(1, j as i64);
                for s in chain.iter().rev() {
                    v = s.inverse(&v, cs);
                }
                v
            })
            .collect();
        Tensor::stack(&cols, 1)
    }

    /// Applies the chains to host rows, failing on the first value outside a
    /// step's domain with the dimension's name, the step and the event number.
    pub fn apply_rows(
        &self,
        data: &mut ndarray::Array2<f32>,
        labels: &ndarray::Array2<f32>,
        names: &[String],
        label_names: &[String],
        source: &str,
    ) -> Result<()> {
        if self.is_identity() {
            return Ok(());
        }
        for (i, (mut row, lab)) in data.rows_mut().into_iter().zip(labels.rows()).enumerate() {
            let c: Vec<f64> = lab.iter().map(|&v| f64::from(v)).collect();
            for (j, chain) in self.chains.iter().enumerate() {
                let mut v = f64::from(row[j]);
                for s in chain {
                    if let Err(why) = s.domain(v, &c) {
                        return Err(Error::Data(format!(
                            "{source}: event {i}, '{}': transform step '{}' {why}",
                            names.get(j).map_or("?", String::as_str),
                            s.describe(label_names)
                        )));
                    }
                    v = s.apply_f64(v, &c);
                }
                if !v.is_finite() {
                    return Err(Error::Data(format!(
                        "{source}: event {i}, '{}': transformed value is not finite",
                        names.get(j).map_or("?", String::as_str)
                    )));
                }
                row[j] = v as f32;
            }
        }
        Ok(())
    }
}

/// A known acceptance cut that truncated the training data: either an
/// interval on one raw feature (`lo < x < hi`, the forms `x > v`, `x < v`,
/// `lo < x < hi`) or any boolean expression over the raw features in the
/// language of `data.root.cut` ([`crate::data::expr`]), e.g.
/// `abs(eta_g) < 2.5` or `pt_1 > pt_2`. Training uses the truncated likelihood
/// `p(x | c) / P(accepted | c)` and generated events are cut the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acceptance {
    /// Feature index (interval cuts).
    pub feature: usize,
    /// Lower bound (`-inf`: none).
    #[serde(with = "bound")]
    pub lo: f64,
    /// Upper bound (`+inf`: none).
    #[serde(with = "bound")]
    pub hi: f64,
    /// An expression cut (then `feature`, `lo` and `hi` are unused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<ExprCut>,
}

/// A boolean expression over raw features, bound to their column indices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ExprCutRepr", into = "ExprCutRepr")]
pub struct ExprCut {
    expr: crate::data::expr::Expr,
    /// The features the expression reads, with their column index.
    vars: Vec<(String, usize)>,
}

/// How an [`ExprCut`] is stored in `model.json`: its text and the feature
/// names in column order.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExprCutRepr {
    expr: String,
    features: Vec<String>,
}

impl TryFrom<ExprCutRepr> for ExprCut {
    type Error = Error;
    fn try_from(r: ExprCutRepr) -> Result<Self> {
        ExprCut::new(&r.expr, &r.features)
    }
}

impl From<ExprCut> for ExprCutRepr {
    fn from(c: ExprCut) -> Self {
        let n = c.vars.iter().map(|v| v.1 + 1).max().unwrap_or(0);
        let mut features = vec![String::new(); n];
        for (name, i) in c.vars {
            features[i] = name;
        }
        ExprCutRepr { expr: c.expr.source().to_string(), features }
    }
}

impl ExprCut {
    /// Parses `src` and binds its names to the feature columns `names`.
    fn new(src: &str, names: &[String]) -> Result<Self> {
        let bad = |why: String| Error::Config(format!("data.acceptance '{src}': {why}"));
        let expr = crate::data::expr::Expr::parse(src).map_err(|e| bad(e.to_string()))?;
        let vars = expr
            .branches()
            .into_iter()
            .map(|b| match names.iter().position(|n| *n == b) {
                Some(i) => Ok((b, i)),
                None => Err(bad(format!("no feature '{b}' (features: {})", names.join(", ")))),
            })
            .collect::<Result<Vec<_>>>()?;
        let cut = ExprCut { expr, vars };
        // Check the expression's use of its names (e.g. `x[0]` on a scalar) on one event.
        cut.eval(1, |_| vec![0.0]).map_err(|e| bad(e.to_string()))?;
        Ok(cut)
    }

    /// Pass/fail of `n` events, feature `i`'s raw values given by `column(i)`.
    fn eval(&self, n: usize, column: impl Fn(usize) -> Vec<f64>) -> Result<Vec<bool>> {
        use crate::data::expr::ColumnRef;
        let cols: Vec<(String, Vec<f64>)> = self.vars.iter().map(|(name, i)| (name.clone(), column(*i))).collect();
        let map: std::collections::BTreeMap<String, ColumnRef<'_>> =
            cols.iter().map(|(n, v)| (n.clone(), ColumnRef::Scalar(v.as_slice()))).collect();
        let res = self
            .expr
            .eval_cut(&map, n)
            .map_err(|e| Error::Data(format!("data.acceptance '{}': {e}", self.expr.source())))?;
        Ok(res.pass)
    }

    /// The expression's text.
    pub fn source(&self) -> &str {
        self.expr.source()
    }
}

/// JSON has no infinities: an absent bound is written as the string `"inf"` or `"-inf"`.
mod bound {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            N(f64),
            S(String),
        }
        match V::deserialize(d)? {
            V::N(v) => Ok(v),
            V::S(s) if s == "inf" => Ok(f64::INFINITY),
            V::S(s) if s == "-inf" => Ok(f64::NEG_INFINITY),
            V::S(s) => Err(serde::de::Error::custom(format!("bound '{s}': expected a number, 'inf' or '-inf'"))),
        }
    }
}

impl Acceptance {
    /// Parses `name > v`, `name < v` or `lo < name < hi` against the feature
    /// names as an interval cut, and anything else as a boolean expression
    /// over the features.
    pub fn parse(spec: &str, names: &[String]) -> Result<Self> {
        let bad = |why: String| Error::Config(format!("data.acceptance '{spec}': {why}"));
        let parts: Vec<&str> = spec.split(['<', '>']).map(str::trim).collect();
        let num = |t: &str| t.parse::<f64>().ok();
        let feat = |t: &str| names.iter().position(|n| n == t);
        let interval = match parts.as_slice() {
            _ if spec.contains("<=") || spec.contains(">=") => None,
            [a, b] if spec.contains('>') => feat(a).zip(num(b)).map(|(f, v)| (f, v, f64::INFINITY)),
            [a, b] => feat(a).zip(num(b)).map(|(f, v)| (f, f64::NEG_INFINITY, v)),
            [a, b, c] if !spec.contains('>') => feat(b).zip(num(a)).zip(num(c)).map(|((f, lo), hi)| (f, lo, hi)),
            _ => None,
        };
        let cut = match interval {
            Some((feature, lo, hi)) => Acceptance { feature, lo, hi, expr: None },
            None => {
                if spec.trim().is_empty() {
                    return Err(bad("empty".into()));
                }
                let expr = ExprCut::new(spec, names)?;
                return Ok(Acceptance { feature: 0, lo: f64::NEG_INFINITY, hi: f64::INFINITY, expr: Some(expr) });
            }
        };
        if cut.lo.partial_cmp(&cut.hi) != Some(std::cmp::Ordering::Less) {
            return Err(bad("empty interval".into()));
        }
        Ok(cut)
    }

    /// Whether a raw event passes.
    pub fn keeps(&self, row: &[f32]) -> bool {
        match &self.expr {
            Some(e) => e
                .eval(1, |i| vec![row.get(i).map_or(f64::NAN, |&v| f64::from(v))])
                .is_ok_and(|p| p.first().copied().unwrap_or(false)),
            None => row.get(self.feature).is_some_and(|&v| f64::from(v) > self.lo && f64::from(v) < self.hi),
        }
    }

    /// Pass/fail of every row of raw events `xs: [N, D]`.
    pub fn keeps_rows(&self, xs: ndarray::ArrayView2<'_, f32>) -> Vec<bool> {
        match &self.expr {
            Some(e) => e
                .eval(xs.nrows(), |i| xs.column(i).iter().map(|&v| f64::from(v)).collect())
                .unwrap_or_else(|_| vec![false; xs.nrows()]),
            None => xs
                .outer_iter()
                .map(|r| r.get(self.feature).is_some_and(|&v| f64::from(v) > self.lo && f64::from(v) < self.hi))
                .collect(),
        }
    }

    /// The largest feature index the cut reads.
    pub fn max_feature(&self) -> usize {
        match &self.expr {
            Some(e) => e.vars.iter().map(|v| v.1).max().unwrap_or(0),
            None => self.feature,
        }
    }

    /// How the cut reads in messages: `lo < name < hi` or the expression.
    pub fn describe(&self, names: &[String]) -> String {
        match &self.expr {
            Some(e) => e.source().to_string(),
            None => format!("{} < {} < {}", self.lo, names.get(self.feature).map_or("?", String::as_str), self.hi),
        }
    }

    /// Boolean mask `[N]` of raw events `xs: [N, D]` that pass.
    pub fn mask(&self, xs: &Tensor) -> Tensor {
        if let Some(e) = &self.expr {
            let n = xs.size()[0] as usize;
            let host = xs.to_device(tch::Device::Cpu).to_kind(tch::Kind::Double);
            let column = |i: usize| Vec::<f64>::try_from(host.select(1, i as i64).contiguous()).unwrap_or_default();
            let pass = e.eval(n, column).unwrap_or_else(|_| vec![false; n]);
            return Tensor::from_slice(&pass).to_device(xs.device());
        }
        let v = xs.select(1, self.feature as i64);
        let mut m = v.gt(self.lo);
        if self.hi.is_finite() {
            m = m.logical_and(&v.lt(self.hi));
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Every step and a chain of them: values at and near the bounds, labels per event.
    fn cases() -> Vec<(Vec<Step>, Vec<f64>)> {
        let tiny = 1e-6;
        vec![
            (vec![Step::Log], vec![1e-6, 0.5, 1.0, 7.0, 1e4]),
            (vec![Step::Shift { by: 2.5 }], vec![-3.0, 0.0, 2.5, 100.0, 1e-3]),
            (vec![Step::Scale { by: -4.0 }], vec![-3.0, 0.0, 2.5, 100.0, 1e-3]),
            (vec![Step::Bounded { lo: 0.415 }], vec![0.415 + tiny, 0.42, 0.5, 3.0, 9.5]),
            (vec![Step::Logit { lo: -1.0, hi: 2.0 }], vec![-1.0 + tiny, -0.5, 0.0, 1.9, 2.0 - tiny]),
            (vec![Step::DivLabel { label: 1 }, Step::Log], vec![0.3, 0.5, 1.0, 7.0, 12.0]),
            (vec![Step::SubLabel { label: 0 }, Step::Scale { by: 3.0 }], vec![-3.0, 0.0, 2.5, 100.0, 1e-3]),
            (vec![Step::Shift { by: 0.415 }, Step::DivLabel { label: 1 }, Step::Log], vec![0.4151, 0.5, 1.0, 3.0, 9.0]),
        ]
    }

    fn labels() -> Tensor {
        Tensor::from_slice(&[1000.0f64, 0.5, 1250.0, 1.5, 3250.0, 9.5, 2000.0, 3.0, 1500.0, 0.7])
            .view([5, 2])
            .to_kind(Kind::Double)
    }

    #[test]
    fn every_step_inverts_exactly_including_at_the_bounds() {
        let c = labels();
        for (chain, xs) in cases() {
            let t = Transforms { chains: vec![chain.clone()] };
            let x = Tensor::from_slice(&xs).view([5, 1]).to_kind(Kind::Double);
            let (y, _) = t.forward(&x, &c);
            assert!(bool::try_from(y.isfinite().all()).unwrap(), "{chain:?}: {y}");
            let back = t.inverse(&y, &c);
            let err = f64::try_from((&back - &x).abs().max()).unwrap();
            let scale = f64::try_from(x.abs().max()).unwrap().max(1.0);
            assert!(err <= 1e-9 * scale, "{chain:?}: round trip error {err}");
        }
    }

    #[test]
    fn log_det_matches_autograd() {
        let c = labels();
        for (chain, xs) in cases() {
            let t = Transforms { chains: vec![chain.clone()] };
            let x = Tensor::from_slice(&xs).view([5, 1]).to_kind(Kind::Double).set_requires_grad(true);
            let (y, ldj) = t.forward(&x, &c);
            let g = Tensor::run_backward(&[y.sum(Kind::Double)], &[&x], false, false);
            let want = g[0].abs().log().view([5]);
            let err = f64::try_from((&ldj.to_kind(Kind::Double) - &want).abs().max()).unwrap();
            assert!(err < 1e-6, "{chain:?}: log|dy/dx| off by {err}: {ldj} vs {want}");
        }
    }

    #[test]
    fn parse_builds_chains_and_names_bad_steps() {
        let labs = names(&["labelphi", "labelomega"]);
        assert_eq!(
            parse_chain("log_ratio(labelomega)", &labs, "x").unwrap(),
            vec![Step::DivLabel { label: 1 }, Step::Log]
        );
        assert_eq!(
            parse_chain("shift(0.415) | div(labelphi) | log", &labs, "x").unwrap(),
            vec![Step::Shift { by: 0.415 }, Step::DivLabel { label: 0 }, Step::Log]
        );
        assert_eq!(parse_chain("logit(0, 1)", &labs, "x").unwrap(), vec![Step::Logit { lo: 0.0, hi: 1.0 }]);
        for (bad, needle) in [
            ("sqrt", "unknown step 'sqrt'"),
            ("div(labelmass)", "no label 'labelmass'"),
            ("logit(1, 0)", "lo < hi"),
            ("shift(abc)", "'abc' is not a finite number"),
            ("bounded(inf)", "not a finite number"),
            ("log(2)", "takes 0 argument"),
            ("bounded(1", "missing ')'"),
        ] {
            let e = parse_chain(bad, &labs, "data.feature_transforms.omega").unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("data.feature_transforms.omega"), "{bad}: {e}");
        }
        let specs = [("omega".to_string(), "div(labelomega)".to_string())].into_iter().collect();
        let e = Transforms::from_specs(&specs, &labs, &[], "label", false).unwrap_err().to_string();
        assert!(e.contains("no label 'omega'"), "{e}");
        let specs = [("labelomega".to_string(), "div(labelphi)".to_string())].into_iter().collect();
        let e = Transforms::from_specs(&specs, &labs, &labs, "label", false).unwrap_err().to_string();
        assert!(e.contains("cannot refer to labels"), "{e}");
    }

    #[test]
    fn domain_errors_name_the_feature_the_step_and_the_event() {
        let t = Transforms { chains: vec![vec![], vec![Step::Bounded { lo: 0.415 }]] };
        let mut data = ndarray::array![[1.0f32, 0.5], [2.0, 0.4]];
        let labs = ndarray::array![[1.0f32], [1.0]];
        let e = t.apply_rows(&mut data, &labs, &names(&["phi", "omega"]), &names(&["m"]), "file.root").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("file.root") && msg.contains("event 1") && msg.contains("'omega'"), "{msg}");
        assert!(msg.contains("bounded(0.415)") && msg.contains("> 0.415"), "{msg}");
    }

    #[test]
    fn acceptance_parses_all_forms() {
        let f = names(&["phi", "omega"]);
        let a = Acceptance::parse("omega > 0.415", &f).unwrap();
        assert_eq!((a.feature, a.lo, a.hi), (1, 0.415, f64::INFINITY));
        let a = Acceptance::parse("phi < 3000", &f).unwrap();
        assert_eq!((a.feature, a.lo, a.hi), (0, f64::NEG_INFINITY, 3000.0));
        let a = Acceptance::parse("0 < phi < 3000", &f).unwrap();
        assert_eq!((a.feature, a.lo, a.hi), (0, 0.0, 3000.0));
        assert!(a.keeps(&[10.0, 0.0]) && !a.keeps(&[0.0, 0.0]) && !a.keeps(&[3000.0, 0.0]));
        let m = a.mask(&Tensor::from_slice(&[10.0f32, 0.0, -1.0, 0.0]).view([2, 2]));
        assert_eq!(Vec::<bool>::try_from(m).unwrap(), vec![true, false]);
        // Expressions over the features.
        let e = Acceptance::parse("abs(phi - omega) < 2 and omega > 0.5", &f).unwrap();
        assert!(e.expr.is_some());
        assert!(e.keeps(&[1.0, 0.6]) && !e.keeps(&[3.0, 0.6]) && !e.keeps(&[0.4, 0.45]));
        let m = e.mask(&Tensor::from_slice(&[1.0f32, 0.6, 3.0, 0.6, 0.4, 0.45]).view([3, 2]));
        assert_eq!(Vec::<bool>::try_from(m).unwrap(), vec![true, false, false]);
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Acceptance>(&json).unwrap(), e, "{json}");
        for bad in ["mass > 1", "omega > x", "3 < omega < 1", "omega >", "abs(eta) < 2", "omega[0] > 1", ""] {
            let e = Acceptance::parse(bad, &f).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
