"""The CRDs and the `run --config` file format stay one model: every key the file accepts has a
counterpart in the CRD schema, every CRD field comes from the file format or is listed below as
CRD-only, and the CRD's defaults mean what the file format's defaults mean.

The file format's keys are read from the parser itself (`parse_config` names the known keys of
every mapping when it meets an unknown one), so a key added there is seen here without a list
to keep in step.
"""

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aioreconcile.engine.configuration import ConfigError, parse_config

CRDS = Path(__file__).resolve().parents[2] / "charts" / "aioreconcile" / "crds"
PROBE = "zz-probe"

Tree = dict[str, "Tree"]
Wrap = Callable[[object], object]

# File keys whose CRD counterpart has another name or shape. Secrets are files and environment
# variables in the file format, and objects in the CRD's namespace (secretRef, configMapRef)
# whose keys are documented in docs/crds.md; a file key under one of these maps to that object.
SYNC_RENAMED: dict[str, tuple[str, ...]] = {
    "name": ("metadata.name",),
    # A Sync's labels (what a Receiver's selector matches) are its metadata.labels.
    "labels": ("metadata.labels",),
    "serviceAccount": ("spec.serviceAccountName",),  # the Kubernetes spelling, as in Pods and Flux
    "source.auth": ("spec.source.secretRef",),  # username/password or identity/known_hosts keys
    "source.verify.keyringFile": (
        "spec.source.verify.secretRef",
        "spec.source.verify.configMapRef",
    ),
    "source.verify.allowedSignersFile": (
        "spec.source.verify.secretRef",
        "spec.source.verify.configMapRef",
    ),
}
RECEIVER_RENAMED: dict[str, tuple[str, ...]] = {
    "name": ("metadata.name",),
    "secretEnv": ("spec.secretRef",),  # the Secret's `token` key
    "secretFile": ("spec.secretRef",),
}

# CRD fields with no file-format key (yet). Each says why; remove an entry when the file format
# gains the key (the test does not insist, so the two changes need not land together).
SYNC_CRD_ONLY = {
    # Order between Syncs: a cluster feature (issue 10), as Flux's Kustomization dependsOn.
    "spec.dependsOn",
    # Public keys may sit in a ConfigMap; the file format reads keyringFile/allowedSignersFile.
    "spec.source.verify.configMapRef",
}
RECEIVER_CRD_ONLY = {
    # The file format's selector is matchLabels only; the CRD takes a whole
    # metav1.LabelSelector. The CRD mode must carry matchExpressions into the model before it
    # may accept them (no parsed-but-ignored field).
    "spec.selector.matchExpressions",
}


def _known_keys(document: object, where: str) -> set[str] | None:
    """The keys the parser accepts in the mapping at ``where``, or None if it is no mapping."""
    try:
        parse_config(yaml.safe_dump(document), origin="probe")
    except ConfigError as e:
        probe = f"{where}.{PROBE}" if where else PROBE
        for problem in e.problems:
            found = re.fullmatch(rf"{re.escape(probe)}: unknown field \(known: (.*)\)", problem)
            if found:
                return set(found[1].split(", "))
    return None


def _file_keys(wrap: Wrap, where: str) -> Tree:
    """Every key accepted at ``where`` and, for mappings and lists of mappings, below it."""
    keys = _known_keys(wrap({PROBE: 1}), where)
    assert keys is not None, f"{where} is not a mapping the parser checks"
    tree: Tree = {}
    for key in sorted(keys):
        here = f"{where}.{key}" if where else key

        def as_mapping(value: object, key: str = key) -> object:
            return wrap({key: value})

        def as_list(value: object, key: str = key) -> object:
            return wrap({key: [value]})

        if _known_keys(as_mapping({PROBE: 1}), here) is not None:
            tree[key] = _file_keys(as_mapping, here)
        elif _known_keys(as_list({PROBE: 1}), f"{here}[0]") is not None:
            tree[key] = _file_keys(as_list, f"{here}[0]")
        else:
            tree[key] = {}
    return tree


def _paths(tree: Tree, prefix: str = "") -> Iterator[str]:
    for key, below in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        yield path
        yield from _paths(below, path)


def _schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / f"{kind}.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _crd_fields(schema: dict[str, Any], prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property below ``schema`` with its own schema; array items count as the array."""
    while schema.get("type") == "array":
        schema = schema["items"]
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{key}"
        yield path, sub
        yield from _crd_fields(sub, path)


