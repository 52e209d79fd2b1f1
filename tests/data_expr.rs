//! Tests of branch expressions and cuts (`fedhex::data::expr`).

use std::collections::{BTreeMap, BTreeSet};
use std::panic;

use fedhex::data::expr::{Column, ColumnRef, Columns, CutResult, ErrorKind, Expr, ExprError};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

type Cols = BTreeMap<String, Column>;

fn scalar(m: &mut Cols, name: &str, v: &[f64]) {
    m.insert(name.to_string(), Column::Scalar(v.to_vec()));
}

fn jagged(m: &mut Cols, name: &str, rows: &[&[f64]]) {
    m.insert(name.to_string(), Column::from_rows(rows.iter().copied()));
}

/// Same value, with NaN equal to NaN (and 0.0 distinct from -0.0).
fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn same_opt(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => same(x, y),
        _ => false,
    }
}

fn eval(src: &str, cols: &Cols, n: usize) -> Vec<Option<f64>> {
    Expr::parse(src).unwrap_or_else(|e| panic!("{e}")).eval(cols, n).unwrap_or_else(|e| panic!("{e}"))
}

fn cut(src: &str, cols: &Cols, n: usize) -> CutResult {
    Expr::parse(src).unwrap_or_else(|e| panic!("{e}")).eval_cut(cols, n).unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(src: &str) -> ExprError {
    match Expr::parse(src) {
        Ok(e) => panic!("{src:?} parsed unexpectedly: {e:?}"),
        Err(e) => e,
    }
}

fn eval_err(src: &str, cols: &Cols, n: usize) -> ExprError {
    let e = Expr::parse(src).unwrap_or_else(|e| panic!("{e}"));
    match e.eval(cols, n) {
        Ok(v) => panic!("{src:?} evaluated unexpectedly: {v:?}"),
        Err(err) => {
            // eval_cut reports the same error.
            assert_eq!(e.eval_cut(cols, n).unwrap_err(), err);
            err
        }
    }
}

fn truthy(x: f64) -> bool {
    x != 0.0 && !x.is_nan()
}

/// `a > b` (a function so that negating it reads plainly).
fn gt(a: f64, b: f64) -> bool {
    a > b
}

fn bf(x: bool) -> f64 {
    f64::from(u8::from(x))
}

// ---------------------------------------------------------------------------
// Precedence and arithmetic, checked against plain Rust arithmetic
// ---------------------------------------------------------------------------

type F3 = fn(f64, f64, f64) -> f64;

#[test]
fn precedence_table() {
    let a_vals = [3.0, -2.0, 0.0, 7.5, 1.0, f64::NAN, -0.5, 2.0];
    let b_vals = [4.0, 3.0, 0.0, -1.5, 1.0, 2.0, 0.25, 2.0];
    let c_vals = [2.0, 0.5, 5.0, 3.0, 0.0, 1.0, -3.0, 3.0];
    let n = a_vals.len();
    let mut m = Cols::new();
    scalar(&mut m, "a", &a_vals);
    scalar(&mut m, "b", &b_vals);
    scalar(&mut m, "c", &c_vals);

    let cases: Vec<(&str, F3)> = vec![
        ("a + b * c", |a, b, c| a + b * c),
        ("(a + b) * c", |a, b, c| (a + b) * c),
        ("a - b - c", |a, b, c| (a - b) - c),
        ("a - (b - c)", |a, b, c| a - (b - c)),
        ("a / b / c", |a, b, c| (a / b) / c),
        ("a * b / c", |a, b, c| (a * b) / c),
        ("a / b * c", |a, b, c| (a / b) * c),
        ("a % b * c", |a, b, c| (a % b) * c),
        ("a + b % c", |a, b, c| a + (b % c)),
        ("a - b + c", |a, b, c| (a - b) + c),
        ("-a * b", |a, b, _| (-a) * b),
        ("-a ** c", |a, _, c| -(a.powf(c))),
        ("-a ^ c", |a, _, c| -(a.powf(c))),
        ("(-a) ** c", |a, _, c| (-a).powf(c)),
        ("a ** b ** c", |a, b, c| a.powf(b.powf(c))),
        ("(a ** b) ** c", |a, b, c| a.powf(b).powf(c)),
        ("a ** -c", |a, _, c| a.powf(-c)),
        ("2 ** -c * a", |a, _, c| 2f64.powf(-c) * a),
        ("a * b ** c", |a, b, c| a * b.powf(c)),
        ("- - a", |a, _, _| -(-a)),
        ("+a - -b", |a, b, _| a - (-b)),
        ("a + b > c * 2", |a, b, c| bf(a + b > c * 2.0)),
        ("a < b == (c > 1)", |_, _, _| f64::NAN), // placeholder, replaced below
        ("(a < b) == (c > 1)", |a, b, c| bf((bf(a < b)) == bf(c > 1.0))),
        ("a + b > c and a < b", |a, b, c| bf(a + b > c && a < b)),
        ("a > b or b > c and c > a", |a, b, c| bf(a > b || (b > c && c > a))),
        ("(a > b or b > c) and c > a", |a, b, c| bf((a > b || b > c) && c > a)),
        ("not a > b", |a, b, _| bf(!gt(a, b))),
        ("!a == b", |a, b, _| bf(!(a == b))),
        ("!a", |a, _, _| bf(!truthy(a))),
        ("not not a", |a, _, _| bf(truthy(a))),
        ("not a > b and c < a", |a, b, c| bf(!gt(a, b) && c < a)),
        ("not (a > b and c < a)", |a, b, c| bf(!(a > b && c < a))),
        ("a && b || c", |a, b, c| bf((truthy(a) && truthy(b)) || truthy(c))),
        ("a || b && c", |a, b, c| bf(truthy(a) || (truthy(b) && truthy(c)))),
        ("a != b", |a, b, _| bf(a != b)),
        ("a <= b", |a, b, _| bf(a <= b)),
        ("a >= b", |a, b, _| bf(a >= b)),
        ("a == a", |a, _, _| bf(a == a)),
        ("a / 0", |a, _, _| a / 0.0),
        ("a % 0", |a, _, _| a % 0.0),
        ("abs(a - b) + sqrt(c)", |a, b, c| (a - b).abs() + c.sqrt()),
        ("log(c) + log10(c) + exp(a)", |a, _, c| c.ln() + c.log10() + a.exp()),
        ("sin(a) * cos(b) - tan(c)", |a, b, c| a.sin() * b.cos() - c.tan()),
        ("atan2(a, b) + pow(b, c)", |a, b, c| a.atan2(b) + b.powf(c)),
        ("floor(a / c) + ceil(b / c)", |a, b, c| (a / c).floor() + (b / c).ceil()),
        ("min(a, b) + max(b, c)", |a, b, c| {
            let mn = if a.is_nan() || b.is_nan() { f64::NAN } else { a.min(b) };
            let mx = if b.is_nan() || c.is_nan() { f64::NAN } else { b.max(c) };
            mn + mx
        }),
        ("max(a, b, c)", |a, b, c| if a.is_nan() || b.is_nan() || c.is_nan() { f64::NAN } else { a.max(b).max(c) }),
        ("pi * a", |a, _, _| std::f64::consts::PI * a),
        ("true + false * a + 1e1 + .5 + 2.5E-1", |a, _, _| 1.0 + 0.0 * a + 10.0 + 0.5 + 0.25),
        ("a*b-c/a%b", |a, b, c| a * b - (c / a) % b),
    ];
    for (src, f) in cases {
        if src == "a < b == (c > 1)" {
            assert_eq!(parse_err(src).kind(), ErrorKind::Syntax);
            continue;
        }
        let got = eval(src, &m, n);
        for i in 0..n {
            let want = f(a_vals[i], b_vals[i], c_vals[i]);
            let g = got[i].unwrap_or_else(|| panic!("{src}: event {i} invalid"));
            assert!(
                same(g, want),
                "{src}: event {i} (a={}, b={}, c={}): got {g}, want {want}",
                a_vals[i],
                b_vals[i],
                c_vals[i]
            );
        }
    }
}

#[test]
fn nan_and_infinity_semantics() {
    let mut m = Cols::new();
    scalar(&mut m, "x", &[f64::NAN, 1.0, 0.0, -1.0]);
    let n = 4;
    // Comparisons with NaN are false, except != which is true.
    assert_eq!(eval("x == x", &m, n), vec![Some(0.0), Some(1.0), Some(1.0), Some(1.0)]);
    assert_eq!(eval("x != x", &m, n), vec![Some(1.0), Some(0.0), Some(0.0), Some(0.0)]);
    assert_eq!(eval("x < 5", &m, n)[0], Some(0.0));
    assert_eq!(eval("x >= 5", &m, n)[0], Some(0.0));
    // Division by zero follows IEEE.
    let d = eval("1 / x", &m, n);
    assert!(d[0].unwrap().is_nan());
    assert_eq!(d[2], Some(f64::INFINITY));
    assert_eq!(eval("-1 / x", &m, n)[2], Some(f64::NEG_INFINITY));
    assert!(eval("x / x", &m, n)[2].unwrap().is_nan());
    // NaN is not true in a cut, and `not NaN` is true.
    assert_eq!(cut("x", &m, n).pass, vec![false, true, false, true]);
    assert_eq!(cut("not x", &m, n).pass, vec![true, false, true, false]);
    // NaN propagates through arithmetic.
    assert!(eval("x * 0 + 1", &m, n)[0].unwrap().is_nan());
}

// ---------------------------------------------------------------------------
// Indexing and len()
// ---------------------------------------------------------------------------

fn physics_cols() -> Cols {
    let mut m = Cols::new();
    scalar(&mut m, "CBL_Region", &[1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0]);
    // Indices: in range, in range, in range, out of range, negative,
    // non-integer, NaN.
    scalar(&mut m, "CBL_RecoPhi_photonindex", &[0.0, 1.0, 0.0, 2.0, -1.0, 0.5, f64::NAN]);
    jagged(
        &mut m,
        "Photon_pt",
        &[&[250.0], &[300.0, 100.0], &[500.0], &[230.0, 240.0], &[260.0], &[270.0, 280.0], &[290.0]],
    );
    jagged(&mut m, "GenPhi_mass", &[&[1000.0], &[], &[2000.0, 1.0], &[], &[3.0], &[4.0], &[]]);
    m
}

#[test]
fn indexing_fixed_and_branch_valued() {
    let m = physics_cols();
    let n = 7;
    assert_eq!(eval("GenPhi_mass[0]", &m, n), vec![Some(1000.0), None, Some(2000.0), None, Some(3.0), Some(4.0), None]);
    assert_eq!(eval("GenPhi_mass[1]", &m, n), vec![None, None, Some(1.0), None, None, None, None]);
    assert_eq!(
        eval("Photon_pt[CBL_RecoPhi_photonindex]", &m, n),
        vec![Some(250.0), Some(100.0), Some(500.0), None, None, None, None]
    );
    // Constant out-of-range, negative, non-integer, NaN, infinite indices.
    for src in
        ["Photon_pt[2]", "Photon_pt[-1]", "Photon_pt[0.5]", "Photon_pt[0/0]", "Photon_pt[1/0]", "Photon_pt[1e30]"]
    {
        let got = eval(src, &m, n);
        let want: Vec<Option<f64>> = vec![None; n];
        assert_eq!(got, want, "{src}");
    }
    // Index computed from arithmetic; -0 counts as 0.
    assert_eq!(eval("Photon_pt[-0]", &m, n)[1], Some(300.0));
    assert_eq!(
        eval("Photon_pt[len(Photon_pt) - 1]", &m, n),
        vec![Some(250.0), Some(100.0), Some(500.0), Some(240.0), Some(260.0), Some(280.0), Some(290.0)]
    );
    // Index expressions may themselves index.
    let mut m2 = m.clone();
    jagged(&mut m2, "sel", &[&[0.0], &[1.0], &[5.0], &[], &[0.0], &[1.0], &[0.0]]);
    assert_eq!(
        eval("Photon_pt[sel[0]]", &m2, n),
        vec![Some(250.0), Some(100.0), None, None, Some(260.0), Some(280.0), Some(290.0)]
    );
}

#[test]
fn cut_counts_invalid_events() {
    let m = physics_cols();
    let n = 7;
    let res = cut("CBL_Region == 1 and Photon_pt[CBL_RecoPhi_photonindex] > 220", &m, n);
    // Event 2 fails on region (valid false); events 3..6 have bad indices and
    // region 1 -> invalid.
    assert_eq!(res.pass, vec![true, false, false, false, false, false, false]);
    assert_eq!(res.invalid, 4);
    assert_eq!(res.n_pass(), 1);
    // Guarding with len() makes every event valid.
    let res = cut("len(GenPhi_mass) > 0 and GenPhi_mass[0] > 10", &m, n);
    assert_eq!(res.invalid, 0);
    assert_eq!(res.pass, vec![true, false, true, false, false, false, false]);
}

#[test]
fn kleene_logic() {
    let mut m = Cols::new();
    // x[0] is invalid for event 1 and 3.
    jagged(&mut m, "x", &[&[1.0], &[], &[0.0], &[]]);
    scalar(&mut m, "t", &[1.0, 1.0, 0.0, 0.0]);
    let n = 4;
    assert_eq!(eval("t and x[0]", &m, n), vec![Some(1.0), None, Some(0.0), Some(0.0)]);
    assert_eq!(eval("x[0] and t", &m, n), vec![Some(1.0), None, Some(0.0), Some(0.0)]);
    assert_eq!(eval("t or x[0]", &m, n), vec![Some(1.0), Some(1.0), Some(0.0), None]);
    assert_eq!(eval("x[0] || t", &m, n), vec![Some(1.0), Some(1.0), Some(0.0), None]);
    assert_eq!(eval("not x[0]", &m, n), vec![Some(0.0), None, Some(1.0), None]);
    assert_eq!(eval("x[0] + t", &m, n), vec![Some(2.0), None, Some(0.0), None]);
    assert_eq!(eval("max(x[0], t)", &m, n)[1], None);
    let r = cut("t or x[0]", &m, n);
    assert_eq!(r.pass, vec![true, true, false, false]);
    assert_eq!(r.invalid, 1);
}

#[test]
fn len_and_empty_entries() {
    let mut m = Cols::new();
    jagged(&mut m, "j", &[&[], &[1.0, 2.0, 3.0], &[], &[4.0]]);
    let n = 4;
    assert_eq!(eval("len(j)", &m, n), vec![Some(0.0), Some(3.0), Some(0.0), Some(1.0)]);
    assert_eq!(eval("j[0]", &m, n), vec![None, Some(1.0), None, Some(4.0)]);
    assert_eq!(eval("len( j ) * 2 + j[len(j)-1]", &m, n)[1], Some(9.0));
    // All-empty column.
    let mut e = Cols::new();
    jagged(&mut e, "j", &[&[], &[], &[]]);
    assert_eq!(eval("len(j)", &e, 3), vec![Some(0.0); 3]);
    assert_eq!(eval("j[0]", &e, 3), vec![None; 3]);
    let r = cut("j[0] > 0", &e, 3);
    assert_eq!((r.pass, r.invalid), (vec![false; 3], 3));
    // Offsets need not start at zero (a slice of a larger basket).
    let mut s = Cols::new();
    s.insert("j".to_string(), Column::Jagged { offsets: vec![2, 3, 3, 5], values: vec![9.0, 9.0, 1.0, 2.0, 3.0] });
    assert_eq!(eval("len(j)", &s, 3), vec![Some(1.0), Some(0.0), Some(2.0)]);
    assert_eq!(eval("j[0]", &s, 3), vec![Some(1.0), None, Some(2.0)]);
    assert_eq!(eval("j[1]", &s, 3), vec![None, None, Some(3.0)]);
}

#[test]
fn zero_events_and_constant_results() {
    let m = physics_cols();
    assert_eq!(eval("Photon_pt[0] > 1", &m, 0), Vec::<Option<f64>>::new());
    assert_eq!(cut("1", &m, 0), CutResult::default());
    assert_eq!(eval("1 + 2 * 3", &m, 3), vec![Some(7.0); 3]);
    assert_eq!(cut("true", &m, 2).pass, vec![true, true]);
    assert_eq!(cut("false", &m, 2).pass, vec![false, false]);
    // Branches are still checked when nothing depends on the data.
    assert_eq!(eval_err("nope * 0", &m, 0).kind(), ErrorKind::MissingBranch);
}

#[test]
fn many_events_cross_block_boundaries() {
    let n = 10_007;
    let mut m = Cols::new();
    let x: Vec<f64> = (0..n).map(|i| (i % 13) as f64).collect();
    let rows: Vec<Vec<f64>> = (0..n).map(|i| vec![i as f64; i % 4]).collect();
    scalar(&mut m, "x", &x);
    m.insert("j".to_string(), Column::from_rows(&rows));
    let got = eval("j[x % 4] + x", &m, n);
    let res = cut("x > 6 and j[2] >= 0", &m, n);
    let mut invalid = 0;
    for i in 0..n {
        let k = i % 13 % 4;
        let want = (k < i % 4).then(|| i as f64 + x[i]);
        assert_eq!(got[i], want, "event {i}");
        let valid = x[i] <= 6.0 || i % 4 == 3;
        invalid += usize::from(!valid);
        assert_eq!(res.pass[i], x[i] > 6.0 && i % 4 == 3, "event {i}");
    }
    assert_eq!(res.invalid, invalid);
}

#[test]
fn branches_lists_every_reference() {
    let e =
        Expr::parse("CBL_Region == 1 and Photon_pt[CBL_RecoPhi_photonindex] > 220 or len(Jet.pt) > abs(x)").unwrap();
    let want: BTreeSet<String> =
        ["CBL_Region", "Photon_pt", "CBL_RecoPhi_photonindex", "Jet.pt", "x"].iter().map(|s| s.to_string()).collect();
    assert_eq!(e.branches(), want);
    assert_eq!(e.source(), "CBL_Region == 1 and Photon_pt[CBL_RecoPhi_photonindex] > 220 or len(Jet.pt) > abs(x)");
    assert_eq!(Expr::parse("1 + pi").unwrap().branches(), BTreeSet::new());
    // A branch may share a function's name when it is not called.
    assert_eq!(Expr::parse("max + min(max, 1)").unwrap().branches(), BTreeSet::from(["max".to_string()]));
    let parsed: Expr = "a + 1".parse().unwrap();
    assert_eq!(parsed.to_string(), "a + 1");
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

#[test]
fn error_rendering_matches_reference_format() {
    let e = parse_err("Photon_pt[0 > ");
    assert_eq!(e.pos(), 14);
    assert_eq!(e.kind(), ErrorKind::Syntax);
    assert_eq!(e.message(), "unexpected end of expression");
    assert_eq!(e.expr(), "Photon_pt[0 > ");
    assert_eq!(
        e.to_string(),
        format!(
            "expression \"Photon_pt[0 > \": unexpected end of expression at position 14\n  Photon_pt[0 > \n  {}^",
            " ".repeat(14)
        )
    );
    // Positions count characters, not bytes.
    let e = parse_err("é + (");
    assert_eq!(e.pos(), 0);
    let e = parse_err("x + \"é\"");
    assert_eq!(e.pos(), 4);
    let e = parse_err("xé");
    assert_eq!(e.pos(), 1);
    assert!(e.to_string().ends_with("\n   ^"), "{e}");
}

#[test]
fn syntax_errors_with_positions() {
    // (source, position, part of the message)
    let cases: &[(&str, usize, &str)] = &[
        ("", 0, "empty expression"),
        ("   ", 3, "empty expression"),
        ("Photon_pt[0 > ", 14, "unexpected end of expression"),
        ("a +", 3, "unexpected end of expression"),
        ("a + * b", 4, "unexpected '*'"),
        ("a b", 2, "unexpected name 'b'; expected an operator"),
        ("a 1", 2, "unexpected number '1'"),
        ("(a + b", 6, "expected ')' to close the one at position 0"),
        ("a + b)", 5, "unmatched ')'"),
        ("a]", 1, "unmatched ']'"),
        ("x[0", 3, "expected ']' to close the one at position 1"),
        ("x[0)", 3, "expected ']'"),
        ("x[]", 2, "expected an index expression"),
        ("x[0][1]", 4, "indexed only once"),
        ("(x)[0]", 3, "only a branch name can be indexed"),
        ("abs(x)[0]", 6, "only a branch name can be indexed"),
        ("1[0]", 1, "only a branch name can be indexed"),
        ("a = 1", 2, "use '=='"),
        ("a & b", 2, "'&&'"),
        ("a | b", 2, "'||'"),
        ("a <> b", 2, "'!='"),
        ("a < b < c", 6, "cannot be chained"),
        ("a == b != c", 7, "cannot be chained"),
        ("a == not b", 5, "without parentheses"),
        ("1 + !b", 4, "without parentheses"),
        ("1.2.3", 0, "invalid number '1.2.3'"),
        ("2x", 0, "invalid number '2x'"),
        ("1e", 0, "invalid number '1e'"),
        ("1e+", 0, "invalid number '1e'"),
        ("0x1F", 0, "invalid number '0x1F'"),
        ("a + #", 4, "unexpected character '#'"),
        ("a.", 1, "unexpected character '.'"),
        ("a + .", 4, "unexpected character '.'"),
        ("foo(1)", 0, "unknown function 'foo'"),
        ("sqrt()", 0, "sqrt() takes 1 argument, got 0"),
        ("sqrt(1, 2)", 0, "sqrt() takes 1 argument, got 2"),
        ("x + atan2(1)", 4, "atan2() takes 2 arguments, got 1"),
        ("pow(1, 2, 3)", 0, "pow() takes 2 arguments, got 3"),
        ("min(1)", 0, "min() takes at least 2 arguments, got 1"),
        ("max()", 0, "max() takes at least 2 arguments, got 0"),
        ("abs(1 2)", 6, "expected ',' or ')' in the call of abs() at position 3"),
        ("abs(1,", 6, "unexpected end of expression"),
        ("abs(,1)", 4, "unexpected ','"),
        ("len(1)", 4, "len() takes a jagged-branch name"),
        ("len(x[0])", 5, "single bare jagged-branch name"),
        ("len(x, y)", 5, "single bare jagged-branch name"),
        ("len()", 4, "len() takes a jagged-branch name"),
        ("len x", 4, "unexpected name 'x'"),
        ("and", 0, "unexpected 'and'"),
        ("a and", 5, "unexpected end of expression"),
        ("not", 3, "unexpected end of expression"),
        ("pi[0]", 2, "only a branch name can be indexed"),
        ("true(1)", 4, "unexpected '('"),
        ("()", 1, "unexpected ')'"),
        ("a ** ", 5, "unexpected end of expression"),
        ("a,b", 1, "unexpected ','"),
    ];
    for &(src, pos, msg) in cases {
        let e = parse_err(src);
        assert_eq!(e.kind(), ErrorKind::Syntax, "{src:?}: {e}");
        assert_eq!(e.pos(), pos, "{src:?}: {e}");
        assert!(e.message().contains(msg), "{src:?}: {e}");
        assert!(e.to_string().contains(&format!("at position {pos}")), "{e}");
    }
}

#[test]
fn nesting_limits() {
    let ok = format!("{}x{}", "(".repeat(60), ")".repeat(60));
    assert!(Expr::parse(&ok).is_ok());
    for src in [
        format!("{}x{}", "(".repeat(100_000), ")".repeat(100_000)),
        format!("{}x", "-".repeat(100_000)),
        format!("{}x", "not ".repeat(100_000)),
        vec!["x"; 100_000].join(" * "),
        vec!["x"; 100_000].join(" ** "),
        format!("{}1{}", "abs(".repeat(100_000), ")".repeat(100_000)),
        format!("{}0{}", "x[".repeat(100_000), "]".repeat(100_000)),
    ] {
        let e = Expr::parse(&src).unwrap_err();
        assert!(e.message().contains("deeply"), "{}", e.message());
    }
    // An accepted long chain evaluates.
    let mut m = Cols::new();
    scalar(&mut m, "x", &[1.0, 2.0]);
    let chain = vec!["x"; 200].join(" + ");
    assert_eq!(eval(&chain, &m, 2), vec![Some(200.0), Some(400.0)]);
}

#[test]
fn evaluation_errors() {
    let m = physics_cols();
    let n = 7;

    let e = eval_err("CBL_Region == 1 and Photon_Pt[0] > 2", &m, n);
    assert_eq!(e.kind(), ErrorKind::MissingBranch);
    assert_eq!(e.pos(), 20);
    assert_eq!(e.branch_name(), Some("Photon_Pt"));
    assert_eq!(e.suggestions(), ["Photon_pt".to_string()]);
    assert!(e.message().contains("branch 'Photon_Pt' not found"), "{e}");
    assert!(e.message().contains("did you mean 'Photon_pt'"), "{e}");
    let shown = e.to_string();
    assert!(shown.contains("CBL_Region == 1 and Photon_Pt[0] > 2"));

    let e = eval_err("1 + zzzzzzzzz", &m, n);
    assert_eq!((e.kind(), e.pos()), (ErrorKind::MissingBranch, 4));
    assert!(e.suggestions().is_empty());
    assert_eq!(e.message(), "branch 'zzzzzzzzz' not found");

    let e = eval_err("CBL_Region == 1 and Photon_pt > 220", &m, n);
    assert_eq!((e.kind(), e.pos()), (ErrorKind::BranchKind, 20));
    assert_eq!(e.message(), "branch 'Photon_pt' is jagged (variable length); use Photon_pt[i] or len(Photon_pt)");

    let e = eval_err("x + CBL_Region[0]", &m.clone().tap(|m| scalar(m, "x", &[0.0; 7])), n);
    assert_eq!((e.kind(), e.pos()), (ErrorKind::BranchKind, 4));
    assert!(e.message().contains("cannot be indexed"), "{e}");

    let e = eval_err("len(CBL_Region)", &m, n);
    assert_eq!((e.kind(), e.pos()), (ErrorKind::BranchKind, 4));
    assert!(e.message().contains("len() needs a jagged branch"), "{e}");

    // Missing branch inside an index expression.
    let e = eval_err("Photon_pt[idx]", &m, n);
    assert_eq!((e.kind(), e.pos()), (ErrorKind::MissingBranch, 10));

    // Column shapes that do not cover the events.
    let e = eval_err("CBL_Region", &m, 8);
    assert_eq!((e.kind(), e.pos()), (ErrorKind::BadColumn, 0));
    let e = eval_err("len(Photon_pt)", &m, 8);
    assert_eq!((e.kind(), e.pos()), (ErrorKind::BadColumn, 4));
    let mut bad = Cols::new();
    bad.insert("j".to_string(), Column::Jagged { offsets: vec![0, 2, 1], values: vec![1.0, 2.0] });
    assert!(eval_err("j[0]", &bad, 2).message().contains("decreasing"));
    bad.insert("j".to_string(), Column::Jagged { offsets: vec![0, 2, 5], values: vec![1.0, 2.0] });
    let e = eval_err("j[0]", &bad, 2);
    assert!(e.message().contains("only 2 values"), "{e}");
    // Fewer events than the column holds is fine.
    assert_eq!(eval("j[0]", &bad, 1), vec![Some(1.0)]);
}

trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}

impl<T> Tap for T {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

/// A `Columns` implementation that cannot list its names, and borrowed views.
struct Borrowed<'a> {
    x: &'a [f64],
    offsets: &'a [u64],
    values: &'a [f64],
}

impl Columns for Borrowed<'_> {
    fn column(&self, name: &str) -> Option<ColumnRef<'_>> {
        match name {
            "x" => Some(ColumnRef::Scalar(self.x)),
            "j" => Some(ColumnRef::Jagged { offsets: self.offsets, values: self.values }),
            _ => None,
        }
    }
}

