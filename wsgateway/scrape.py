"""Cheap scrapes: lean instruments, and exposition encoders without per-sample overhead.

A scrape of ~850 series cost 6.7 ms (``/metrics``) and 3.3 ms (``/api/ws/metrics``) at
10,000 clients, about what it cost with none (benchmarks/scrape.py): prometheus_client
builds each sample twice (child, then family), adds a ``_created`` sample to every counter
and histogram child, and its encoders validate and escape each metric and label name
of every sample. Here:

- :class:`Counter`, :class:`Gauge` and :class:`Histogram` are prometheus_client's, with a
  collect that builds each sample once and no ``_created`` samples. Those are start times of
  each series, which no dashboard or rule reads; in the text format they are separate gauges
  (``*_created``), a third of the series. Only these instruments lose them: the
  process-wide ``disable_created_metrics()`` would change an embedding application's metrics.
- :func:`generate_text` writes the text format (0.0.4) byte for byte as
  ``prometheus_client.exposition.generate_latest`` does for legacy names (checked by
  tests/test_scrape.py); a name outside the legacy character set falls back to it.
- :func:`generate_openmetrics` does the same for OpenMetrics 1.x, what Prometheus 2 and 3
  negotiate; exemplars, native histograms and names with colons go to prometheus_client's.
- :func:`choose_encoder` is prometheus_client's negotiation, with these encoders wherever
  they write the same bytes (name escaping ``underscores`` or ``allow-utf-8``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, cast

import prometheus_client
from prometheus_client import exposition
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString, parse_version

__all__ = [
    "Counter",
    "Gauge",
    "Histogram",
    "choose_encoder",
    "generate_openmetrics",
    "generate_text",
]

Encoder = Callable[[Collector], bytes]
#: prometheus_client's float format (Go's): ``+Inf``, ``NaN``, ``1e+06``; untyped there.
_go_float = cast(Callable[[float], str], floatToGoString)

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


class _Lean:
    """Collect a labelled instrument in one pass: one Sample per series, no ``_created``."""

    _name: str
    _labelnames: tuple[str, ...]
    _get_metric: Callable[[], Any]

    def _series(self, child: Any, labels: dict[str, str]) -> list[Sample]:
        raise NotImplementedError

    def collect(self) -> Iterable[Any]:
        metric = self._get_metric()
        names = self._labelnames
        if names:
            wrapper: Any = self  # prometheus_client's parent: its children by label values
            with wrapper._lock:
                children = list(wrapper._metrics.items())
        else:
            children = [((), self)]
        samples = metric.samples
        for values, child in children:
            samples += self._series(child, dict(zip(names, values, strict=True)))
        return [metric]


class Counter(_Lean, prometheus_client.Counter):
    def _series(self, child: Any, labels: dict[str, str]) -> list[Sample]:
        return [Sample(self._name + "_total", labels, child._value.get(), None, None)]


class Gauge(_Lean, prometheus_client.Gauge):
    def _series(self, child: Any, labels: dict[str, str]) -> list[Sample]:
        if "_child_samples" in child.__dict__:  # set_function() replaced the child's samples
            return [
                s._replace(name=self._name + s.name, labels={**labels, **s.labels})
                for s in child._child_samples()
            ]
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
        bounds: list[str] | None = self.__dict__.get("_le")
        if bounds is None:
            bounds = self.__dict__["_le"] = [_go_float(bound) for bound in self._upper_bounds]
        return bounds


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


# The text of each series seen, ``name{labels}``: the same few hundred every scrape. Bounded
# in case a collector registered by an embedding application has unbounded label values.
_SERIES: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
_SERIES_MAX = 20_000
_INF = float("inf")


def _series(name: str, labels: dict[str, str]) -> str:
    key = (name, tuple(labels.items()))
    text = _SERIES.get(key)
    if text is None:
        if not _METRIC_NAME.match(name):
            raise _NotLegacy(name)
        for label in labels:
            if not _LABEL_NAME.match(label):
                raise _NotLegacy(label)
        if labels:
            pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            text = f"{name}{{{pairs}}}"
        else:
            text = name
        if len(_SERIES) >= _SERIES_MAX:
            _SERIES.clear()
        _SERIES[key] = text
    return text


def _number(value: float) -> str:
    # floatToGoString's result is repr() below 1e6 (Go writes exponents for large values).
    if value.__class__ is float and -_INF < value < 1e6:
        return repr(value)
    return _go_float(value)


def _generate_text(registry: Collector) -> bytes:
    output: list[str] = []
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
            series = _series(sample.name, sample.labels)
            if sample.timestamp is None:
                line = f"{series} {_number(sample.value)}\n"
            else:
                stamp = int(float(sample.timestamp) * 1000)
                line = f"{series} {_number(sample.value)} {stamp:d}\n"
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


def _generate_openmetrics(registry: Collector) -> bytes:
    output: list[str] = []
    for metric in registry.collect():
        name = metric.name
        # OpenMetrics escapes sample names as label names: no colons on the fast path.
        if not _LABEL_NAME.match(name):
            raise _NotLegacy(name)
        help_text = (
            metric.documentation.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
        )
        output.append(f"# HELP {name} {help_text}\n# TYPE {name} {metric.type}\n")
        if metric.unit:
            output.append(f"# UNIT {name} {metric.unit}\n")
        for sample in metric.samples:
            if sample.exemplar or sample.native_histogram or ":" in sample.name:
                raise _NotLegacy(sample.name)
            series = _series(sample.name, sample.labels)
            value = "" if sample.value is None else _number(sample.value)
            if sample.timestamp is None:
                output.append(f"{series} {value}\n")
            else:
                output.append(f"{series} {value} {sample.timestamp}\n")
    output.append("# EOF\n")
    return "".join(output).encode("utf-8")


def generate_openmetrics(registry: Collector, fallback: Encoder) -> bytes:
    """``fallback(registry)`` (prometheus_client's OpenMetrics 1.x encoder, names escaped
    with underscores or left as UTF-8), the same bytes for legacy names, without its
    per-sample cost. Exemplars and native histograms go to ``fallback``."""
    try:
        return _generate_openmetrics(registry)
    except _NotLegacy:
        return fallback(registry)


# The name escapings under which a legacy name is written unchanged.
_PLAIN_ESCAPINGS = (openmetrics.UNDERSCORES, openmetrics.ALLOWUTF8)


def choose_encoder(accept: str) -> tuple[Encoder, str]:
    """prometheus_client's content negotiation and content type, with the encoders above
    wherever they write the same bytes (text 0.0.4 and 1.0, OpenMetrics 1.x)."""
    encoder, content_type = exposition.choose_encoder(accept)
    if encoder is exposition.generate_latest:
        return generate_text, content_type
    if not isinstance(encoder, partial) or encoder.args:
        return encoder, content_type
    if encoder.keywords.get("escaping") not in _PLAIN_ESCAPINGS:
        return encoder, content_type
    if encoder.func is exposition.generate_latest and encoder.keywords.keys() == {"escaping"}:
        return partial(_text_or, fallback=encoder), content_type
    if encoder.func is openmetrics.generate_latest and encoder.keywords.keys() == {
        "escaping",
        "version",
    }:
        version = parse_version(encoder.keywords["version"])
        if (1, 0, 0) <= version < (2, 0, 0):
            return partial(generate_openmetrics, fallback=encoder), content_type
    return encoder, content_type


def _text_or(registry: Collector, fallback: Encoder) -> bytes:
    try:
        return _generate_text(registry)
    except _NotLegacy:
        return fallback(registry)
