"""Cheap scrapes: lean instruments and the Prometheus text format without per-sample overhead.

A scrape of ~550 series cost 12.8 ms (``/metrics``) and 5.7 ms (``/api/ws/metrics``) on an
idle gateway, whatever the number of connections (benchmarks/scrape.py): prometheus_client
builds each sample twice (child, then family), adds a ``_created`` sample to every counter
and histogram child, and its text encoder validates and escapes every metric and label name
of every sample. Here:

- :class:`Counter`, :class:`Gauge` and :class:`Histogram` are prometheus_client's, with a
  collect that builds each sample once and no ``_created`` samples. Those are start times of
  each series, which no dashboard or rule reads; in the text format they are separate gauges
  (``*_created``), a third of the series. Only these instruments lose them: the
  process-wide ``disable_created_metrics()`` would change an embedding application's metrics.
- :func:`generate_text` writes the text format (0.0.4) byte for byte as
  ``prometheus_client.exposition.generate_latest`` does for legacy names (checked by
  tests/test_scrape.py); a name outside the legacy character set falls back to it.
- :func:`choose_encoder` is prometheus_client's negotiation, with :func:`generate_text`
  where it would pick ``generate_latest``; OpenMetrics and text 1.0 keep their encoders.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import prometheus_client
from prometheus_client import exposition
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["Counter", "Gauge", "Histogram", "choose_encoder", "generate_text"]

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


class _Lean:
    """Collect a labelled instrument in one pass: one Sample per series, no ``_created``."""

    _name: str
    _labelnames: tuple[str, ...]
    _metrics: dict[tuple[str, ...], Any]
    _lock: Any
    _get_metric: Callable[[], Any]

    def _series(self, child: Any, labels: dict[str, str]) -> list[Sample]:
        raise NotImplementedError

    def collect(self) -> Iterable[Any]:
        metric = self._get_metric()
        names = self._labelnames
        if names:
            with self._lock:
                children = list(self._metrics.items())
        else:
            children = [((), self)]
        samples = metric.samples
        for values, child in children:
            samples += self._series(child, dict(zip(names, values)))
        return [metric]


class Counter(_Lean, prometheus_client.Counter):
    def _series(self, child: Any, labels: dict[str, str]) -> list[Sample]:
        return [Sample(self._name + "_total", labels, child._value.get(), None, None)]


class Gauge(_Lean, prometheus_client.Gauge):
    def _series(self, child: Any, labels: dict[str, str]) -> list[Sample]:
        return [Sample(self._name, labels, child._value.get(), None, None)]


class Histogram(_Lean, prometheus_client.Histogram):
    _upper_bounds: list[float]

    def _series(self, child: Any, labels: dict[str, str]) -> list[Sample]:
        name = self._name
        bucket = name + "_bucket"
        samples = []
        total = 0.0
        for le, value in zip(self._bounds(), child._buckets, strict=True):
            total += value.get()
            samples.append(Sample(bucket, {**labels, "le": le}, total, None, None))
        samples.append(Sample(name + "_count", labels, total, None, None))
        if self._upper_bounds[0] >= 0:
            samples.append(Sample(name + "_sum", dict(labels), child._sum.get(), None, None))
        return samples

    def _bounds(self) -> list[str]:
        try:
            return self._le  # type: ignore[has-type,no-any-return]
        except AttributeError:
            self._le: list[str] = [floatToGoString(bound) for bound in self._upper_bounds]
            return self._le


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


class _NotLegacy(Exception):
    """A name outside the legacy character set: prometheus_client's encoder escapes it."""


def generate_text(registry: Collector) -> bytes:
    """``generate_latest(registry)``, the same bytes, without its per-sample cost."""
    try:
        return _generate_text(registry)
    except _NotLegacy:
        return exposition.generate_latest(registry)


def _generate_text(registry: Collector) -> bytes:
    output: list[str] = []
    label_names: set[str] = set()
    for metric in registry.collect():
        name, kind = metric.name, metric.type
        if kind == "counter":
            name += "_total"
        elif kind == "info":
            name += "_info"
            kind = "gauge"
        elif kind == "stateset":
            kind = "gauge"
        elif kind == "gaugehistogram":
            kind = "histogram"
        elif kind == "unknown":
            kind = "untyped"
        if not _METRIC_NAME.match(name):
            raise _NotLegacy(name)
        help_text = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        output.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
        # OpenMetrics-only samples go to a gauge of their own after the family.
        extra: dict[str, list[str]] = {}
        suffixes = {metric.name + s: s for s in ("_created", "_gsum", "_gcount")}
        for sample in metric.samples:
            labels = sample.labels
            if labels:
                for label in labels:
                    if label not in label_names:
                        if not _LABEL_NAME.match(label):
                            raise _NotLegacy(label)
                        label_names.add(label)
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
                series = f"{sample.name}{{{text}}}"
            else:
                series = sample.name
            if not _METRIC_NAME.match(sample.name):
                raise _NotLegacy(sample.name)
            value = sample.value
            number = floatToGoString(value)
            if sample.timestamp is None:
                line = f"{series} {number}\n"
            else:
                line = f"{series} {number} {int(float(sample.timestamp) * 1000):d}\n"
            suffix = suffixes.get(sample.name)
            if suffix is None:
                output.append(line)
            else:
                extra.setdefault(suffix, []).append(line)
        for suffix, lines in sorted(extra.items()):
            output.append(
                f"# HELP {metric.name}{suffix} {help_text}\n# TYPE {metric.name}{suffix} gauge\n"
            )
            output += lines
    return "".join(output).encode("utf-8")


def choose_encoder(accept: str) -> tuple[Callable[[Collector], bytes], str]:
    """prometheus_client's content negotiation, with :func:`generate_text` for text 0.0.4."""
    encoder, content_type = exposition.choose_encoder(accept)
    if encoder is exposition.generate_latest:
        return generate_text, content_type
    return encoder, content_type