def _spec_fields(kind: str) -> dict[str, dict[str, Any]]:
    return dict(_crd_fields(_schema(kind)["properties"]["spec"], "spec"))


def _counterparts(path: str, renamed: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    for prefix in sorted(renamed, key=len, reverse=True):
        if path == prefix or path.startswith(f"{prefix}."):
            return renamed[prefix]
    return (f"spec.{path}",)


def _covered(path: str, prefixes: set[str]) -> bool:
    return any(path == p or path.startswith(f"{p}.") for p in prefixes)


def _sync_file_keys() -> Tree:
    return _file_keys(lambda item: {"syncs": [item]}, "syncs[0]")


def _receiver_file_keys() -> Tree:
    return _file_keys(lambda item: {"receivers": [item]}, "receivers[0]")


CASES = [
    pytest.param(_sync_file_keys, "syncs", SYNC_RENAMED, SYNC_CRD_ONLY, id="Sync"),
    pytest.param(
        _receiver_file_keys, "receivers", RECEIVER_RENAMED, RECEIVER_CRD_ONLY, id="Receiver"
    ),
]


def test_probing_finds_the_nested_keys_of_the_file_format() -> None:
    keys = set(_paths(_sync_file_keys()))

    assert {"source.url", "source.auth.sshKeyFile", "source.verify.mode", "render.type"} <= keys


@pytest.mark.parametrize(("file_keys", "kind", "renamed", "crd_only"), CASES)
def test_every_file_key_has_a_counterpart_in_the_crd(
    file_keys: Callable[[], Tree],
    kind: str,
    renamed: dict[str, tuple[str, ...]],
    crd_only: set[str],
) -> None:
    fields = _spec_fields(kind)
    missing = [
        f"{path} -> {target}"
        for path in _paths(file_keys())
        for target in _counterparts(path, renamed)
        if not target.startswith("metadata.") and target not in fields
    ]

    assert missing == []


@pytest.mark.parametrize(("file_keys", "kind", "renamed", "crd_only"), CASES)
def test_every_crd_field_comes_from_the_file_format_or_is_listed_as_crd_only(
    file_keys: Callable[[], Tree],
    kind: str,
    renamed: dict[str, tuple[str, ...]],
    crd_only: set[str],
) -> None:
    fields = _spec_fields(kind)
    from_file = {t for path in _paths(file_keys()) for t in _counterparts(path, renamed)}
    renamed_targets = {t for targets in renamed.values() for t in targets}

    unexplained = [
        path
        for path in fields
        if path not in from_file and not _covered(path, renamed_targets | crd_only)
    ]

    assert unexplained == []
    assert [p for p in crd_only if p not in fields] == [], "a CRD-only entry names no CRD field"


def _leaf_defaults(kind: str) -> dict[str, object]:
    return {
        path: sub["default"]
        for path, sub in _spec_fields(kind).items()
        if "default" in sub and sub.get("type") != "object"
    }


def _place(document: dict[str, Any], path: str, value: object) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        document = document.setdefault(key, {})
    document[leaf] = value


def _minimal() -> dict[str, list[dict[str, Any]]]:
    """The smallest valid file: one sync and one receiver, everything else left to defaults."""
    receiver: dict[str, Any] = {"name": "github", "provider": "github", "secretEnv": "X"}
    if "syncs" in _receiver_file_keys():
        receiver["syncs"] = ["shop"]  # once the file format has it, naming the syncs is required
    sync = {"name": "shop", "source": {"url": "https://git.example.com/a.git"}}
    return {"syncs": [sync], "receivers": [receiver]}


@pytest.mark.parametrize(
    ("kind", "crd_only"), [("syncs", SYNC_CRD_ONLY), ("receivers", RECEIVER_CRD_ONLY)]
)
def test_crd_defaults_mean_the_file_format_defaults(kind: str, crd_only: set[str]) -> None:
    defaults = {p: v for p, v in _leaf_defaults(kind).items() if not _covered(p, crd_only)}
    assert defaults, "the CRD declares no defaults"
    minimal = _minimal()
    explicit = _minimal()
    for path, value in defaults.items():
        _place(explicit[kind][0], path.removeprefix("spec."), value)

    implied = parse_config(yaml.safe_dump(minimal), origin="implied")
    spelled_out = parse_config(yaml.safe_dump(explicit), origin="spelled-out")

    assert spelled_out == implied
