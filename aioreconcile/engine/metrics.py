"""A tiny Prometheus registry: counters, gauges and histograms rendered as text format 0.0.4.

We may not depend on ``prometheus_client``, and we need very little of it: a handful of families
with labels, read by one ``/metrics`` endpoint. Everything runs on one event loop, so nothing here
locks. It is pure data (no I/O): the webhook adapter serves ``Registry.exposition()``.

Families live in a ``Registry``; constructors take one (``registry=None`` keeps the family
unregistered) so tests use fresh registries and never see each other's samples. Components that
may be built more than once against the same registry (two work queues, say) use the
get-or-create helpers ``Registry.counter/gauge/histogram`` and tell themselves apart by label.
"""

import math
import re
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import pairwise
from typing import Any, ClassVar, Final, Generic, TypeVar

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# From a millisecond (a no-op reconcile) to ten seconds (a large staged apply).
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def format_value(value: float) -> str:
    """Go-style float text, as Prometheus parses it: ``+Inf``, ``-Inf``, ``NaN``, else repr."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _render_labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs)
    return "{" + inner + "}"


class CounterChild:
    """One labelled series of a counter: it only goes up (a restart resets it to zero)."""

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"a counter only goes up, got inc({amount})")
        self.value += amount


class GaugeChild:
    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class HistogramChild:
    """Counts per bucket are stored per bucket and made cumulative only when rendered."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # ``le`` is inclusive: the first bound >= value takes it; +Inf is always last.
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        running = 0
        out = []
        for bound, count in zip(self._bounds, self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


C = TypeVar("C", CounterChild, GaugeChild, HistogramChild)


class Metric(Generic[C]):
    """A family: a name, its help text, label names and one child per distinct label values."""

    type_name: ClassVar[str]

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: "Registry | None" = None,
    ) -> None:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} for {name}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicate label names {list(labelnames)} for {name}")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], C] = {}
        if not self.labelnames:
            # An unlabelled family always shows its one sample, even at zero.
            self._children[()] = self._new_child()
        if registry is not None:
            registry.register(self)

    def _new_child(self) -> C:
        raise NotImplementedError

    def labels(self, **values: str) -> C:
        if set(values) != set(self.labelnames) or not self.labelnames:
            raise ValueError(
                f"{self.name} takes labels {list(self.labelnames)}, got {sorted(values)}"
            )
        key = tuple(str(values[label]) for label in self.labelnames)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def _unlabelled(self) -> C:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {list(self.labelnames)}: use .labels()")
        return self._children[()]

    def _series(self) -> Iterator[tuple[list[tuple[str, str]], C]]:
        for key, child in self._children.items():
            yield list(zip(self.labelnames, key, strict=True)), child

    def samples(self) -> Iterator[str]:
        """Sample lines for this family, without HELP/TYPE."""
        raise NotImplementedError

    def exposition(self) -> str:
        lines = [
            f"# HELP {self.name} {escape_help(self.documentation)}",
            f"# TYPE {self.name} {self.type_name}",
            *self.samples(),
        ]
        return "\n".join(lines) + "\n"


class Counter(Metric[CounterChild]):
    type_name = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def samples(self) -> Iterator[str]:
        for pairs, child in self._series():
            yield f"{self.name}{_render_labels(pairs)} {format_value(child.value)}"


class Gauge(Metric[GaugeChild]):
    type_name = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def set(self, value: float) -> None:
        self._unlabelled().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._unlabelled().dec(amount)

    def samples(self) -> Iterator[str]:
        for pairs, child in self._series():
            yield f"{self.name}{_render_labels(pairs)} {format_value(child.value)}"


class Histogram(Metric[HistogramChild]):
    """Fixed buckets, chosen when the family is made; ``+Inf`` is added when missing."""

    type_name = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS,
        registry: "Registry | None" = None,
    ) -> None:
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(math.isnan(b) for b in bounds):
            raise ValueError(f"{name}: buckets must be non-empty numbers, got {list(buckets)}")
        if any(a >= b for a, b in pairwise(bounds)):
            raise ValueError(f"{name}: buckets must be strictly increasing, got {list(buckets)}")
        if bounds[-1] != math.inf:
            bounds = (*bounds, math.inf)
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        self.buckets = bounds
        super().__init__(name, documentation, labelnames, registry=registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.buckets)

    def observe(self, value: float) -> None:
        self._unlabelled().observe(value)

    def samples(self) -> Iterator[str]:
        for pairs, child in self._series():
            for bound, count in child.cumulative():
                labels = _render_labels([*pairs, ("le", format_value(bound))])
                yield f"{self.name}_bucket{labels} {format_value(count)}"
            yield f"{self.name}_sum{_render_labels(pairs)} {format_value(child.sum)}"
            yield f"{self.name}_count{_render_labels(pairs)} {format_value(child.count)}"


AnyMetric = Metric[Any]
M = TypeVar("M", Counter, Gauge, Histogram)


class Registry:
    """The families one ``/metrics`` endpoint shows, in the order they were registered."""

    def __init__(self) -> None:
        self._metrics: dict[str, AnyMetric] = {}

    def register(self, metric: AnyMetric) -> None:
        existing = self._metrics.get(metric.name)
        if existing is not None and existing is not metric:
            raise ValueError(f"metric {metric.name!r} is already registered")
        self._metrics[metric.name] = metric

    def unregister(self, metric: AnyMetric) -> None:
        if self._metrics.get(metric.name) is metric:
            del self._metrics[metric.name]

    def get(self, name: str) -> AnyMetric | None:
        return self._metrics.get(name)

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        """The registered counter of this name, made on first use."""
        return self._get_or_make(Counter, name, labelnames) or Counter(
            name, documentation, labelnames, registry=self
        )

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._get_or_make(Gauge, name, labelnames) or Gauge(
            name, documentation, labelnames, registry=self
        )

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        return self._get_or_make(Histogram, name, labelnames) or Histogram(
            name, documentation, labelnames, buckets=buckets, registry=self
        )

    def _get_or_make(self, kind: type[M], name: str, labelnames: Sequence[str]) -> M | None:
        existing = self._metrics.get(name)
        if existing is None:
            return None
        if not isinstance(existing, kind) or existing.labelnames != tuple(labelnames):
            raise ValueError(
                f"metric {name!r} is already registered as {existing.type_name}"
                f" with labels {list(existing.labelnames)}"
            )
        return existing

    def exposition(self) -> str:
        """Prometheus text format 0.0.4 (serve it with ``CONTENT_TYPE``)."""
        return "".join(metric.exposition() for metric in self._metrics.values())


REGISTRY: Final = Registry()
"""The process-wide registry the runtime serves; tests pass fresh ones instead."""
