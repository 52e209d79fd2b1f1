"""FEDHEX from Python: load a trained conditional normalizing flow, generate
events at any label point, evaluate log-densities, fit labels.

The work is done by the FEDHEX Rust library (``fedhex._native``, built with
PyO3); these are the same functions the ``fedhex`` command line calls, so
``Model.sample`` gives exactly the events of ``fedhex sample`` with the same
seed and batch.

Example::

    import fedhex
    m = fedhex.load("run/model")
    samples, labels = m.sample([0.55, 0.45], 10_000, seed=1)
    logp = m.log_prob(samples, [0.55, 0.45])

The extension links the libtorch of the installed ``torch`` package (one
libtorch per process), so ``import torch`` may come before or after
``import fedhex``.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from ._native import (
    DEFAULT_BATCH,
    FedhexError,
    Model,
    __version__,
    fit,
    libtorch_version,
    load,
)

__all__ = [
    "DEFAULT_BATCH",
    "FedhexError",
    "Model",
    "__version__",
    "fit",
    "libtorch_version",
    "load",
    "to_uproot",
]


def to_uproot(
    samples: np.ndarray,
    labels: np.ndarray,
    features: Sequence[str],
    label_names: Sequence[str],
) -> Dict[str, np.ndarray]:
    """Columns ``{name: 1-D array}`` of generated events, one per feature and
    per label (the branches ``fedhex sample --out x.root`` writes), ready for
    ``uproot``: ``f = uproot.recreate("gen.root"); f["Events"] = to_uproot(...)``.

    ``samples`` is ``[N, D]`` with ``D = len(features)``, ``labels`` ``[N, L]``
    with ``L = len(label_names)``; names must be distinct.
    """
    samples = np.asarray(samples)
    labels = np.asarray(labels)
    features, label_names = list(features), list(label_names)
    if samples.ndim != 2 or samples.shape[1] != len(features):
        raise ValueError(f"samples: expected shape [N, {len(features)}], got {list(samples.shape)}")
    if labels.ndim != 2 or labels.shape != (samples.shape[0], len(label_names)):
        raise ValueError(
            f"labels: expected shape [{samples.shape[0]}, {len(label_names)}], got {list(labels.shape)}"
        )
    names = features + label_names
    if len(set(names)) != len(names):
        raise ValueError(f"feature and label names must be distinct: {names}")
    out = {name: np.ascontiguousarray(samples[:, i]) for i, name in enumerate(features)}
    out.update({name: np.ascontiguousarray(labels[:, j]) for j, name in enumerate(label_names)})
    return out
