//! Branch expressions and cuts, evaluated column-wise over events.
//!
//! Data variables, label variables and the event selection of a FEDHEX
//! configuration are written as small expressions over ROOT TTree branches:
//!
//! ```toml
//! phi      = "CBL_RecoPhi_mass"                               # scalar branch
//! labelphi = "GenPhi_mass[0]"                                 # fixed element of a jagged branch
//! omega    = "TwoProng_massPi0[CBL_RecoPhi_twoprongindex]"    # element chosen by another branch
//! cut      = "CBL_Region == 1 and Photon_pt[CBL_RecoPhi_photonindex] > 220"
//! ```
//!
//! An expression is parsed once ([`Expr::parse`]) and then evaluated for all
//! events at once ([`Expr::eval`], [`Expr::eval_cut`]) from columns handed in
//! through the [`Columns`] trait. Evaluation works on whole blocks of events
//! per operation (column-wise), not one tree walk per event.
//!
//! # Syntax
//!
//! ## Numbers
//! Decimal literals: `3`, `220`, `0.5`, `.5`, `5.`, `1e3`, `2.5E-4`, `1e+6`.
//! There are no signed literals: `-3` is unary minus applied to `3` (see the
//! precedence table: `-2**2` is `-4`). Hexadecimal and digit separators are
//! not supported. Every value is an `f64`; integer branches are expected to
//! be handed in converted to `f64`.
//!
//! ## Constants and keywords
//! `pi` (π), `true` (1), `false` (0). The words `and`, `or`, `not`, `pi`,
//! `true`, `false` are reserved (case-sensitive) and cannot be branch names.
//!
//! ## Branch names
//! A branch name starts with an ASCII letter or `_` and continues with ASCII
//! letters, digits and `_`. A dot is allowed *inside* a name when it is
//! followed by a letter, digit or `_` (`Jet.pt`, `ev.Photon_pt`); a name never
//! ends with a dot. Names are case-sensitive. A name that is also a function
//! name (say a branch called `max`) is a branch unless it is followed by `(`.
//!
//! A branch is either *scalar* (one value per event) or *jagged* (a variable
//! number of values per event, NanoAOD style). How a name may be used
//! depends on its kind, which is known only when evaluating:
//!
//! | form               | scalar branch       | jagged branch                                  |
//! |--------------------|---------------------|------------------------------------------------|
//! | `name`             | the event's value   | error: use `name[i]` or `len(name)`            |
//! | `name[index]`      | error               | element `index` (0-based) of the event's list  |
//! | `len(name)`        | error               | number of elements in the event's list         |
//!
//! ## Indexing
//! `name[index]` takes element `index` (counted from 0) of a jagged branch.
//! The index is any expression (`Photon_pt[0]`, `Photon_pt[CBL_RecoPhi_photonindex]`,
//! `Jet_pt[len(Jet_pt) - 1]`). Only a branch name can be indexed, and only
//! once (`(x)[0]` and `x[0][1]` are syntax errors). Per event, an index that
//! is negative, not an integer, NaN or infinite, or not below the number of
//! elements makes the value of that event **invalid** (see below); it is not
//! an error. `-0.0` counts as `0`.
//!
//! ## Operators and precedence
//! From the loosest-binding to the tightest-binding:
//!
//! | level | operators                        | associativity                     |
//! |-------|----------------------------------|-----------------------------------|
//! | 1     | `or`, `\|\|`                     | left                              |
//! | 2     | `and`, `&&`                      | left                              |
//! | 3     | `not`, `!` (prefix)              | —                                 |
//! | 4     | `==` `!=` `<` `<=` `>` `>=`      | not chainable (`a < b < c` is an error) |
//! | 5     | `+` `-` (binary)                 | left                              |
//! | 6     | `*` `/` `%`                      | left                              |
//! | 7     | `-` `+` (prefix)                 | —                                 |
//! | 8     | `**`, `^` (power)                | right: `2**3**2` = `2**(3**2)`    |
//! | 9     | `name[...]`, `f(...)`, `( ... )` | —                                 |
//!
//! Consequences worth knowing:
//! * `not` and `!` are synonyms with the *same* low precedence (as Python's
//!   `not`): `!a == b` means `!(a == b)`, and `not x > 1 and y` means
//!   `(not (x > 1)) and y`. A `not` cannot stand directly as the operand of
//!   an arithmetic or comparison operator: write `a == (not b)`.
//! * Power binds tighter than a prefix minus on its left (`-2**2` = `-4`),
//!   and its right operand may carry a prefix sign (`2**-1` = `0.5`).
//! * `^` is power, not exclusive or.
//!
//! ## Functions
//!
//! | function            | meaning                                                      |
//! |---------------------|--------------------------------------------------------------|
//! | `abs(x)`            | absolute value                                               |
//! | `sqrt(x)`           | square root (`NaN` for negative `x`)                         |
//! | `log(x)`            | natural logarithm (`-inf` at 0, `NaN` below)                 |
//! | `log10(x)`          | base-10 logarithm                                            |
//! | `exp(x)`            | e to the power `x`                                           |
//! | `sin(x)` `cos(x)` `tan(x)` | trigonometric functions, radians                      |
//! | `atan2(y, x)`       | angle of the point (x, y), in (-π, π]                        |
//! | `floor(x)` `ceil(x)` | round down / up to an integer                               |
//! | `pow(x, y)`         | same as `x ** y`                                             |
//! | `min(a, b, ...)` `max(a, b, ...)` | two or more arguments; `NaN` if any argument is `NaN` |
//! | `len(name)`         | number of elements of jagged branch `name` in the event; the argument must be a bare jagged-branch name |
//!
//! Spaces, tabs and newlines between tokens are ignored.
//!
//! # Semantics
//!
//! * **Values.** Every expression evaluates, per event, to an `f64` or to
//!   *invalid*. Arithmetic is IEEE 754: `NaN` propagates through arithmetic
//!   and functions; division by zero gives `±inf` (`0/0` gives `NaN`);
//!   `x % y` is the floating-point remainder with the sign of `x` (as C's
//!   `fmod`; `x % 0` is `NaN`); `**` is `f64::powf`.
//! * **Comparisons** give `1` (true) or `0` (false). With a `NaN` operand
//!   `==`, `<`, `<=`, `>`, `>=` are false and `!=` is true (IEEE).
//! * **Truth.** Where a truth value is needed (`and`, `or`, `not`, and the
//!   result of a cut) a value is *true* when it is neither `0` nor `NaN`.
//!   So a cut whose value is `NaN` rejects the event.
//! * **Invalid events.** An out-of-range, negative or non-integer index
//!   makes that event's value invalid. Invalidity propagates through
//!   arithmetic, comparisons and functions. The logical operators follow
//!   three-valued (Kleene) logic, so a guard works as expected:
//!   `false and <invalid>` is false, `true or <invalid>` is true,
//!   `true and <invalid>`, `false or <invalid>` and `not <invalid>` are
//!   invalid. For example `len(Photon_pt) > 0 and Photon_pt[0] > 220` is
//!   valid for every event. [`Expr::eval`] reports an invalid event as
//!   `None`; [`Expr::eval_cut`] rejects it and counts it in
//!   [`CutResult::invalid`].
//! * **Errors** (not per-event): a syntax error ([`Expr::parse`]); a branch
//!   that the columns do not have; a jagged branch used without index, a
//!   scalar branch indexed, `len()` of a scalar branch; a column whose shape
//!   does not match the number of events. Each error names the expression
//!   and the 0-based character position it refers to, and renders with a
//!   caret line:
//!
//! ```text
//! expression "Photon_pt[0 > ": unexpected end of expression at position 14
//!   Photon_pt[0 >
//!                 ^
//! ```
//!
//! # Limits
//! Expressions may nest at most 100 levels of parentheses, brackets,
//! function calls and prefix operators, and their syntax tree may be at most
//! 256 levels deep (so at most about 256 operands chained with one operator);
//! deeper input is rejected with an error rather than exhausting the stack.
//!
//! # Example
//!
//! ```
//! use std::collections::BTreeMap;
//! use fedhex::data::expr::{Column, Expr};
//!
//! let mut cols = BTreeMap::new();
//! cols.insert("CBL_Region".to_string(), Column::Scalar(vec![1.0, 1.0, 2.0]));
//! cols.insert("idx".to_string(), Column::Scalar(vec![0.0, 1.0, 0.0]));
//! cols.insert(
//!     "Photon_pt".to_string(),
//!     Column::from_rows([vec![250.0], vec![300.0, 100.0], vec![]]),
//! );
//!
//! let cut = Expr::parse("CBL_Region == 1 and Photon_pt[idx] > 220").unwrap();
//! let res = cut.eval_cut(&cols, 3).unwrap();
//! assert_eq!(res.pass, vec![true, false, false]);
//! assert_eq!(res.invalid, 0); // event 2 fails on CBL_Region before the index matters
//!
//! let pt = Expr::parse("Photon_pt[1]").unwrap();
//! assert_eq!(pt.eval(&cols, 3).unwrap(), vec![None, Some(100.0), None]);
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::str::FromStr;

