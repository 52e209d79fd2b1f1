//! k-nearest neighbours in a k-d tree over row-major `f64` points: shared by
//! the report's classifier test ([`crate::analysis::metrics`]) and the
//! smoothing of event weights ([`crate::data::EventSet::smoothed_weights`]).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

#[derive(Debug)]
enum KdNode {
    Leaf { start: usize, end: usize },
    Split { axis: usize, value: f64, left: usize, right: usize },
}

/// Minimal k-d tree over row-major points (indices into `points`): the
/// classifier test's neighbours and the smoothing of event weights.
pub(crate) struct KdTree<'a> {
    points: &'a [f64],
    dim: usize,
    idx: Vec<usize>,
    nodes: Vec<KdNode>,
}

const KD_LEAF: usize = 16;

#[derive(PartialEq)]
pub(crate) struct HeapItem(pub(crate) f64, pub(crate) usize);
impl Eq for HeapItem {}
impl PartialOrd for HeapItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HeapItem {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

impl<'a> KdTree<'a> {
    pub(crate) fn new(points: &'a [f64], dim: usize, idx: Vec<usize>) -> Self {
        let mut tree = KdTree { points, dim, idx, nodes: Vec::new() };
        let n = tree.idx.len();
        tree.build(0, n);
        tree
    }

    fn coord(&self, i: usize, d: usize) -> f64 {
        self.points[i * self.dim + d]
    }

    fn build(&mut self, start: usize, end: usize) -> usize {
        let id = self.nodes.len();
        if end - start <= KD_LEAF {
            self.nodes.push(KdNode::Leaf { start, end });
            return id;
        }
        // Split on the axis of largest spread, at the median.
        let mut axis = 0;
        let mut best = -1.0;
        for d in 0..self.dim {
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for &i in &self.idx[start..end] {
                let v = self.coord(i, d);
                lo = lo.min(v);
                hi = hi.max(v);
            }
            if hi - lo > best {
                best = hi - lo;
                axis = d;
            }
        }
        let mid = start + (end - start) / 2;
        let (points, dim) = (self.points, self.dim);
        self.idx[start..end]
            .select_nth_unstable_by(mid - start, |&a, &b| points[a * dim + axis].total_cmp(&points[b * dim + axis]));
        let value = self.coord(self.idx[mid], axis);
        self.nodes.push(KdNode::Leaf { start, end }); // placeholder
        let left = self.build(start, mid);
        let right = self.build(mid, end);
        self.nodes[id] = KdNode::Split { axis, value, left, right };
        id
    }

    /// The `k` nearest neighbours of `q` as (squared distance, point index).
    pub(crate) fn knn(&self, q: &[f64], k: usize, heap: &mut BinaryHeap<HeapItem>) {
        heap.clear();
        self.search(0, q, k, heap);
    }

    fn search(&self, node: usize, q: &[f64], k: usize, heap: &mut BinaryHeap<HeapItem>) {
        match self.nodes[node] {
            KdNode::Leaf { start, end } => {
                for &i in &self.idx[start..end] {
                    let p = &self.points[i * self.dim..(i + 1) * self.dim];
                    let d2: f64 = p.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum();
                    if heap.len() < k {
                        heap.push(HeapItem(d2, i));
                    } else if let Some(top) = heap.peek() {
                        if d2 < top.0 {
                            heap.pop();
                            heap.push(HeapItem(d2, i));
                        }
                    }
                }
            }
            KdNode::Split { axis, value, left, right } => {
                let diff = q[axis] - value;
                let (near, far) = if diff < 0.0 { (left, right) } else { (right, left) };
                self.search(near, q, k, heap);
                let worst = heap.peek().map_or(f64::INFINITY, |t| t.0);
                if heap.len() < k || diff * diff < worst {
                    self.search(far, q, k, heap);
                }
            }
        }
    }
}
