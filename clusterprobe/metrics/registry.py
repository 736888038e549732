"""What can be asked for: the metrics, the units of work that compute them, and their order.

A *unit* is computed and cached as a whole and yields one or two metric rows (``linear`` yields
``linear_top1`` and ``linear_top5``). Metrics are selected by unit name; ``silhouette`` (both
silhouettes), ``kmeans`` (``nmi, ari, cluster_acc``) and ``all`` select several at once.

==========================  =========================================================  =======
metric (row)                meaning                                                    needs
==========================  =========================================================  =======
nmi, ari, cluster_acc       k-means clusters vs ground truth (mean, std over seeds)    labels
silhouette_true             mean silhouette of the ground-truth classes                labels
silhouette_true_spread      its standard deviation across samples (stability)          labels
silhouette_kmeans           mean silhouette of the k-means clusters (std over seeds)   k
silhouette_kmeans_spread    std across samples of that silhouette (mean over seeds)    k
davies_bouldin              Davies-Bouldin index of the k-means clusters               k
calinski_harabasz           Calinski-Harabasz index of the k-means clusters            k
rankme                      RankMe effective rank                                      --
linear_top1, linear_top5    linear probe accuracy (train split -> eval split)          labels
knn_top1, knn_top5          kNN accuracy (train split -> eval split)                   labels
==========================  =========================================================  =======
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..errors import MetricsError, closest_name

#: Settings every k-means based unit depends on (names of :class:`MetricSettings` fields).
KMEANS_KEYS = ("k", "normalize", "seeds", "kmeans_niter", "kmeans_tol", "kmeans_init")
SILHOUETTE_KEYS = ("normalize", "distance", "silhouette_sample_size")


@dataclass(frozen=True)
class Unit:
    """A piece of work that is computed and cached as a whole (one or two metric rows).

    ``pair``: scored train split -> eval split (probes) rather than on one split.
    ``keys``: the :class:`MetricSettings` fields its values depend on.
    """

    name: str
    metrics: tuple[str, ...]
    pair: bool
    needs_labels: bool
    needs_k: bool
    keys: tuple[str, ...]


UNITS: dict[str, Unit] = {
    u.name: u
    for u in (
        Unit("rankme", ("rankme",), False, False, False, ()),
        Unit("nmi", ("nmi",), False, True, True, KMEANS_KEYS),
        Unit("ari", ("ari",), False, True, True, KMEANS_KEYS),
        Unit("cluster_acc", ("cluster_acc",), False, True, True, KMEANS_KEYS),
        Unit("davies_bouldin", ("davies_bouldin",), False, False, True, KMEANS_KEYS),
        Unit("calinski_harabasz", ("calinski_harabasz",), False, False, True, KMEANS_KEYS),
        Unit("silhouette_true", ("silhouette_true", "silhouette_true_spread"), False, True, False, SILHOUETTE_KEYS),
        Unit(
            "silhouette_kmeans",
            ("silhouette_kmeans", "silhouette_kmeans_spread"),
            False, False, True, KMEANS_KEYS + SILHOUETTE_KEYS,
        ),
        Unit("linear", ("linear_top1", "linear_top5"), True, True, False, ("probe", "probe_C", "probe_epochs")),
        Unit("knn", ("knn_top1", "knn_top5"), True, True, False, ("knn", "knn_k", "knn_temperature")),
    )
}

#: Units that fit on one split and score on another (their cache rows belong to a data pair).
PAIR_UNITS = frozenset(u.name for u in UNITS.values() if u.pair)

#: Every metric row name, in the order rows are sorted.
METRIC_ORDER: list[str] = [m for u in UNITS.values() for m in u.metrics]

#: Names that select several units.
SELECTORS: dict[str, tuple[str, ...]] = {
    "all": tuple(UNITS),
    "kmeans": ("nmi", "ari", "cluster_acc"),
    "silhouette": ("silhouette_true", "silhouette_kmeans"),
}

#: Every name :func:`resolve_metrics` accepts.
METRIC_NAMES: tuple[str, ...] = tuple(sorted(set(UNITS) | set(SELECTORS)))

# Earlier spellings, only to point at the one name in the error message.
_FORMER_NAMES = {
    "acc": "cluster_acc",
    "db": "davies_bouldin",
    "ch": "calinski_harabasz",
    "probe": "linear",
    "linear_probe": "linear",
    "accuracy": "linear,knn",
}


def resolve_metrics(metrics: str | Iterable[str] | None) -> tuple[str, ...]:
    """The unit names selected by ``metrics``, in the suite's order.

    ``metrics`` is a comma-separated string (``"nmi,ari,silhouette"``), a list of names, or None
    for all. Names are those of :data:`METRIC_NAMES`; case and ``-``/``_`` do not matter.

    Raises:
        MetricsError: an unknown name (with the closest known one), or nothing selected.
    """
    if metrics is None:
        return tuple(UNITS)
    names = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    chosen: set[str] = set()
    for raw in names:
        name = str(raw).strip().lower().replace("-", "_")
        if not name:
            continue
        if name in UNITS:
            chosen.add(name)
        elif name in SELECTORS:
            chosen.update(SELECTORS[name])
        else:
            hint = (f" Did you mean '{_FORMER_NAMES[name]}'?" if name in _FORMER_NAMES
                    else closest_name(name, METRIC_NAMES))
            raise MetricsError(f"Unknown metric {raw!r}. Choose from: {', '.join(METRIC_NAMES)}.{hint}")
    if not chosen:
        raise MetricsError("No metrics were asked for; pass e.g. metrics='nmi,ari,silhouette'.")
    return tuple(name for name in UNITS if name in chosen)
