"""The Prometheus registry: exact text format 0.0.4, escaping, cumulative buckets, misuse
refused."""

import math
from collections.abc import Callable

import pytest

from aioreconcile.engine.metrics import (
    Counter,
    Gauge,
    Histogram,
    Registry,
    format_value,
)


def _unlabelled_counter(registry: Registry) -> None:
    Counter("jobs_total", "Jobs done.", registry=registry).inc(3)


def _labelled_counter(registry: Registry) -> None:
    c = Counter("applied_total", "Objects applied.", ["sync", "action"], registry=registry)
    c.labels(sync="shop", action="created").inc()
    c.labels(sync="shop", action="created").inc()
    c.labels(action="unchanged", sync="shop").inc(5)


def _labelled_counter_untouched(registry: Registry) -> None:
    Counter("applied_total", "Objects applied.", ["sync"], registry=registry)


def _gauge(registry: Registry) -> None:
    g = Gauge("depth", "Keys waiting.", ["queue"], registry=registry)
    g.labels(queue="a").set(4)
    g.labels(queue="a").dec()
    g.labels(queue="b").inc(0.5)


def _histogram(registry: Registry) -> None:
    h = Histogram("wait_seconds", "Wait.", ["queue"], buckets=[0.1, 1], registry=registry)
    h.labels(queue="a").observe(0.05)
    h.labels(queue="a").observe(2)


def _two_families(registry: Registry) -> None:
    Gauge("up", "Is it up.", registry=registry).set(1)
    Counter("errors_total", "Errors.", registry=registry)


EXPOSITIONS: list[tuple[str, Callable[[Registry], None], str]] = [
    ("empty registry", lambda registry: None, ""),
    (
        "unlabelled counter",
        _unlabelled_counter,
        "# HELP jobs_total Jobs done.\n# TYPE jobs_total counter\njobs_total 3.0\n",
    ),
    (
        "labelled counter, children in creation order, labels in declared order",
        _labelled_counter,
        "# HELP applied_total Objects applied.\n"
        "# TYPE applied_total counter\n"
        'applied_total{sync="shop",action="created"} 2.0\n'
        'applied_total{sync="shop",action="unchanged"} 5.0\n',
    ),
    (
        "labelled family with no children shows only HELP and TYPE",
        _labelled_counter_untouched,
        "# HELP applied_total Objects applied.\n# TYPE applied_total counter\n",
    ),
    (
        "gauge",
        _gauge,
        "# HELP depth Keys waiting.\n"
        "# TYPE depth gauge\n"
        'depth{queue="a"} 3.0\n'
        'depth{queue="b"} 0.5\n',
    ),
    (
        "histogram",
        _histogram,
        "# HELP wait_seconds Wait.\n"
        "# TYPE wait_seconds histogram\n"
        'wait_seconds_bucket{queue="a",le="0.1"} 1.0\n'
        'wait_seconds_bucket{queue="a",le="1.0"} 1.0\n'
        'wait_seconds_bucket{queue="a",le="+Inf"} 2.0\n'
        'wait_seconds_sum{queue="a"} 2.05\n'
        'wait_seconds_count{queue="a"} 2.0\n',
    ),
    (
        "families in registration order, unlabelled ones shown at zero",
        _two_families,
        "# HELP up Is it up.\n# TYPE up gauge\nup 1.0\n"
        "# HELP errors_total Errors.\n# TYPE errors_total counter\nerrors_total 0.0\n",
    ),
]


@pytest.mark.parametrize(
    ("build", "expected"),
    [(build, expected) for _, build, expected in EXPOSITIONS],
    ids=[name for name, _, _ in EXPOSITIONS],
)
def test_exposition_is_exact_text_format(build: Callable[[Registry], None], expected: str) -> None:
    registry = Registry()
    build(registry)

    assert registry.exposition() == expected


def test_label_values_escape_backslash_quote_and_newline() -> None:
    registry = Registry()
    c = Counter("c_total", "C.", ["path"], registry=registry)
    c.labels(path='C:\\dir "x"\nnext').inc()

    assert registry.exposition().splitlines()[-1] == r'c_total{path="C:\\dir \"x\"\nnext"} 1.0'


