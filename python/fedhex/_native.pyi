"""Typed stub of the native module ``fedhex._native`` (the PyO3 extension)."""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

__version__: str
DEFAULT_BATCH: int
"""Default events per network call of ``Model.sample`` (``fedhex sample --batch``)."""

class FedhexError(Exception):
    """An error reported by the FEDHEX library: a corrupt model, a failed fit,
    a libtorch failure, or an internal panic (caught, never a crash). Bad
    arguments raise ``ValueError``, missing files ``FileNotFoundError``/``OSError``."""

class Model:
    """A loaded FEDHEX model directory (from ``fedhex.load``). Calls from several
    threads are safe: they run one at a time, with the GIL released."""

    @property
    def features(self) -> List[str]:
        """Feature names, the columns of ``sample``'s events and ``log_prob``'s ``x``."""
    @property
    def labels(self) -> List[str]:
        """Label (condition) names, the columns of the labels."""
    @property
    def label_ranges(self) -> List[Tuple[float, float]]:
        """Training range ``(lo, hi)`` of each label; outside it sampling extrapolates (with a warning)."""
    @property
    def training_labels(self) -> Optional[List[List[float]]]:
        """The label points the model was trained on (validation labels excluded), or None if not recorded."""
    @property
    def acceptance(self) -> List[str]:
        """The training data's acceptance cuts (applied to generated events), as text."""
    @property
    def path(self) -> str:
        """The model directory."""
    @property
    def device(self) -> str:
        """``cpu`` or ``cuda:N``."""
    @property
    def members(self) -> int:
        """Number of flows: 1, or the size of an ensemble (``fedhex ensemble``), whose density is the mixture of theirs."""
    def description(self) -> str:
        """A few lines: network, features, labels with ranges, cuts, training summary."""
    def sample(
        self,
        labels: npt.ArrayLike,
        n: int,
        seed: int = 1,
        batch: Optional[int] = None,
    ) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Draws ``n`` events at each label point and returns ``(samples [N, D], labels [N, L])``,
        float32, ``N = K * n``, in label order.

        ``labels``: one point ``[L]`` or ``K`` points ``[K, L]``. The model's acceptance
        cuts and the support check are applied as ``fedhex sample`` does (rejected events
        are redrawn, so exactly ``n`` per label come back). With the same ``seed`` and
        ``batch`` (default ``DEFAULT_BATCH``, as the CLI's) and the same device the events
        are byte for byte those of ``fedhex sample --label ... -n n --seed seed --batch batch``;
        the default seed is the CLI's (1). Labels outside the training range warn
        (``UserWarning``). Releases the GIL while it works.
        """
    def log_prob(self, x: npt.ArrayLike, labels: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``log p(x | label)`` per event, ``[N]`` (the library's float32 values as float64),
        including the preprocessing Jacobian, before any acceptance cut.

        ``x``: ``[N, D]``; ``labels``: ``[L]`` (the same for every event) or ``[N, L]``.
        Anything NumPy converts (lists, arrays, objects with ``__array__``); a wrong shape
        raises ``ValueError`` naming the argument and the expected shape.
        """

def load(path: str, device: str = "cpu") -> Model:
    """Loads a model directory (or its ``model.json``) onto ``device``: ``"cpu"``,
    ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (a GPU when one is visible).

    Raises ``FileNotFoundError`` for a missing path, ``FedhexError`` for a corrupt
    or mismatched model, ``ValueError`` for a bad device string."""

def fit(
    model: Model,
    events: npt.ArrayLike,
    truth: Optional[Sequence[float]] = None,
    seed: int = 0,
    iterations: int = 300,
    acceptance_samples: int = 20000,
    scan: str = "slice",
) -> Dict[str, Any]:
    """Maximum-likelihood fit of the label to observed ``events`` ``[N, D]``: the library's
    ``fit_label`` with ``fedhex fit``'s defaults. Returns what ``fedhex fit`` writes to
    fit.json for one group: ``best``, ``uncertainty``, ``covariance``, ``correlation``,
    ``nll``, ``pulls`` (with ``truth``), ``scans`` (``scan``: ``"slice"`` or ``"profile"``),
    ``warnings``, ... ``seed`` seeds the acceptance samples of models with cuts."""

def libtorch_version() -> str:
    """The libtorch version the extension was built against."""