/// Deepest nesting of parentheses, brackets, calls and prefix operators.
const MAX_NESTING: usize = 100;
/// Deepest syntax tree.
const MAX_DEPTH: u32 = 256;
/// Number of events evaluated per block.
const CHUNK: usize = 4096;

/// Names of the functions understood in expressions.
pub const FUNCTIONS: &[&str] =
    &["abs", "sqrt", "log", "log10", "exp", "sin", "cos", "tan", "atan2", "min", "max", "pow", "floor", "ceil", "len"];

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// What went wrong, broadly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The expression text is not valid syntax.
    Syntax,
    /// A referenced branch is not among the columns.
    MissingBranch,
    /// A branch is used in a way its kind (scalar / jagged) does not allow.
    BranchKind,
    /// A column's data does not fit the number of events (too short,
    /// inconsistent offsets).
    BadColumn,
}

/// An error from parsing or evaluating an expression.
///
/// It carries the expression text and the 0-based *character* position the
/// problem refers to, and displays as
///
/// ```text
/// expression "<source>": <message> at position <pos>
///   <source>
///   <caret under position>
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(&self.expr, self.pos, &self.message))]
pub struct ExprError {
    kind: ErrorKind,
    expr: String,
    pos: usize,
    message: String,
    branch: Option<String>,
    suggestions: Vec<String>,
}

impl ExprError {
    fn syntax(expr: &str, e: PErr) -> Self {
        ExprError {
            kind: ErrorKind::Syntax,
            expr: expr.to_string(),
            pos: e.pos,
            message: e.msg,
            branch: None,
            suggestions: Vec::new(),
        }
    }

    fn branch(kind: ErrorKind, expr: &str, pos: usize, name: &str, message: String) -> Self {
        ExprError {
            kind,
            expr: expr.to_string(),
            pos,
            message,
            branch: Some(name.to_string()),
            suggestions: Vec::new(),
        }
    }

    /// The broad category of the error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The expression text the error refers to.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// 0-based character position in [`ExprError::expr`] (equal to the
    /// number of characters for "unexpected end of expression").
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The message alone, without expression, position and caret line.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The branch concerned, for errors about a branch.
    pub fn branch_name(&self) -> Option<&str> {
        self.branch.as_deref()
    }

    /// For [`ErrorKind::MissingBranch`]: available names close to the
    /// missing one (empty when the columns cannot list their names).
    pub fn suggestions(&self) -> &[String] {
        &self.suggestions
    }
}

fn render(expr: &str, pos: usize, message: &str) -> String {
    let line: String = expr.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    format!("expression \"{expr}\": {message} at position {pos}\n  {line}\n  {}^", " ".repeat(pos))
}

/// Internal parse error: position and message.
#[derive(Debug)]
struct PErr {
    pos: usize,
    msg: String,
}

fn perr<T>(pos: usize, msg: impl Into<String>) -> Result<T, PErr> {
    Err(PErr { pos, msg: msg.into() })
}

// ---------------------------------------------------------------------------
// Columns
// ---------------------------------------------------------------------------

/// A borrowed view of one branch's data for events `0..n`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ColumnRef<'a> {
    /// One value per event; at least `n` values.
    Scalar(&'a [f64]),
    /// A variable number of values per event: the values of event `i` are
    /// `values[offsets[i]..offsets[i + 1]]`. `offsets` has at least `n + 1`
    /// entries (it need not start at 0) and never decreases.
    Jagged {
        /// Event boundaries into `values`.
        offsets: &'a [u64],
        /// All values, event after event.
        values: &'a [f64],
    },
}

/// Source of branch data for evaluation.
pub trait Columns {
    /// The column of branch `name`, or `None` if there is no such branch.
    fn column(&self, name: &str) -> Option<ColumnRef<'_>>;

    /// All branch names, used only to suggest close names when a branch is
    /// missing. The default lists none.
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
}

impl<T: Columns + ?Sized> Columns for &T {
    fn column(&self, name: &str) -> Option<ColumnRef<'_>> {
        (**self).column(name)
    }
    fn names(&self) -> Vec<String> {
        (**self).names()
    }
}

/// An owned column, handy for building [`Columns`] from vectors.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// One value per event.
    Scalar(Vec<f64>),
    /// Variable number of values per event (see [`ColumnRef::Jagged`]).
    Jagged {
        /// Event boundaries into `values` (`n + 1` entries).
        offsets: Vec<u64>,
        /// All values, event after event.
        values: Vec<f64>,
    },
}

impl Column {
    /// A jagged column from one list of values per event.
    pub fn from_rows<I, R>(rows: I) -> Column
    where
        I: IntoIterator<Item = R>,
        R: AsRef<[f64]>,
    {
        let mut offsets = vec![0u64];
        let mut values = Vec::new();
        for row in rows {
            values.extend_from_slice(row.as_ref());
            offsets.push(values.len() as u64);
        }
        Column::Jagged { offsets, values }
    }

    /// Borrowed view of this column.
    pub fn view(&self) -> ColumnRef<'_> {
        match self {
            Column::Scalar(v) => ColumnRef::Scalar(v),
            Column::Jagged { offsets, values } => ColumnRef::Jagged { offsets, values },
        }
    }
}

impl Columns for BTreeMap<String, Column> {
    fn column(&self, name: &str) -> Option<ColumnRef<'_>> {
        self.get(name).map(Column::view)
    }
    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