def test_help_escapes_backslash_and_newline_but_not_quotes() -> None:
    registry = Registry()
    Gauge("g", 'a "b"\\c\nd', registry=registry)

    assert registry.exposition().splitlines()[0] == r'# HELP g a "b"\\c\nd'


def test_histogram_buckets_are_cumulative_and_le_is_inclusive() -> None:
    registry = Registry()
    h = Histogram("h", "H.", buckets=[0.1, 1, 10], registry=registry)
    for value in (0.05, 0.1, 0.5, 5, 50):
        h.observe(value)

    lines = registry.exposition().splitlines()[2:]

    assert lines == [
        'h_bucket{le="0.1"} 2.0',
        'h_bucket{le="1.0"} 3.0',
        'h_bucket{le="10.0"} 4.0',
        'h_bucket{le="+Inf"} 5.0',
        "h_sum 55.65",
        "h_count 5.0",
    ]


def test_histogram_defaults_to_latency_buckets_from_a_millisecond_to_ten_seconds() -> None:
    h = Histogram("h", "H.")

    assert h.buckets[0] == 0.001
    assert h.buckets[-2:] == (10.0, math.inf)


@pytest.mark.parametrize(
    ("value", "text"),
    [(1, "1.0"), (0.25, "0.25"), (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN")],
)
def test_values_are_formatted_as_prometheus_parses_them(value: float, text: str) -> None:
    assert format_value(value) == text


def test_a_counter_refuses_to_go_down() -> None:
    with pytest.raises(ValueError, match="only goes up"):
        Counter("c_total", "C.").inc(-1)


def test_labels_must_match_the_declared_names_exactly() -> None:
    c = Counter("c_total", "C.", ["a", "b"])

    with pytest.raises(ValueError, match="takes labels"):
        c.labels(a="1")
    with pytest.raises(ValueError, match=r"use \.labels"):
        c.inc()
    with pytest.raises(ValueError, match="takes labels"):
        Counter("d_total", "D.").labels(a="1")


@pytest.mark.parametrize(
    "make",
    [
        lambda: Counter("1bad", "x"),
        lambda: Counter("bad-name", "x"),
        lambda: Counter("ok", "x", ["bad-label"]),
        lambda: Counter("ok", "x", ["__reserved"]),
        lambda: Counter("ok", "x", ["a", "a"]),
        lambda: Histogram("ok", "x", ["le"]),
        lambda: Histogram("ok", "x", buckets=[1, 0.5]),
        lambda: Histogram("ok", "x", buckets=[]),
    ],
)
def test_invalid_names_and_buckets_are_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 -- each case has its own message
        make()


def test_registering_a_second_family_under_a_taken_name_fails() -> None:
    registry = Registry()
    Counter("c_total", "C.", registry=registry)

    with pytest.raises(ValueError, match="already registered"):
        Gauge("c_total", "C.", registry=registry)


def test_get_or_create_returns_the_registered_family_so_components_can_share_it() -> None:
    registry = Registry()
    first = registry.counter("c_total", "C.", ["queue"])
    second = registry.counter("c_total", "C.", ["queue"])
    first.labels(queue="a").inc()
    second.labels(queue="b").inc()

    assert first is second
    assert registry.get("c_total") is first
    assert registry.exposition().count("c_total{") == 2


def test_get_or_create_refuses_a_different_type_or_label_set() -> None:
    registry = Registry()
    registry.counter("c_total", "C.", ["queue"])

    with pytest.raises(ValueError, match="already registered as counter"):
        registry.gauge("c_total", "C.", ["queue"])
    with pytest.raises(ValueError, match="already registered as counter"):
        registry.counter("c_total", "C.", ["queue", "result"])


def test_unregistered_family_is_not_exposed() -> None:
    registry = Registry()
    c = registry.counter("c_total", "C.")
    registry.unregister(c)

    assert registry.exposition() == ""
