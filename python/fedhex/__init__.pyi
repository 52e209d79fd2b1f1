from typing import Dict, Sequence

import numpy as np

from ._native import DEFAULT_BATCH as DEFAULT_BATCH
from ._native import FedhexError as FedhexError
from ._native import Model as Model
from ._native import __version__ as __version__
from ._native import fit as fit
from ._native import libtorch_version as libtorch_version
from ._native import load as load

def to_uproot(
    samples: np.ndarray,
    labels: np.ndarray,
    features: Sequence[str],
    label_names: Sequence[str],
) -> Dict[str, np.ndarray]:
    """Columns ``{name: 1-D array}`` for ``uproot``: ``f["Events"] = to_uproot(...)``."""