impl<S: BuildHasher> Columns for HashMap<String, Column, S> {
    fn column(&self, name: &str) -> Option<ColumnRef<'_>> {
        self.get(name).map(Column::view)
    }
    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

impl Columns for BTreeMap<String, ColumnRef<'_>> {
    fn column(&self, name: &str) -> Option<ColumnRef<'_>> {
        self.get(name).copied()
    }
    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

impl<S: BuildHasher> Columns for HashMap<String, ColumnRef<'_>, S> {
    fn column(&self, name: &str) -> Option<ColumnRef<'_>> {
        self.get(name).copied()
    }
    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

// ---------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    LParen,
    RParen,
    LBrack,
    RBrack,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Pow,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Not,
    Const(f64),
    End,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    pos: usize,
    text: String,
}

impl Token {
    fn describe(&self) -> String {
        match self.tok {
            Tok::End => "end of expression".to_string(),
            Tok::Num(_) => format!("number '{}'", self.text),
            Tok::Ident(_) => format!("name '{}'", self.text),
            _ => format!("'{}'", self.text),
        }
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn lex(chars: &[char]) -> Result<Vec<Token>, PErr> {
    let mut toks = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let next = chars.get(i + 1).copied();
        let (tok, len) = match c {
            '0'..='9' => lex_number(chars, i)?,
            '.' if next.is_some_and(|d| d.is_ascii_digit()) => lex_number(chars, i)?,
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut j = i + 1;
                while let Some(&d) = chars.get(j) {
                    let dot_inside = d == '.' && chars.get(j + 1).is_some_and(|&e| is_ident_char(e));
                    if is_ident_char(d) || dot_inside {
                        j += 1;
                    } else {
                        break;
                    }
                }
                let name: String = chars[i..j].iter().collect();
                let tok = match name.as_str() {
                    "and" => Tok::And,
                    "or" => Tok::Or,
                    "not" => Tok::Not,
                    "true" => Tok::Const(1.0),
                    "false" => Tok::Const(0.0),
                    "pi" => Tok::Const(std::f64::consts::PI),
                    _ => Tok::Ident(name),
                };
                (tok, j - i)
            }
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            '[' => (Tok::LBrack, 1),
            ']' => (Tok::RBrack, 1),
            ',' => (Tok::Comma, 1),
            '+' => (Tok::Plus, 1),
            '-' => (Tok::Minus, 1),
            '/' => (Tok::Slash, 1),
            '%' => (Tok::Percent, 1),
            '^' => (Tok::Pow, 1),
            '*' if next == Some('*') => (Tok::Pow, 2),
            '*' => (Tok::Star, 1),
            '=' if next == Some('=') => (Tok::Eq, 2),
            '=' => return perr(i, "'=' is not an operator; use '==' to compare"),
            '!' if next == Some('=') => (Tok::Ne, 2),
            '!' => (Tok::Not, 1),
            '<' if next == Some('=') => (Tok::Le, 2),
            '<' if next == Some('>') => return perr(i, "'<>' is not an operator; use '!='"),
            '<' => (Tok::Lt, 1),
            '>' if next == Some('=') => (Tok::Ge, 2),
            '>' => (Tok::Gt, 1),
            '&' if next == Some('&') => (Tok::And, 2),
            '&' => return perr(i, "'&' is not an operator; use '&&' or 'and'"),
            '|' if next == Some('|') => (Tok::Or, 2),
            '|' => return perr(i, "'|' is not an operator; use '||' or 'or'"),
            c => return perr(i, format!("unexpected character {c:?}")),
        };
        let end = (i + len).min(chars.len());
        toks.push(Token { tok, pos: i, text: chars[i..end].iter().collect() });
        i = end;
    }
    toks.push(Token { tok: Tok::End, pos: chars.len(), text: String::new() });
    Ok(toks)
}

/// Lexes a number starting at `start`; returns the value and its length.
fn lex_number(chars: &[char], start: usize) -> Result<(Tok, usize), PErr> {
    let digit_at = |j: usize| chars.get(j).is_some_and(|c| c.is_ascii_digit());
    let mut i = start;
    while digit_at(i) {
        i += 1;
    }
    if chars.get(i) == Some(&'.') {
        i += 1;
        while digit_at(i) {
            i += 1;
        }
    }
    if matches!(chars.get(i), Some('e' | 'E')) {
        let mut j = i + 1;
        if matches!(chars.get(j), Some('+' | '-')) {
            j += 1;
        }
        if digit_at(j) {
            i = j;
            while digit_at(i) {
                i += 1;
            }
        }
    }
    let bad_follow = |j: usize| chars.get(j).is_some_and(|&c| is_ident_char(c) || c == '.');
    if bad_follow(i) {
        let mut j = i;
        while bad_follow(j) {
            j += 1;
        }
        let text: String = chars[start..j].iter().collect();
        return perr(start, format!("invalid number '{text}'"));
    }
    let text: String = chars[start..i].iter().collect();
    match text.parse::<f64>() {
        Ok(v) => Ok((Tok::Num(v), i - start)),
        Err(_) => perr(start, format!("invalid number '{text}'")),
    }
}

