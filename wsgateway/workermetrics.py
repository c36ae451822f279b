"""The node's metrics from every worker of ``wsgateway serve --workers N`` (pure).

Each worker has its own registry; a scrape reaches whichever worker the kernel picks
(SO_REUSEPORT). So that a scrape never shows one random worker's figures, the worker that
answers reads its siblings' registries (``siblings.py``, over private unix sockets) and
merges them here: every series of every worker, with a ``worker`` label added.

Why a label and not sums: a counter summed over workers drops when one worker restarts,
and Prometheus would read the whole sum as reset (a false spike in every ``rate()``);
gauges like ``wsgateway_broker_connected`` or ``process_max_fds`` have no meaningful sum.
Per-worker series stay correct under every PromQL ``sum by``/``max by`` the dashboards and
rules use, and :func:`metrics.to_json` sums them where a sum is right.

The wire format between workers is JSON of each family and its samples (orjson: encoding
and decoding ~850 series costs well under a millisecond, far less than parsing the text
exposition). Non-finite values (``process_max_fds`` may be +Inf) travel as strings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import orjson
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

#: the label that tells the workers of one node apart
WORKER_LABEL = "worker"
#: 1 for each worker whose figures are in the scrape, 0 for one that did not answer
WORKER_UP = "wsgateway_worker_up"


def to_wire(collector: Collector) -> bytes:
    """``collector``'s families as bytes for :func:`from_wire`."""
    families = []
    for metric in collector.collect():
        samples = [
            (s.name, s.labels, s.value if math.isfinite(s.value) else repr(s.value))
            for s in metric.samples
        ]
        families.append((metric.name, metric.type, metric.documentation, metric.unit, samples))
    return orjson.dumps(families)


def from_wire(data: bytes, worker: str) -> list[Metric]:
    """The families :func:`to_wire` encoded, each sample labelled ``worker``. Raises
    ValueError on anything else."""
    try:
        families = orjson.loads(data)
        if not isinstance(families, list):
            raise TypeError("expected a list of families")
        result = []
        for name, kind, documentation, unit, samples in families:
            metric = Metric(name, documentation, kind, unit)
            for _, labels, _ in samples:
                labels[WORKER_LABEL] = worker  # decoded just now: ours to change
            metric.samples = [
                _sample(sample_name, labels, float(value)) for sample_name, labels, value in samples
            ]
            result.append(metric)
    except (TypeError, ValueError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"not a worker's metrics: {exc}") from None
    return result


def with_worker(families: Iterable[Metric], worker: str) -> list[Metric]:
    """Copies of ``families`` with each sample labelled ``worker``."""
    result = []
    for family in families:
        metric = Metric(family.name, family.documentation, family.type, family.unit)
        metric.samples = [
            _sample(s.name, {**s.labels, WORKER_LABEL: worker}, s.value) for s in family.samples
        ]
        result.append(metric)
    return result


def merge(parts: Mapping[str, Sequence[Metric] | None]) -> list[Metric]:
    """One list of families from every worker's, by worker name (``None``: it did not
    answer), each already labelled (:func:`from_wire`, :func:`with_worker`). The families
    keep the order in which they first appear; :data:`WORKER_UP` says who answered."""
    merged: dict[str, Metric] = {}
    for families in parts.values():
        for family in families or ():
            into = merged.get(family.name)
            if into is None:
                merged[family.name] = family
            else:
                into.samples += family.samples
    up = Metric(WORKER_UP, "1 when the worker's figures are in this scrape, else 0", "gauge")
    up.samples = [
        _sample(WORKER_UP, {WORKER_LABEL: worker}, 0.0 if families is None else 1.0)
        for worker, families in parts.items()
    ]
    return [*merged.values(), up]


_new_tuple = tuple.__new__


def _sample(name: str, labels: dict[str, str], value: float) -> Sample:
    # A third cheaper than Sample(...), which a scrape pays for every series of every worker.
    sample: Sample = _new_tuple(Sample, (name, labels, value, None, None, None))
    return sample


class MergedCollector(Collector):
    """Families already collected, for the encoders and :func:`metrics.to_json`."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families
