"""Property tests over the pure inputs, run in every test run: the same targets and the same
invariant as the atheris harnesses in ``fuzz/`` (docs/reliability.md#fuzzing), driven by
hypothesis instead of coverage feedback.

Whatever a webhook sender, a commit or a configuration file holds, the reader returns or raises
our own error naming the input, and never quotes a credential (``fuzz.harness.check_error``).
Inputs are built from the real payloads and documents the tests hold, with values replaced by
arbitrary JSON, keys renamed and text spliced in, so the examples reach deep into each parser
rather than failing at its first check. Bounded and derandomized: the same examples every run.
"""

import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aioreconcile.engine.config import Provider
from fuzz import config as config_target
from fuzz import manifests as manifests_target
from fuzz import webhook as webhook_target
from fuzz.harness import FIXTURES, PLANTED

BOUNDED = settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(["refs/heads/main", "0" * 40, "push", f"https://bot:{PLANTED}@h/x.git"])
)
JSON_VALUES = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


# Half leaves, half containers: a parser that expects a string is most often broken by an
# object or a list where the string should be.
REPLACEMENTS = st.one_of(
    LEAVES,
    st.lists(LEAVES, max_size=3) | st.dictionaries(st.text(max_size=8), LEAVES, max_size=3),
    JSON_VALUES,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value a mutation can replace."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replaced(value[path[0]], path[1:], new)
    return copy


@st.composite
def mutated(draw: st.DrawFn, document: Any) -> Any:
    """``document`` with one to three of its values replaced by arbitrary JSON (half of them
    top-level fields)."""
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(document)
        if draw(st.booleans()):  # half the time a top-level field: what a parser reads first
            paths = [p for p in paths if len(p) == 1] or paths
        path = draw(st.sampled_from(paths))
        document = _replaced(document, path, draw(REPLACEMENTS))
    return document


_DELIVERIES = [
    json.loads(path.read_text()) for path in sorted((FIXTURES / "webhooks").glob("*.json"))
]


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[Provider, dict[str, str], bytes]:
    provider = draw(st.sampled_from(sorted({c["provider"] for c in _DELIVERIES})))
    case = draw(st.sampled_from([c for c in _DELIVERIES if c["provider"] == provider]))
    headers = dict(case["headers"])
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(headers)))
        headers[name] = draw(st.text(max_size=30).map(lambda t: t.replace("\n", " ")))
    payload = draw(mutated(case["payload"]))
    body = json.dumps(payload).encode()
    if draw(st.integers(0, 9)) == 0:
        body = draw(st.binary(max_size=200))
    return Provider(case["provider"]), headers, body


@settings(BOUNDED, max_examples=400)  # cheap (about 2 ms each), and six providers to cover
@given(deliveries())
def test_a_delivery_is_parsed_or_refused_with_a_webhook_error(
    delivery: tuple[Provider, dict[str, str], bytes],
) -> None:
    webhook_target.exercise(*delivery)


@BOUNDED
@given(st.binary(max_size=400))
def test_any_bytes_as_a_delivery_never_raise_anything_else(data: bytes) -> None:
    webhook_target.test_one_input(data)


def _documents() -> list[Any]:
    found = []
    for path in sorted(FIXTURES.rglob("*.yaml")):
        case = yaml.safe_load(path.read_text())
        if isinstance(case, dict):
            found += [case[k] for k in ("object", "desired", "live") if k in case]
    return found


_OBJECTS = _documents()


@st.composite
def manifest_texts(draw: st.DrawFn) -> tuple[str, str]:
    objects = [
        draw(mutated(draw(st.sampled_from(_OBJECTS)))) for _ in range(draw(st.integers(1, 3)))
    ]
    if draw(st.booleans()):
        objects = [
            {
                "apiVersion": "v1",
                "kind": draw(st.sampled_from(["List", "ConfigMapList"])),
                "items": objects,
            }
        ]
    mode = draw(st.sampled_from(["yaml", "json", "helm"]))
    if mode == "json":
        text = json.dumps(objects[0])
    else:
        text = yaml.safe_dump_all(objects)
        if mode == "helm":
            text = "---\n# Source: app/templates/x.yaml\n" + text
    if draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(max_size=10)) + text[at:]
    return mode, text


@BOUNDED
@given(manifest_texts())
def test_a_document_is_read_or_refused_naming_the_file(case: tuple[str, str]) -> None:
    manifests_target.exercise(*case)


_KUSTOMIZATION_KEYS = [
    "resources",
    "bases",
    "components",
    "patches",
    "configMapGenerator",
    "helmCharts",
    "images",
]


@st.composite
def trees(draw: st.DrawFn) -> str:
    directories = ["app", "base", "app/overlay", "..", "../outside", "/abs"]
    files = []
    for directory in draw(
        st.lists(st.sampled_from(directories[:3]), min_size=1, max_size=3, unique=True)
    ):
        content = {
            key: draw(
                st.lists(
                    st.sampled_from([*directories, "a.yaml", "x=y", "https://h/r", ""])
                    | st.text(max_size=8),
                    max_size=3,
                )
            )
            for key in draw(st.lists(st.sampled_from(_KUSTOMIZATION_KEYS), max_size=3, unique=True))
        }
        name = draw(st.sampled_from(["kustomization.yaml", "Kustomization", "Chart.yaml"]))
        text = yaml.safe_dump(content) if draw(st.integers(0, 5)) else draw(st.text(max_size=30))
        files.append(f"=== {directory}/{name}\n{text}")
    return "".join(files)


@BOUNDED
@given(trees())
def test_which_files_a_sync_reads_never_raises(tree: str) -> None:
    manifests_target.exercise("tree", tree)


@BOUNDED
@given(st.binary(max_size=400))
def test_any_bytes_as_a_manifest_or_tree_never_raise_anything_else(data: bytes) -> None:
    manifests_target.test_one_input(data)


_FILE = yaml.safe_load(config_target._FILE)
_SYNC = yaml.safe_load(config_target._SYNC)
_RECEIVER = yaml.safe_load(config_target._RECEIVER)


@BOUNDED
@given(
    st.sampled_from(["file", "sync", "receiver"]).flatmap(
        lambda mode: st.tuples(
            st.just(mode), mutated({"file": _FILE, "sync": _SYNC, "receiver": _RECEIVER}[mode])
        )
    )
)
def test_a_configuration_is_read_or_refused_naming_file_and_field(case: tuple[str, Any]) -> None:
    mode, document = case
    config_target.exercise(mode, yaml.safe_dump(document))


@BOUNDED
@given(st.binary(max_size=400))
def test_any_bytes_as_a_configuration_never_raise_anything_else(data: bytes) -> None:
    config_target.test_one_input(data)


def test_the_targets_seed_from_the_payloads_the_tests_hold() -> None:
    """The harnesses' seeds are the test fixtures, not a copy that could drift from them."""
    assert len(list(webhook_target.seeds())) == 2 * len(_DELIVERIES)
    assert len(list(manifests_target.seeds())) > len(_OBJECTS)
    assert Path(FIXTURES).is_dir()