// ---------------------------------------------------------------------------
// Syntax tree
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnOp {
    Neg,
    Not,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Pow,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Atan2,
    Min,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func1 {
    Abs,
    Sqrt,
    Log,
    Log10,
    Exp,
    Sin,
    Cos,
    Tan,
    Floor,
    Ceil,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Num(f64),
    Branch(String),
    Index(String, Box<Node>),
    Len(String),
    Unary(UnOp, Box<Node>),
    Binary(BinOp, Box<Node>, Box<Node>),
    Call(Func1, Box<Node>),
}

#[derive(Debug, Clone, PartialEq)]
struct Node {
    kind: Kind,
    /// Character position the node is reported at (branch name, operator).
    pos: usize,
    /// Height of the subtree (leaf = 1).
    depth: u32,
}

impl Node {
    fn leaf(kind: Kind, pos: usize) -> Node {
        Node { kind, pos, depth: 1 }
    }

    fn with_children(kind: Kind, pos: usize, children_depth: u32) -> Result<Node, PErr> {
        let depth = children_depth + 1;
        if depth > MAX_DEPTH {
            return perr(pos, format!("expression too deeply nested (more than {MAX_DEPTH} levels)"));
        }
        Ok(Node { kind, pos, depth })
    }

    fn unary(op: UnOp, x: Node, pos: usize) -> Result<Node, PErr> {
        let d = x.depth;
        Node::with_children(Kind::Unary(op, Box::new(x)), pos, d)
    }

    fn binary(op: BinOp, l: Node, r: Node, pos: usize) -> Result<Node, PErr> {
        let d = l.depth.max(r.depth);
        Node::with_children(Kind::Binary(op, Box::new(l), Box::new(r)), pos, d)
    }

    fn collect_branches(&self, out: &mut BTreeSet<String>) {
        match &self.kind {
            Kind::Num(_) => {}
            Kind::Branch(name) | Kind::Len(name) => {
                out.insert(name.clone());
            }
            Kind::Index(name, idx) => {
                out.insert(name.clone());
                idx.collect_branches(out);
            }
            Kind::Unary(_, x) | Kind::Call(_, x) => x.collect_branches(out),
            Kind::Binary(_, l, r) => {
                l.collect_branches(out);
                r.collect_branches(out);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------

struct Parser {
    toks: Vec<Token>,
    i: usize,
    nesting: usize,
    end: Token,
}

impl Parser {
    fn tok(&self) -> &Token {
        self.toks.get(self.i).unwrap_or(&self.end)
    }

    fn peek(&self) -> &Tok {
        &self.tok().tok
    }

    fn advance(&mut self) -> Token {
        let t = self.tok().clone();
        if self.i < self.toks.len() {
            self.i += 1;
        }
        t
    }

    fn unexpected<T>(&self) -> Result<T, PErr> {
        let t = self.tok();
        let msg = match t.tok {
            Tok::End => "unexpected end of expression".to_string(),
            Tok::Not => format!("'{}' cannot be used here without parentheses; write e.g. a == ({} b)", t.text, t.text),
            _ => format!("unexpected {}", t.describe()),
        };
        perr(t.pos, msg)
    }

    fn enter(&mut self) -> Result<(), PErr> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return perr(self.tok().pos, format!("expression nested too deeply (more than {MAX_NESTING} levels)"));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.nesting = self.nesting.saturating_sub(1);
    }

    fn parse_top(&mut self) -> Result<Node, PErr> {
        if *self.peek() == Tok::End {
            return perr(self.tok().pos, "empty expression");
        }
        let node = self.parse_or()?;
        match self.peek() {
            Tok::End => Ok(node),
            Tok::RParen | Tok::RBrack => {
                let t = self.tok();
                perr(t.pos, format!("unmatched '{}'", t.text))
            }
            _ => {
                let t = self.tok();
                perr(t.pos, format!("unexpected {}; expected an operator", t.describe()))
            }
        }
    }

    fn parse_or(&mut self) -> Result<Node, PErr> {
        let mut l = self.parse_and()?;
        while *self.peek() == Tok::Or {
            let pos = self.advance().pos;
            let r = self.parse_and()?;
            l = Node::binary(BinOp::Or, l, r, pos)?;
        }
        Ok(l)
    }

    fn parse_and(&mut self) -> Result<Node, PErr> {
        let mut l = self.parse_not()?;
        while *self.peek() == Tok::And {
            let pos = self.advance().pos;
            let r = self.parse_not()?;
            l = Node::binary(BinOp::And, l, r, pos)?;
        }
        Ok(l)
    }

    fn parse_not(&mut self) -> Result<Node, PErr> {
        if *self.peek() == Tok::Not {
            let pos = self.advance().pos;
            self.enter()?;
            let x = self.parse_not()?;
            self.leave();
            return Node::unary(UnOp::Not, x, pos);
        }
        self.parse_cmp()
    }

    fn cmp_op(tok: &Tok) -> Option<BinOp> {
        Some(match tok {
            Tok::Eq => BinOp::Eq,
            Tok::Ne => BinOp::Ne,
            Tok::Lt => BinOp::Lt,
            Tok::Le => BinOp::Le,
            Tok::Gt => BinOp::Gt,
            Tok::Ge => BinOp::Ge,
            _ => return None,
        })
    }

    fn parse_cmp(&mut self) -> Result<Node, PErr> {
        let l = self.parse_add()?;
        let Some(op) = Self::cmp_op(self.peek()) else {
            return Ok(l);
        };
        let pos = self.advance().pos;
        let r = self.parse_add()?;
        if Self::cmp_op(self.peek()).is_some() {
            return perr(self.tok().pos, "comparisons cannot be chained; write e.g. 'a < b and b < c'");
        }
        Node::binary(op, l, r, pos)
    }

    fn parse_add(&mut self) -> Result<Node, PErr> {
        let mut l = self.parse_mul()?;
        loop {
            let op = match self.peek() {
                Tok::Plus => BinOp::Add,
                Tok::Minus => BinOp::Sub,
                _ => return Ok(l),
            };
            let pos = self.advance().pos;
            let r = self.parse_mul()?;
            l = Node::binary(op, l, r, pos)?;
        }
    }

    fn parse_mul(&mut self) -> Result<Node, PErr> {
        let mut l = self.parse_unary()?;
        loop {
            let op = match self.peek() {
                Tok::Star => BinOp::Mul,
                Tok::Slash => BinOp::Div,
                Tok::Percent => BinOp::Rem,
                _ => return Ok(l),
            };
            let pos = self.advance().pos;
            let r = self.parse_unary()?;
            l = Node::binary(op, l, r, pos)?;
        }
    }

    fn parse_unary(&mut self) -> Result<Node, PErr> {
        self.enter()?;
        let res = self.parse_unary_inner();
        self.leave();
        res
    }

    fn parse_unary_inner(&mut self) -> Result<Node, PErr> {
        match self.peek() {
            Tok::Minus => {
                let pos = self.advance().pos;
                let x = self.parse_unary()?;
                Node::unary(UnOp::Neg, x, pos)
            }
            Tok::Plus => {
                self.advance();
                self.parse_unary()
            }
            _ => {
                let base = self.parse_primary()?;
                if *self.peek() == Tok::Pow {
                    let pos = self.advance().pos;
                    let exp = self.parse_unary()?;
                    Node::binary(BinOp::Pow, base, exp, pos)
                } else {
                    Ok(base)
                }
            }
        }
    }

    fn expect_close(&mut self, close: Tok, open_pos: usize, what: &str) -> Result<(), PErr> {
        if *self.peek() == close {
            self.advance();
            return Ok(());
        }
        let t = self.tok();
        perr(t.pos, format!("expected {what} to close the one at position {open_pos}, found {}", t.describe()))
    }

    fn parse_primary(&mut self) -> Result<Node, PErr> {
        let t = self.tok().clone();
        let node = match t.tok {
            Tok::Num(v) | Tok::Const(v) => {
                self.advance();
                Node::leaf(Kind::Num(v), t.pos)
            }
            Tok::LParen => {
                self.advance();
                let inner = self.parse_or()?;
                self.expect_close(Tok::RParen, t.pos, "')'")?;
                inner
            }
            Tok::Ident(name) => {
                self.advance();
                match self.peek() {
                    Tok::LParen => self.parse_call(name, t.pos)?,
                    Tok::LBrack => {
                        let open = self.advance().pos;
                        if *self.peek() == Tok::RBrack {
                            return perr(self.tok().pos, "expected an index expression");
                        }
                        let idx = self.parse_or()?;
                        self.expect_close(Tok::RBrack, open, "']'")?;
                        let d = idx.depth;
                        Node::with_children(Kind::Index(name, Box::new(idx)), t.pos, d)?
                    }
                    _ => Node::leaf(Kind::Branch(name), t.pos),
                }
            }
            _ => return self.unexpected(),
        };
        if *self.peek() == Tok::LBrack {
            let msg = match node.kind {
                Kind::Index(..) => "a branch can be indexed only once",
                _ => "only a branch name can be indexed",
            };
            return perr(self.tok().pos, msg);
        }
        Ok(node)
    }

    /// Parses `name(args)`; the current token is the '('.
    fn parse_call(&mut self, name: String, pos: usize) -> Result<Node, PErr> {
        let open = self.advance().pos;
        if name == "len" {
            let arg = self.tok().clone();
            let Tok::Ident(branch) = arg.tok else {
                return perr(arg.pos, "len() takes a jagged-branch name, e.g. len(Photon_pt)");
            };
            self.advance();
            if *self.peek() != Tok::RParen {
                return perr(self.tok().pos, "len() takes a single bare jagged-branch name, e.g. len(Photon_pt)");
            }
            self.advance();
            return Ok(Node::leaf(Kind::Len(branch), arg.pos));
        }
        enum F {
            One(Func1),
            Two(BinOp),
            Many(BinOp),
        }
        let f = match name.as_str() {
            "abs" => F::One(Func1::Abs),
            "sqrt" => F::One(Func1::Sqrt),
            "log" => F::One(Func1::Log),
            "log10" => F::One(Func1::Log10),
            "exp" => F::One(Func1::Exp),
            "sin" => F::One(Func1::Sin),
            "cos" => F::One(Func1::Cos),
            "tan" => F::One(Func1::Tan),
            "floor" => F::One(Func1::Floor),
            "ceil" => F::One(Func1::Ceil),
            "atan2" => F::Two(BinOp::Atan2),
            "pow" => F::Two(BinOp::Pow),
            "min" => F::Many(BinOp::Min),
            "max" => F::Many(BinOp::Max),
            _ => {
                return perr(pos, format!("unknown function '{name}'; available: {}", FUNCTIONS.join(", ")));
            }
        };
        self.enter()?;
        let mut args = Vec::new();
        if *self.peek() != Tok::RParen {
            loop {
                args.push(self.parse_or()?);
                match self.peek() {
                    Tok::Comma => {
                        self.advance();
                    }
                    Tok::RParen => break,
                    _ => {
                        let t = self.tok();
                        return perr(
                            t.pos,
                            format!(
                                "expected ',' or ')' in the call of {name}() at position {open}, found {}",
                                t.describe()
                            ),
                        );
                    }
                }
            }
        }
        self.advance(); // ')'
        self.leave();
        let n = args.len();
        let arity = |want: &str| {
            let s = if want == "1" { "" } else { "s" };
            perr(pos, format!("function {name}() takes {want} argument{s}, got {n}"))
        };
        let mut args = args.into_iter();
        match (f, args.next(), args.next()) {
            (F::One(f), Some(x), None) => {
                let d = x.depth;
                Node::with_children(Kind::Call(f, Box::new(x)), pos, d)
            }
            (F::One(_), _, _) => arity("1"),
            (F::Two(op), Some(a), Some(b)) if n == 2 => Node::binary(op, a, b, pos),
            (F::Two(_), _, _) => arity("2"),
            (F::Many(op), Some(a), Some(b)) => {
                let mut acc = Node::binary(op, a, b, pos)?;
                for x in args {
                    acc = Node::binary(op, acc, x, pos)?;
                }
                Ok(acc)
            }
            (F::Many(_), _, _) => arity("at least 2"),
        }
    }
}

// ---------------------------------------------------------------------------
// Public expression type
// ---------------------------------------------------------------------------

/// A parsed branch expression (see the [module documentation](self) for the
/// grammar and semantics).
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    src: String,
    root: Node,
}

/// Outcome of evaluating an expression as a selection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CutResult {
    /// Per event: the event is valid and its value is true (neither 0 nor NaN).
    pub pass: Vec<bool>,
    /// Number of events whose value was invalid (they do not pass).
    pub invalid: usize,
}

impl CutResult {
    /// Number of events that pass.
    pub fn n_pass(&self) -> usize {
        self.pass.iter().filter(|&&p| p).count()
    }
}

impl Expr {
    /// Parses an expression.
    ///
    /// # Errors
    /// [`ErrorKind::Syntax`] with the position of the offending character or
    /// token.
    pub fn parse(src: &str) -> Result<Expr, ExprError> {
        let chars: Vec<char> = src.chars().collect();
        let toks = lex(&chars).map_err(|e| ExprError::syntax(src, e))?;
        let mut p =
            Parser { toks, i: 0, nesting: 0, end: Token { tok: Tok::End, pos: chars.len(), text: String::new() } };
        let root = p.parse_top().map_err(|e| ExprError::syntax(src, e))?;
        Ok(Expr { src: src.to_string(), root })
    }

    /// The text the expression was parsed from.
    pub fn source(&self) -> &str {
        &self.src
    }

    /// Every branch name the expression references (indexed, bare, in
    /// `len()` or inside an index).
    pub fn branches(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.root.collect_branches(&mut out);
        out
    }

    /// Evaluates the expression for events `0..n`.
    ///
    /// Per event the result is `Some(value)` or `None` when the event is
    /// invalid (index out of range, negative or not an integer, see the
    /// module documentation).
    ///
    /// # Errors
    /// A referenced branch is missing ([`ErrorKind::MissingBranch`]), used
    /// against its kind ([`ErrorKind::BranchKind`]), or has data that does
    /// not cover `n` events ([`ErrorKind::BadColumn`]).
    pub fn eval(&self, cols: &dyn Columns, n: usize) -> Result<Vec<Option<f64>>, ExprError> {
        let plan = self.bind(&self.root, cols, n)?;
        let mut out = Vec::with_capacity(n);
        for_each_chunk(&plan, n, |v, len| {
            let start = out.len();
            match &v.data {
                Data::Const(c) => out.extend(std::iter::repeat_n(Some(*c), len)),
                Data::Slice(s) => out.extend(s.iter().map(|&x| Some(x))),
                Data::Buf(b) => out.extend(b.iter().map(|&x| Some(x))),
            }
            // Blocks always hold `len` values; this only guards the invariant.
            out.resize(start + len, None);
            if let Some(mask) = &v.valid {
                for (o, &ok) in out[start..].iter_mut().zip(mask) {
                    if !ok {
                        *o = None;
                    }
                }
            }
        });
        Ok(out)
    }

    /// Evaluates the expression as a selection for events `0..n`: an event
    /// passes when its value is valid and true (neither 0 nor NaN); invalid
    /// events do not pass and are counted in [`CutResult::invalid`].
    ///
    /// # Errors
    /// As for [`Expr::eval`].
    pub fn eval_cut(&self, cols: &dyn Columns, n: usize) -> Result<CutResult, ExprError> {
        let plan = self.bind(&self.root, cols, n)?;
        let mut res = CutResult { pass: Vec::with_capacity(n), invalid: 0 };
        for_each_chunk(&plan, n, |v, len| {
            let start = res.pass.len();
            match &v.data {
                Data::Const(c) => res.pass.extend(std::iter::repeat_n(truthy(*c), len)),
                Data::Slice(s) => res.pass.extend(s.iter().map(|&x| truthy(x))),
                Data::Buf(b) => res.pass.extend(b.iter().map(|&x| truthy(x))),
            }
            // Blocks always hold `len` values; this only guards the invariant.
            res.pass.resize(start + len, false);
            if let Some(mask) = &v.valid {
                for (p, &ok) in res.pass[start..].iter_mut().zip(mask) {
                    if !ok {
                        *p = false;
                        res.invalid += 1;
                    }
                }
            }
        });
        Ok(res)
    }

    fn column<'c>(&self, name: &str, pos: usize, cols: &'c dyn Columns, n: usize) -> Result<ColumnRef<'c>, ExprError> {
        let Some(col) = cols.column(name) else {
            let suggestions = close_names(name, &cols.names());
            let mut message = format!("branch '{name}' not found");
            if !suggestions.is_empty() {
                let list: Vec<String> = suggestions.iter().map(|s| format!("'{s}'")).collect();
                message.push_str(&format!(" (did you mean {}?)", list.join(", ")));
            }
            let mut e = ExprError::branch(ErrorKind::MissingBranch, &self.src, pos, name, message);
            e.suggestions = suggestions;
            return Err(e);
        };
        let bad = |message: String| Err(ExprError::branch(ErrorKind::BadColumn, &self.src, pos, name, message));
        match col {
            ColumnRef::Scalar(v) => {
                if v.len() < n {
                    return bad(format!("branch '{name}' has {} values but {n} events were requested", v.len()));
                }
            }
            ColumnRef::Jagged { offsets, values } => {
                if n > 0 {
                    let Some(used) = offsets.get(..=n) else {
                        return bad(format!(
                            "jagged branch '{name}' has {} offsets but {n} events need {}",
                            offsets.len(),
                            n.saturating_add(1)
                        ));
                    };
                    if used.windows(2).any(|w| w[0] > w[1]) {
                        return bad(format!("jagged branch '{name}' has decreasing offsets"));
                    }
                    let last = used.last().copied().unwrap_or(0);
                    if last > values.len() as u64 {
                        return bad(format!(
                            "jagged branch '{name}' has offsets up to {last} but only {} values",
                            values.len()
                        ));
                    }
                }
            }
        }
        Ok(col)
    }

    fn kind_error(&self, pos: usize, name: &str, message: String) -> ExprError {
        ExprError::branch(ErrorKind::BranchKind, &self.src, pos, name, message)
    }

    /// Resolves branches against `cols` and folds constants.
    fn bind<'c>(&self, node: &Node, cols: &'c dyn Columns, n: usize) -> Result<Plan<'c>, ExprError> {
        Ok(match &node.kind {
            Kind::Num(v) => Plan::Const(*v),
            Kind::Branch(name) => match self.column(name, node.pos, cols, n)? {
                ColumnRef::Scalar(v) => Plan::Scalar(v),
                ColumnRef::Jagged { .. } => {
                    return Err(self.kind_error(
                        node.pos,
                        name,
                        format!("branch '{name}' is jagged (variable length); use {name}[i] or len({name})"),
                    ));
                }
            },
            Kind::Len(name) => match self.column(name, node.pos, cols, n)? {
                ColumnRef::Jagged { offsets, .. } => Plan::Len(offsets),
                ColumnRef::Scalar(_) => {
                    return Err(self.kind_error(
                        node.pos,
                        name,
                        format!("len() needs a jagged branch, but '{name}' is scalar (one value per event)"),
                    ));
                }
            },
            Kind::Index(name, idx) => match self.column(name, node.pos, cols, n)? {
                ColumnRef::Jagged { offsets, values } => {
                    Plan::Index { offsets, values, index: Box::new(self.bind(idx, cols, n)?) }
                }
                ColumnRef::Scalar(_) => {
                    return Err(self.kind_error(
                        node.pos,
                        name,
                        format!("branch '{name}' is scalar (one value per event) and cannot be indexed; use {name}"),
                    ));
                }
            },
            Kind::Unary(op, x) => match self.bind(x, cols, n)? {
                Plan::Const(c) => Plan::Const(unary_scalar(*op, c)),
                p => Plan::Unary(*op, Box::new(p)),
            },
            Kind::Call(f, x) => match self.bind(x, cols, n)? {
                Plan::Const(c) => Plan::Const(func_scalar(*f, c)),
                p => Plan::Call(*f, Box::new(p)),
            },
            Kind::Binary(op, l, r) => {
                let l = self.bind(l, cols, n)?;
                let r = self.bind(r, cols, n)?;
                match (l, r) {
                    (Plan::Const(a), Plan::Const(b)) => Plan::Const(binary_scalar(*op, a, b)),
                    (l, r) => Plan::Binary(*op, Box::new(l), Box::new(r)),
                }
            }
        })
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.src)
    }
}