#[test]
fn custom_columns_implementation() {
    let x = [1.0, 2.0];
    let offsets = [0u64, 1, 3];
    let values = [5.0, 6.0, 7.0];
    let c = Borrowed { x: &x, offsets: &offsets, values: &values };
    let e = Expr::parse("j[x - 1] * 10").unwrap();
    assert_eq!(e.eval(&c, 2).unwrap(), vec![Some(50.0), Some(70.0)]);
    let err = Expr::parse("y").unwrap().eval(&c, 2).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingBranch);
    assert!(err.suggestions().is_empty());
    // Maps of borrowed views work too.
    let mut views: BTreeMap<String, ColumnRef<'_>> = BTreeMap::new();
    views.insert("x".into(), ColumnRef::Scalar(&x));
    assert_eq!(Expr::parse("x * 2").unwrap().eval(&views, 2).unwrap(), vec![Some(2.0), Some(4.0)]);
    let mut hm = std::collections::HashMap::new();
    hm.insert("x".to_string(), Column::Scalar(x.to_vec()));
    assert_eq!(Expr::parse("x > 1").unwrap().eval_cut(&hm, 2).unwrap().pass, vec![false, true]);
}

// ---------------------------------------------------------------------------
// Randomized round trip: random tree -> string -> parse -> eval vs. reference
// ---------------------------------------------------------------------------

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
    fn name(&mut self, xs: &[&'static str]) -> &'static str {
        xs[self.below(xs.len())]
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Pow,
}

#[derive(Debug, Clone)]
enum E {
    Num(f64),
    Scalar(&'static str),
    Index(&'static str, Box<E>),
    Len(&'static str),
    Neg(Box<E>),
    Not(Box<E>),
    Bin(Op, Box<E>, Box<E>),
    F1(&'static str, Box<E>),
    F2(&'static str, Box<E>, Box<E>),
}

const SCALARS: &[&str] = &["a", "b", "idx", "Ev.w"];
const JAGGED: &[&str] = &["j", "Jet.pt"];
const F1S: &[&str] = &["abs", "sqrt", "log", "log10", "exp", "sin", "cos", "tan", "floor", "ceil"];
const F2S: &[&str] = &["atan2", "min", "max", "pow"];
const OPS: &[Op] = &[
    Op::Or,
    Op::And,
    Op::Eq,
    Op::Ne,
    Op::Lt,
    Op::Le,
    Op::Gt,
    Op::Ge,
    Op::Add,
    Op::Sub,
    Op::Mul,
    Op::Div,
    Op::Rem,
    Op::Pow,
];

fn gen_expr(r: &mut Rng, depth: u32) -> E {
    if depth == 0 || r.chance(0.2) {
        return match r.below(5) {
            0 => E::Num(*r.pick(&[0.0, 1.0, 2.0, 3.0, 0.5, 10.0, 1e-3, 2.5e10, 123.456])),
            1 | 2 => E::Scalar(r.name(SCALARS)),
            3 => E::Len(r.name(JAGGED)),
            _ => E::Index(r.name(JAGGED), Box::new(gen_index(r, depth))),
        };
    }
    let d = depth - 1;
    match r.below(10) {
        0 => E::Neg(Box::new(gen_expr(r, d))),
        1 => E::Not(Box::new(gen_expr(r, d))),
        2 => E::F1(r.name(F1S), Box::new(gen_expr(r, d))),
        3 => E::F2(r.name(F2S), Box::new(gen_expr(r, d)), Box::new(gen_expr(r, d))),
        4 => E::Index(r.name(JAGGED), Box::new(gen_index(r, d))),
        _ => E::Bin(*r.pick(OPS), Box::new(gen_expr(r, d)), Box::new(gen_expr(r, d))),
    }
}

fn gen_index(r: &mut Rng, depth: u32) -> E {
    match r.below(6) {
        0 => E::Num(*r.pick(&[0.0, 1.0, 2.0, 3.0, 1.5])),
        1 => E::Neg(Box::new(E::Num(1.0))),
        2 => E::Scalar("idx"),
        3 => E::Bin(Op::Sub, Box::new(E::Len(r.name(JAGGED))), Box::new(E::Num(1.0))),
        _ => gen_expr(r, depth.min(2)),
    }
}

/// Precedence levels as documented in the module.
fn prec(e: &E) -> u8 {
    match e {
        E::Bin(op, ..) => match op {
            Op::Or => 1,
            Op::And => 2,
            Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge => 4,
            Op::Add | Op::Sub => 5,
            Op::Mul | Op::Div | Op::Rem => 6,
            Op::Pow => 8,
        },
        E::Not(_) => 3,
        E::Neg(_) => 7,
        _ => 9,
    }
}

fn ws(r: &mut Rng) -> &'static str {
    const WS: [&str; 6] = ["", " ", " ", "  ", "\t", "\n"];
    WS[r.below(WS.len())]
}

/// Prints with the fewest parentheses the documented precedence allows, plus
/// random redundant parentheses, whitespace and operator synonyms.
fn print(e: &E, r: &mut Rng) -> String {
    let s = print_inner(e, r);
    if r.chance(0.08) {
        format!("({}{s}{})", ws(r), ws(r))
    } else {
        s
    }
}

fn wrap(s: String, paren: bool) -> String {
    if paren {
        return format!("({s})");
    }
    s
}

fn print_inner(e: &E, r: &mut Rng) -> String {
    match e {
        E::Num(v) => format!("{v:?}"),
        E::Scalar(n) => n.to_string(),
        E::Len(n) => format!("len({}{n}{})", ws(r), ws(r)),
        E::Index(n, i) => format!("{n}{}[{}{}]", ws(r), print(i, r), ws(r)),
        E::Neg(x) => {
            let s = print(x, r);
            // "- -x" is fine; a space keeps "--" readable.
            format!("-{}{}", ws(r), wrap(s, prec(x) < 7))
        }
        E::Not(x) => {
            let s = wrap(print(x, r), prec(x) < 3);
            if r.chance(0.5) {
                format!("not {s}")
            } else {
                format!("!{}{s}", ws(r))
            }
        }
        E::F1(f, x) => format!("{f}({}{})", print(x, r), ws(r)),
        E::F2(f, x, y) => format!("{f}({},{}{})", print(x, r), ws(r), print(y, r)),
        E::Bin(op, l, rr) => {
            let p = prec(e);
            let (lp, rp) = (prec(l), prec(rr));
            let (paren_l, paren_r) = match op {
                Op::Pow => (lp <= p, rp < 7),
                Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge => (lp <= p, rp <= p),
                _ => (lp < p, rp <= p),
            };
            let sym = match op {
                Op::Or => *r.pick(&[" or ", "||", " || "]),
                Op::And => *r.pick(&[" and ", "&&", " && "]),
                Op::Eq => "==",
                Op::Ne => "!=",
                Op::Lt => "<",
                Op::Le => "<=",
                Op::Gt => ">",
                Op::Ge => ">=",
                Op::Add => "+",
                Op::Sub => "-",
                Op::Mul => "*",
                Op::Div => "/",
                Op::Rem => "%",
                Op::Pow => *r.pick(&["**", "^"]),
            };
            let ls = wrap(print(l, r), paren_l);
            let rs = wrap(print(rr, r), paren_r);
            format!("{ls}{}{sym}{}{rs}", ws(r), ws(r))
        }
    }
}

enum Data {
    S(Vec<f64>),
    J(Vec<Vec<f64>>),
}

fn reference(e: &E, data: &BTreeMap<&str, Data>, i: usize) -> Option<f64> {
    let min_max = |x: f64, y: f64, max: bool| {
        if x.is_nan() || y.is_nan() {
            f64::NAN
        } else if max {
            x.max(y)
        } else {
            x.min(y)
        }
    };
    Some(match e {
        E::Num(v) => *v,
        E::Scalar(n) => match &data[n] {
            Data::S(v) => v[i],
            Data::J(_) => unreachable!(),
        },
        E::Len(n) => match &data[n] {
            Data::J(rows) => rows[i].len() as f64,
            Data::S(_) => unreachable!(),
        },
        E::Index(n, idx) => {
            let k = reference(idx, data, i)?;
            let Data::J(rows) = &data[n] else { unreachable!() };
            let row = &rows[i];
            if k >= 0.0 && k.fract() == 0.0 && k < row.len() as f64 {
                row[k as usize]
            } else {
                return None;
            }
        }
        E::Neg(x) => -reference(x, data, i)?,
        E::Not(x) => bf(!truthy(reference(x, data, i)?)),
        E::F1(f, x) => {
            let v = reference(x, data, i)?;
            match *f {
                "abs" => v.abs(),
                "sqrt" => v.sqrt(),
                "log" => v.ln(),
                "log10" => v.log10(),
                "exp" => v.exp(),
                "sin" => v.sin(),
                "cos" => v.cos(),
                "tan" => v.tan(),
                "floor" => v.floor(),
                "ceil" => v.ceil(),
                _ => unreachable!(),
            }
        }
        E::F2(f, x, y) => {
            let x = reference(x, data, i)?;
            let y = reference(y, data, i)?;
            match *f {
                "atan2" => x.atan2(y),
                "pow" => x.powf(y),
                "min" => min_max(x, y, false),
                "max" => min_max(x, y, true),
                _ => unreachable!(),
            }
        }
        E::Bin(Op::And, l, r) => {
            let (l, r) = (reference(l, data, i), reference(r, data, i));
            match (l.map(truthy), r.map(truthy)) {
                (Some(false), _) | (_, Some(false)) => 0.0,
                (Some(true), Some(true)) => 1.0,
                _ => return None,
            }
        }
        E::Bin(Op::Or, l, r) => {
            let (l, r) = (reference(l, data, i), reference(r, data, i));
            match (l.map(truthy), r.map(truthy)) {
                (Some(true), _) | (_, Some(true)) => 1.0,
                (Some(false), Some(false)) => 0.0,
                _ => return None,
            }
        }
        E::Bin(op, l, r) => {
            let x = reference(l, data, i)?;
            let y = reference(r, data, i)?;
            match op {
                Op::Eq => bf(x == y),
                Op::Ne => bf(x != y),
                Op::Lt => bf(x < y),
                Op::Le => bf(x <= y),
                Op::Gt => bf(x > y),
                Op::Ge => bf(x >= y),
                Op::Add => x + y,
                Op::Sub => x - y,
                Op::Mul => x * y,
                Op::Div => x / y,
                Op::Rem => x % y,
                Op::Pow => x.powf(y),
                Op::And | Op::Or => unreachable!(),
            }
        }
    })
}

fn random_data(r: &mut Rng, n: usize) -> (BTreeMap<&'static str, Data>, Cols) {
    let pool = [0.0, 1.0, -1.0, 2.0, 0.5, -3.25, 7.0, f64::NAN, 1e-3, 100.0, -0.0, f64::INFINITY];
    let idx_pool = [-1.0, 0.0, 0.0, 1.0, 1.0, 2.0, 3.0, 0.5, f64::NAN];
    let mut data = BTreeMap::new();
    let mut cols = Cols::new();
    for &name in SCALARS {
        let p: &[f64] = if name == "idx" { &idx_pool } else { &pool };
        let v: Vec<f64> = (0..n).map(|_| *r.pick(p)).collect();
        cols.insert(name.to_string(), Column::Scalar(v.clone()));
        data.insert(name, Data::S(v));
    }
    for &name in JAGGED {
        let rows: Vec<Vec<f64>> = (0..n)
            .map(|_| {
                let len = r.below(5);
                (0..len).map(|_| *r.pick(&pool)).collect()
            })
            .collect();
        cols.insert(name.to_string(), Column::from_rows(&rows));
        data.insert(name, Data::J(rows));
    }
    (data, cols)
}

fn collect_names(e: &E, out: &mut BTreeSet<String>) {
    match e {
        E::Num(_) => {}
        E::Scalar(n) | E::Len(n) => {
            out.insert(n.to_string());
        }
        E::Index(n, i) => {
            out.insert(n.to_string());
            collect_names(i, out);
        }
        E::Neg(x) | E::Not(x) | E::F1(_, x) => collect_names(x, out),
        E::Bin(_, x, y) | E::F2(_, x, y) => {
            collect_names(x, out);
            collect_names(y, out);
        }
    }
}

#[test]
fn random_round_trip_against_reference_evaluator() {
    let mut r = Rng(0x5EED_F00D);
    let mut checked_values = 0usize;
    let mut invalid_seen = 0usize;
    for case in 0..1500 {
        let n = if case % 100 == 0 { 5000 } else { 40 };
        let (data, cols) = random_data(&mut r, n);
        let tree = gen_expr(&mut r, 1 + (case % 6) as u32);
        let text = print(&tree, &mut r);
        let expr = Expr::parse(&text).unwrap_or_else(|e| panic!("case {case}: {e}\ntree: {tree:?}"));
        let mut names = BTreeSet::new();
        collect_names(&tree, &mut names);
        assert_eq!(expr.branches(), names, "case {case}: {text}");
        let got = expr.eval(&cols, n).unwrap_or_else(|e| panic!("case {case}: {e}"));
        let res = expr.eval_cut(&cols, n).unwrap();
        assert_eq!(got.len(), n);
        assert_eq!(res.pass.len(), n);
        let mut invalid = 0;
        for (i, (&g, &pass)) in got.iter().zip(&res.pass).enumerate() {
            let want = reference(&tree, &data, i);
            assert!(same_opt(g, want), "case {case}, event {i}: {text:?}\ngot {g:?}, want {want:?}\ntree {tree:?}");
            assert_eq!(pass, want.is_some_and(truthy), "case {case} event {i}");
            invalid += usize::from(want.is_none());
            checked_values += 1;
        }
        assert_eq!(res.invalid, invalid, "case {case}: {text}");
        invalid_seen += invalid;
    }
    assert!(checked_values > 100_000);
    assert!(invalid_seen > 0);
}

// ---------------------------------------------------------------------------
// Robustness: no panics on garbage
// ---------------------------------------------------------------------------

fn no_panic_on(src: &str, cols: &Cols) {
    let outcome = panic::catch_unwind(panic::AssertUnwindSafe(|| match Expr::parse(src) {
        Ok(e) => {
            let _ = e.branches();
            let _ = e.eval(cols, 5);
            let _ = e.eval_cut(cols, 5);
        }
        Err(e) => {
            assert!(e.pos() <= src.chars().count(), "{src:?}: {e:?}");
            let _ = e.to_string();
        }
    }));
    assert!(outcome.is_ok(), "panic on {src:?}");
}

#[test]
fn no_panics_on_random_garbage() {
    let mut r = Rng(42);
    let mut cols = Cols::new();
    scalar(&mut cols, "a", &[1.0, 2.0, 3.0, f64::NAN, 0.0]);
    jagged(&mut cols, "j", &[&[1.0], &[], &[1.0, 2.0], &[3.0], &[]]);
    // Random bytes.
    for _ in 0..20_000 {
        let len = r.below(24);
        let bytes: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
        no_panic_on(&String::from_utf8_lossy(&bytes), &cols);
    }
    // Random printable ASCII, biased to the expression alphabet.
    let alphabet: Vec<char> = "aj0123456789.eE+-*/%^()[],=!<>&| _\tlenxpiorandnot".chars().collect();
    for _ in 0..20_000 {
        let len = r.below(24);
        let s: String = (0..len).map(|_| *r.pick(&alphabet)).collect();
        no_panic_on(&s, &cols);
    }
    // Token soup.
    let tokens = [
        "a", "j", "j[", "[", "]", "(", ")", "len(", "len(j)", "abs(", "min(", "max(", ",", "1", "0", "-1", "1.5",
        "1e308", "1e-308", "+", "-", "*", "/", "%", "**", "^", "==", "!=", "<", "<=", ">", ">=", "and", "or", "not",
        "&&", "||", "!", "pi", "true", "false", "j[a]", "j[0]", "atan2(", "pow(", "sqrt(", "nope", "Jet.pt", ".", "é",
        "∞",
    ];
    for _ in 0..20_000 {
        let len = 1 + r.below(14);
        let s: Vec<&str> = (0..len).map(|_| *r.pick(&tokens)).collect();
        no_panic_on(&s.join(*r.pick(&["", " "])), &cols);
    }
}