impl FromStr for Expr {
    type Err = ExprError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Expr::parse(s)
    }
}

/// Up to 5 names from `names` close to `name` (edit distance, case-insensitive).
fn close_names(name: &str, names: &[String]) -> Vec<String> {
    let lower = name.to_lowercase();
    let limit = (name.chars().count() / 4).max(2);
    let mut scored: Vec<(usize, &String)> = names
        .iter()
        .filter_map(|cand| {
            let d = edit_distance(&lower, &cand.to_lowercase());
            (d <= limit).then_some((d, cand))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(5).map(|(_, s)| s.clone()).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------
// Column-wise evaluation
// ---------------------------------------------------------------------------

/// An expression bound to column data.
enum Plan<'c> {
    Const(f64),
    Scalar(&'c [f64]),
    Len(&'c [u64]),
    Index { offsets: &'c [u64], values: &'c [f64], index: Box<Plan<'c>> },
    Unary(UnOp, Box<Plan<'c>>),
    Call(Func1, Box<Plan<'c>>),
    Binary(BinOp, Box<Plan<'c>>, Box<Plan<'c>>),
}

/// Values of one block of events.
enum Data<'c> {
    Const(f64),
    Slice(&'c [f64]),
    Buf(Vec<f64>),
}

/// Values plus validity (`None` = all valid) of one block of events.
struct Val<'c> {
    data: Data<'c>,
    valid: Option<Vec<bool>>,
}

impl<'c> Val<'c> {
    fn new(data: Data<'c>) -> Self {
        Val { data, valid: None }
    }

    /// The block's values as a slice (constants expanded to `len` copies).
    fn values(&self, len: usize) -> Cow<'_, [f64]> {
        match &self.data {
            Data::Const(c) => Cow::Owned(vec![*c; len]),
            Data::Slice(s) => Cow::Borrowed(s),
            Data::Buf(b) => Cow::Borrowed(b),
        }
    }

    /// The block's validity as a slice (`true` = valid).
    fn mask(&self, len: usize) -> Cow<'_, [bool]> {
        match &self.valid {
            None => Cow::Owned(vec![true; len]),
            Some(m) => Cow::Borrowed(m),
        }
    }

    fn get(&self, k: usize) -> f64 {
        match &self.data {
            Data::Const(c) => *c,
            Data::Slice(s) => s.get(k).copied().unwrap_or(f64::NAN),
            Data::Buf(b) => b.get(k).copied().unwrap_or(f64::NAN),
        }
    }
}

/// Neither 0 nor NaN (written as one comparison so loops vectorise).
fn truthy(x: f64) -> bool {
    x.abs() > 0.0
}

fn b2f(b: bool) -> f64 {
    f64::from(u8::from(b))
}

fn nan_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn merge_masks(a: Option<Vec<bool>>, b: Option<Vec<bool>>) -> Option<Vec<bool>> {
    match (a, b) {
        (None, m) | (m, None) => m,
        (Some(mut a), Some(b)) => {
            for (x, y) in a.iter_mut().zip(&b) {
                *x &= *y;
            }
            Some(a)
        }
    }
}

/// Drops an all-true mask so later operations take the fast path.
fn simplify(mask: Vec<bool>) -> Option<Vec<bool>> {
    if mask.iter().all(|&b| b) {
        None
    } else {
        Some(mask)
    }
}

fn map1<'c>(v: Val<'c>, f: impl Fn(f64) -> f64) -> Val<'c> {
    let data = match v.data {
        Data::Const(c) => Data::Const(f(c)),
        Data::Slice(s) => Data::Buf(s.iter().map(|&x| f(x)).collect()),
        Data::Buf(mut b) => {
            for x in &mut b {
                *x = f(*x);
            }
            Data::Buf(b)
        }
    };
    Val { data, valid: v.valid }
}

fn map2<'c>(a: Val<'c>, b: Val<'c>, f: impl Fn(f64, f64) -> f64) -> Val<'c> {
    let valid = merge_masks(a.valid, b.valid);
    let data = match (a.data, b.data) {
        (Data::Const(x), Data::Const(y)) => Data::Const(f(x, y)),
        (Data::Const(x), Data::Slice(s)) => Data::Buf(s.iter().map(|&y| f(x, y)).collect()),
        (Data::Slice(s), Data::Const(y)) => Data::Buf(s.iter().map(|&x| f(x, y)).collect()),
        (Data::Slice(s), Data::Slice(t)) => Data::Buf(s.iter().zip(t).map(|(&x, &y)| f(x, y)).collect()),
        (Data::Buf(mut v), Data::Const(y)) => {
            for x in &mut v {
                *x = f(*x, y);
            }
            Data::Buf(v)
        }
        (Data::Buf(mut v), Data::Slice(t)) => {
            for (x, &y) in v.iter_mut().zip(t) {
                *x = f(*x, y);
            }
            Data::Buf(v)
        }
        (Data::Buf(mut v), Data::Buf(w)) => {
            for (x, &y) in v.iter_mut().zip(&w) {
                *x = f(*x, y);
            }
            Data::Buf(v)
        }
        (Data::Const(x), Data::Buf(mut w)) => {
            for y in &mut w {
                *y = f(x, *y);
            }
            Data::Buf(w)
        }
        (Data::Slice(s), Data::Buf(mut w)) => {
            for (y, &x) in w.iter_mut().zip(s) {
                *y = f(x, *y);
            }
            Data::Buf(w)
        }
    };
    Val { data, valid }
}

fn apply_unary(op: UnOp, v: Val<'_>) -> Val<'_> {
    match op {
        UnOp::Neg => map1(v, |x| -x),
        UnOp::Not => map1(v, |x| b2f(!truthy(x))),
    }
}

fn apply_func(f: Func1, v: Val<'_>) -> Val<'_> {
    match f {
        Func1::Abs => map1(v, f64::abs),
        Func1::Sqrt => map1(v, f64::sqrt),
        Func1::Log => map1(v, f64::ln),
        Func1::Log10 => map1(v, f64::log10),
        Func1::Exp => map1(v, f64::exp),
        Func1::Sin => map1(v, f64::sin),
        Func1::Cos => map1(v, f64::cos),
        Func1::Tan => map1(v, f64::tan),
        Func1::Floor => map1(v, f64::floor),
        Func1::Ceil => map1(v, f64::ceil),
    }
}

fn apply_binary<'c>(op: BinOp, a: Val<'c>, b: Val<'c>, len: usize) -> Val<'c> {
    match op {
        BinOp::Add => map2(a, b, |x, y| x + y),
        BinOp::Sub => map2(a, b, |x, y| x - y),
        BinOp::Mul => map2(a, b, |x, y| x * y),
        BinOp::Div => map2(a, b, |x, y| x / y),
        BinOp::Rem => map2(a, b, |x, y| x % y),
        BinOp::Pow => map2(a, b, f64::powf),
        BinOp::Atan2 => map2(a, b, f64::atan2),
        BinOp::Min => map2(a, b, nan_min),
        BinOp::Max => map2(a, b, nan_max),
        BinOp::Eq => map2(a, b, |x, y| b2f(x == y)),
        BinOp::Ne => map2(a, b, |x, y| b2f(x != y)),
        BinOp::Lt => map2(a, b, |x, y| b2f(x < y)),
        BinOp::Le => map2(a, b, |x, y| b2f(x <= y)),
        BinOp::Gt => map2(a, b, |x, y| b2f(x > y)),
        BinOp::Ge => map2(a, b, |x, y| b2f(x >= y)),
        BinOp::And | BinOp::Or if a.valid.is_none() && b.valid.is_none() => {
            if op == BinOp::And {
                map2(a, b, |x, y| b2f(truthy(x) && truthy(y)))
            } else {
                map2(a, b, |x, y| b2f(truthy(x) || truthy(y)))
            }
        }
        BinOp::And => kleene::<true>(&a, &b, len),
        BinOp::Or => kleene::<false>(&a, &b, len),
    }
}

/// Three-valued `and` / `or` for blocks with invalid events.
fn kleene<'c, const IS_AND: bool>(a: &Val<'_>, b: &Val<'_>, len: usize) -> Val<'c> {
    let (xa, xb) = (a.values(len), b.values(len));
    let (ma, mb) = (a.mask(len), b.mask(len));
    // Equal-length slices let the loop run without bounds checks.
    let n = len.min(xa.len()).min(xb.len()).min(ma.len()).min(mb.len());
    let (xa, xb, ma, mb) = (&xa[..n], &xb[..n], &ma[..n], &mb[..n]);
    let mut out = vec![0.0; n];
    let mut valid = vec![false; n];
    for i in 0..n {
        // A valid operand decides the result alone when it is false (for
        // `and`) or true (for `or`).
        let da = ma[i] & (truthy(xa[i]) != IS_AND);
        let db = mb[i] & (truthy(xb[i]) != IS_AND);
        let decided = da | db;
        valid[i] = decided | (ma[i] & mb[i]);
        out[i] = b2f(decided != IS_AND);
    }
    Val { data: Data::Buf(out), valid: simplify(valid) }
}

fn unary_scalar(op: UnOp, x: f64) -> f64 {
    constant_of(apply_unary(op, Val::new(Data::Const(x))))
}

fn func_scalar(f: Func1, x: f64) -> f64 {
    constant_of(apply_func(f, Val::new(Data::Const(x))))
}

fn binary_scalar(op: BinOp, x: f64, y: f64) -> f64 {
    constant_of(apply_binary(op, Val::new(Data::Const(x)), Val::new(Data::Const(y)), 1))
}

fn constant_of(v: Val<'_>) -> f64 {
    match v.data {
        Data::Const(c) => c,
        Data::Slice(_) | Data::Buf(_) => v.get(0),
    }
}

/// Element `x` of the event whose values are `values[lo..hi]`, if `x` is a
/// valid index.
fn jagged_get(values: &[f64], lo: u64, hi: u64, x: f64) -> Option<f64> {
    // The range check bounds `x` before the integer test (an exact round
    // trip through u64).
    if x.is_nan() || x < 0.0 || x >= hi.saturating_sub(lo) as f64 {
        return None;
    }
    let k = x as u64;
    if k as f64 != x {
        return None;
    }
    let at = usize::try_from(lo.checked_add(k)?).ok()?;
    values.get(at).copied()
}

fn all_invalid<'c>(len: usize) -> Val<'c> {
    Val { data: Data::Const(f64::NAN), valid: Some(vec![false; len]) }
}

fn run<'c>(plan: &Plan<'c>, start: usize, end: usize) -> Val<'c> {
    let len = end - start;
    match plan {
        Plan::Const(c) => Val::new(Data::Const(*c)),
        Plan::Scalar(col) => match col.get(start..end) {
            Some(s) => Val::new(Data::Slice(s)),
            None => all_invalid(len),
        },
        Plan::Len(offsets) => match offsets.get(start..=end) {
            Some(off) => Val::new(Data::Buf(off.windows(2).map(|w| w[1].saturating_sub(w[0]) as f64).collect())),
            None => all_invalid(len),
        },
        Plan::Index { offsets, values, index } => {
            let Some(off) = offsets.get(start..=end) else {
                return all_invalid(len);
            };
            let idx = run(index, start, end);
            let xs = idx.values(len);
            let mut out = vec![f64::NAN; len];
            let mut valid = vec![false; len];
            let items = out.iter_mut().zip(valid.iter_mut());
            for ((o, v), (w, &x)) in items.zip(off.windows(2).zip(xs.iter())) {
                if let Some(value) = jagged_get(values, w[0], w[1], x) {
                    *o = value;
                    *v = true;
                }
            }
            if let Some(m) = &idx.valid {
                for (v, &ok) in valid.iter_mut().zip(m) {
                    *v &= ok;
                }
            }
            Val { data: Data::Buf(out), valid: simplify(valid) }
        }
        Plan::Unary(op, x) => apply_unary(*op, run(x, start, end)),
        Plan::Call(f, x) => apply_func(*f, run(x, start, end)),
        Plan::Binary(op, l, r) => apply_binary(*op, run(l, start, end), run(r, start, end), len),
    }
}

/// Evaluates `plan` block by block over events `0..n`, handing each block's
/// values and its length to `sink`.
fn for_each_chunk<'c>(plan: &Plan<'c>, n: usize, mut sink: impl FnMut(&Val<'c>, usize)) {
    let mut start = 0;
    while start < n {
        let end = start.saturating_add(CHUNK).min(n);
        let v = run(plan, start, end);
        sink(&v, end - start);
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> BTreeMap<String, Column> {
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), Column::Scalar(vec![1.0, 2.0, 3.0]));
        m.insert("i".to_string(), Column::Scalar(vec![0.0, 1.0, 2.0]));
        m.insert("j".to_string(), Column::from_rows([vec![10.0, 11.0], vec![], vec![30.0, 31.0, 32.0]]));
        m.insert("Jet.pt".to_string(), Column::from_rows([vec![1.0], vec![2.0], vec![3.0]]));
        m
    }

    fn toks(s: &str) -> Vec<Tok> {
        let chars: Vec<char> = s.chars().collect();
        lex(&chars).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn lexer_tokens() {
        assert_eq!(
            toks("a**2^b&&!c||d!=e<=f>=g==h"),
            vec![
                Tok::Ident("a".into()),
                Tok::Pow,
                Tok::Num(2.0),
                Tok::Pow,
                Tok::Ident("b".into()),
                Tok::And,
                Tok::Not,
                Tok::Ident("c".into()),
                Tok::Or,
                Tok::Ident("d".into()),
                Tok::Ne,
                Tok::Ident("e".into()),
                Tok::Le,
                Tok::Ident("f".into()),
                Tok::Ge,
                Tok::Ident("g".into()),
                Tok::Eq,
                Tok::Ident("h".into()),
                Tok::End,
            ]
        );
        assert_eq!(
            toks("1 .5 5. 1e3 2.5E-4 1e+6"),
            vec![
                Tok::Num(1.0),
                Tok::Num(0.5),
                Tok::Num(5.0),
                Tok::Num(1000.0),
                Tok::Num(2.5e-4),
                Tok::Num(1e6),
                Tok::End
            ]
        );
        assert_eq!(toks("Jet.pt x.y_z.0"), vec![Tok::Ident("Jet.pt".into()), Tok::Ident("x.y_z.0".into()), Tok::End]);
    }

    #[test]
    fn lexer_errors() {
        for (src, pos) in [("1.2.3", 0), ("a + 2x", 4), ("1e", 0), ("a = 1", 2), ("a.", 1)] {
            let chars: Vec<char> = src.chars().collect();
            let e = lex(&chars).unwrap_err();
            assert_eq!(e.pos, pos, "{src}: {}", e.msg);
        }
    }

    #[test]
    fn constant_folding() {
        let e = Expr::parse("2 * (3 + 4) - -1").unwrap();
        let m = cols();
        let plan = e.bind(&e.root, &m, 3).unwrap();
        assert!(matches!(plan, Plan::Const(c) if c == 15.0));
        assert_eq!(e.eval(&m, 3).unwrap(), vec![Some(15.0); 3]);
    }

    #[test]
    fn dotted_names_and_index() {
        let m = cols();
        let e = Expr::parse("Jet.pt[0] + j[i]").unwrap();
        assert_eq!(e.eval(&m, 3).unwrap(), vec![Some(11.0), None, Some(35.0)]);
    }

    #[test]
    fn chunked_evaluation_matches_per_event() {
        let n = CHUNK * 2 + 17;
        let mut m = BTreeMap::new();
        m.insert("x".to_string(), Column::Scalar((0..n).map(|i| i as f64).collect()));
        m.insert("j".to_string(), Column::from_rows((0..n).map(|i| vec![i as f64; i % 3])));
        let e = Expr::parse("x % 7 == 0 and j[1] >= 0 or len(j) == 0").unwrap();
        let got = e.eval(&m, n).unwrap();
        for (i, g) in got.iter().enumerate() {
            let first = i % 7 == 0;
            let second = (i % 3 > 1).then_some(true);
            let lhs = if !first { Some(false) } else { second };
            let rhs = i % 3 == 0;
            let want = if rhs { Some(true) } else { lhs };
            assert_eq!(*g, want.map(b2f), "event {i}");
        }
    }

    #[test]
    fn masks_simplify() {
        assert!(simplify(vec![true, true]).is_none());
        assert!(simplify(vec![true, false]).is_some());
    }

    #[test]
    fn edit_distance_works() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            close_names("Photon_Pt", &["Photon_pt".into(), "Jet_pt".into(), "x".into()]),
            vec!["Photon_pt".to_string()]
        );
    }

    #[test]
    fn deep_input_is_rejected_not_overflowing() {
        let deep = format!("{}x{}", "(".repeat(5000), ")".repeat(5000));
        assert_eq!(Expr::parse(&deep).unwrap_err().kind(), ErrorKind::Syntax);
        let long = vec!["x"; 5000].join(" + ");
        assert!(Expr::parse(&long).is_err());
        let neg = format!("{}x", "-".repeat(5000));
        assert!(Expr::parse(&neg).is_err());
        let ok = vec!["x"; 200].join(" + ");
        assert!(Expr::parse(&ok).is_ok());
    }
}
