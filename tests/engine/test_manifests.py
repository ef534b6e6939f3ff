"""What a source may contain: parsing, lists, identity, duplicates and namespaces, as data."""

import copy
import gc
import math
import time
from collections.abc import Callable
from textwrap import dedent

import pytest

from aioreconcile.engine.manifests import (
    check_unique,
    default_namespace,
    expand_lists,
    parse_documents,
    parse_json,
)
from aioreconcile.engine.model import JsonObject, Manifest, ManifestError, ObjectRef

SECRET = "hunter2-do-not-print"


def names(manifests: list[Manifest]) -> list[str]:
    return [str(m.ref) for m in manifests]


def manifest(
    kind: str,
    name: str,
    *,
    namespace: str | None = None,
    api_version: str = "v1",
    origin: str = "f.yaml",
) -> Manifest:
    metadata: JsonObject = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    body: JsonObject = {"apiVersion": api_version, "kind": kind, "metadata": metadata}
    return Manifest(ref=ObjectRef.of(body), body=body, origin=origin)


def scope_of(ref: ObjectRef) -> bool | None:
    """Discovery as the tests know it: ConfigMaps namespaced, ClusterRoles not, the rest unknown."""
    return {"ConfigMap": True, "ClusterRole": False, "Namespace": False}.get(ref.kind)


# --- parsing -------------------------------------------------------------------------------------


def test_parses_every_document_in_order_with_its_number_in_the_origin() -> None:
    text = dedent("""\
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: first, namespace: apps}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: second}
        """)

    manifests = parse_documents(text, origin="deploy/app.yaml")

    assert names(manifests) == ["ConfigMap/apps/first", "Deployment.apps/second"]
    assert [m.origin for m in manifests] == [
        "deploy/app.yaml, document 1",
        "deploy/app.yaml, document 2",
    ]
    assert manifests[1].ref.version == "v1"
    assert manifests[0].body["metadata"] == {"name": "first", "namespace": "apps"}


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty file"),
        pytest.param("---\n", id="separator alone"),
        pytest.param("# only a comment\n", id="comment only"),
        pytest.param("---\n# comment\n---\n...\n", id="separators and comments"),
    ],
)
def test_empty_documents_yield_nothing(text: str) -> None:
    assert parse_documents(text, origin="empty.yaml") == []


def test_document_numbers_count_the_empty_documents_a_reader_sees() -> None:
    text = "---\n# nothing here\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n"

    [only] = parse_documents(text, origin="f.yaml")

    assert only.origin == "f.yaml, document 2"


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        pytest.param(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}},
                    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "b"}},
                ],
            },
            ["ConfigMap/a", "Secret/b"],
            id="List",
        ),
        pytest.param(
            {
                "apiVersion": "v1",
                "kind": "ConfigMapList",
                "items": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}],
            },
            ["ConfigMap/a"],
            id="typed list",
        ),
        pytest.param(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [
                    {
                        "apiVersion": "v1",
                        "kind": "List",
                        "items": [
                            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "n"}}
                        ],
                    }
                ],
            },
            ["ConfigMap/n"],
            id="nested lists",
        ),
        pytest.param({"apiVersion": "v1", "kind": "List", "items": None}, [], id="items null"),
        pytest.param({"apiVersion": "v1", "kind": "List", "items": []}, [], id="items empty"),
        pytest.param(
            {"apiVersion": "example.com/v1", "kind": "AllowList", "metadata": {"name": "x"}},
            ["AllowList.example.com/x"],
            id="a kind ending in List without items is an object",
        ),
    ],
)
def test_lists_stand_for_their_items(document: JsonObject, expected: list[str]) -> None:
    expanded = expand_lists(document, origin="f.yaml")

    assert [str(ObjectRef.of(obj)) for obj, _ in expanded] == expected


def test_list_items_carry_their_position_in_the_origin() -> None:
    text = dedent("""\
        apiVersion: v1
        kind: List
        items:
        - {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}
        - {apiVersion: v1, kind: ConfigMap}
        """)

    with pytest.raises(ManifestError) as caught:
        parse_documents(text, origin="list.yaml")

    assert str(caught.value) == "list.yaml, document 1, items[1]: missing metadata"


def test_list_items_that_are_not_objects_are_refused() -> None:
    with pytest.raises(ManifestError, match=r"items\[0\]: expected an object, found a string"):
        expand_lists({"apiVersion": "v1", "kind": "List", "items": [SECRET]}, origin="f.yaml")


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        pytest.param(
            "kind: ConfigMap\nmetadata: {name: a}\n", "missing apiVersion", id="apiVersion"
        ),
        pytest.param("apiVersion: v1\nmetadata: {name: a}\n", "missing kind", id="kind"),
        pytest.param("apiVersion: v1\nkind: ConfigMap\n", "missing metadata", id="metadata"),
        pytest.param(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {labels: {a: b}}\n",
            "missing metadata.name",
            id="metadata.name",
        ),
        pytest.param(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ''}\n",
            "missing metadata.name",
            id="empty name",
        ),
    ],
)
def test_objects_without_an_identity_are_refused_naming_the_field(text: str, missing: str) -> None:
    good = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\n"

    with pytest.raises(ManifestError) as caught:
        parse_documents(good + text, origin="apps/web.yaml")

    assert str(caught.value) == f"apps/web.yaml, document 2: {missing}"


@pytest.mark.parametrize(
    ("text", "found"),
    [
        pytest.param(f"- {SECRET}\n", "a list", id="list"),
        pytest.param(f"{SECRET}\n", "a string", id="text"),
        pytest.param("42\n", "a number", id="number"),
    ],
)
def test_documents_that_are_not_objects_are_refused_without_quoting_them(
    text: str, found: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_documents(text, origin="f.yaml")

    assert str(caught.value) == f"f.yaml, document 1: expected an object, found {found}"


@pytest.mark.parametrize(
    ("text", "document", "line"),
    [
        pytest.param(f"password: [{SECRET}\n", 1, 2, id="unclosed flow sequence"),
        pytest.param(
            f"apiVersion: v1\n---\nkind: Secret\n  data: {SECRET}\n", 2, 4, id="bad indentation"
        ),
        pytest.param(f"a: 1\n---\nb: 2\n---\n\tpassword: {SECRET}\n", 3, 5, id="tab in document 3"),
        pytest.param(f"@{SECRET}: 1\n", 1, 1, id="bad first character"),
        pytest.param(f"a: 1\n---\nb: {SECRET}\x07\n", 2, 3, id="control character"),
        pytest.param(f"a: 1\na: {SECRET}\n", 1, 2, id="duplicate key"),
        pytest.param(f"a: !vault {SECRET}\n", 1, 1, id="unknown tag"),
    ],
)
def test_yaml_errors_name_file_document_and_line_but_not_the_content(
    text: str, document: int, line: int
) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_documents(text, origin="secrets/db.yaml")

    message = str(caught.value)
    assert message.startswith(f"secrets/db.yaml: document {document}, line {line}: ")
    assert SECRET not in message
    assert caught.value.__suppress_context__  # PyYAML's own message quotes the line


def test_duplicate_keys_are_named() -> None:
    with pytest.raises(ManifestError, match="duplicate key 'name'"):
        parse_documents("metadata:\n  name: a\n  name: b\n", origin="f.yaml")


def test_merge_keys_may_be_overridden() -> None:
    text = dedent("""\
        base: &base {name: from-base, keep: yes}
        apiVersion: v1
        kind: ConfigMap
        metadata:
          <<: *base
          name: own
        """)

    [only] = parse_documents(text, origin="f.yaml")

    assert only.body["metadata"] == {"name": "own", "keep": True}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        pytest.param("data:\n  1: a\n  '1': b\n", "duplicate key '1'", id="int and string key"),
        pytest.param("data:\n  true: a\n  'true': b\n", "duplicate key 'true'", id="bool key"),
        pytest.param("data:\n  [a]: b\n", "found unhashable key", id="list as a key"),
    ],
)
def test_keys_that_collide_as_json_keys_are_refused(text: str, error: str) -> None:
    with pytest.raises(ManifestError, match=error):
        parse_documents("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n" + text, origin="f")


def test_a_merged_key_keeps_its_place_when_overridden() -> None:
    """As YAML's merge reads it (PyYAML's ``flatten_mapping``): merged keys first, own keys
    override them in place; the engine's one-pass constructor must give the same map."""
    text = dedent("""\
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: a}
        data:
          <<: [{first: "1", second: "2"}, {third: "3"}]
          own: "4"
          second: "5"
        """)

    [only] = parse_documents(text, origin="f.yaml")

    assert list(only.body["data"].items()) == [
        ("first", "1"),
        ("second", "5"),
        ("third", "3"),
        ("own", "4"),
    ]


def test_values_are_read_as_the_api_reads_them() -> None:
    """Timestamps stay text and scalar keys become strings, so every body is JSON."""
    text = dedent("""\
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: tcp-services}
        data:
          9000: default/app:8080
          true: yes-key
          since: 2024-01-02
        """)

    [only] = parse_documents(text, origin="f.yaml")

    assert only.body["data"] == {
        "9000": "default/app:8080",
        "true": "yes-key",
        "since": "2024-01-02",
    }


# --- JSON ----------------------------------------------------------------------------------------


def test_json_files_hold_one_object_or_a_list() -> None:
    single = '{\n\t"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}\n}'
    listed = (
        '{"apiVersion": "v1", "kind": "List", "items": '
        '[{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}]}'
    )

    assert names(parse_json(single, origin="a.json")) == ["ConfigMap/a"]
    [item] = parse_json(listed, origin="b.json")
    assert (str(item.ref), item.origin) == ("Secret/s", "b.json, items[0]")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            f'{{\n  "password": "{SECRET}",\n  oops\n}}',
            "c.json: line 3, column 3: Expecting property name enclosed in double quotes",
            id="syntax",
        ),
        pytest.param('{"a": 1, "a": 2}', "c.json: duplicate key 'a'", id="duplicate key"),
        pytest.param(f'["{SECRET}"]', "c.json: expected an object, found a list", id="not object"),
    ],
)
def test_json_errors_name_file_and_position(text: str, expected: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_json(text, origin="c.json")

    assert str(caught.value) == expected


# --- duplicates ----------------------------------------------------------------------------------


def test_an_object_defined_twice_names_both_origins() -> None:
    first = manifest("ConfigMap", "app", namespace="web", origin="a.yaml, document 1")
    second = manifest("ConfigMap", "app", namespace="web", origin="b/c.yaml, document 3")

    with pytest.raises(ManifestError) as caught:
        check_unique([first, second])

    assert str(caught.value) == (
        "ConfigMap/web/app is defined twice: in a.yaml, document 1 and in b/c.yaml, document 3"
    )


def test_the_same_object_at_another_api_version_is_still_a_duplicate() -> None:
    old = manifest("Deployment", "web", api_version="apps/v1beta1", origin="old.yaml")
    new = manifest("Deployment", "web", api_version="apps/v1", origin="new.yaml")

    with pytest.raises(ManifestError, match=r"in old\.yaml and in new\.yaml"):
        check_unique([old, new])


@pytest.mark.parametrize(
    "others",
    [
        pytest.param([manifest("ConfigMap", "app", namespace="other")], id="other namespace"),
        pytest.param([manifest("Secret", "app", namespace="web")], id="other kind"),
        pytest.param(
            [manifest("ConfigMap", "app", namespace="web", api_version="example.com/v1")],
            id="other group",
        ),
    ],
)
def test_same_name_elsewhere_is_not_a_duplicate(others: list[Manifest]) -> None:
    check_unique([manifest("ConfigMap", "app", namespace="web"), *others])


# --- namespaces ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "target", "expected"),
    [
        pytest.param(manifest("ConfigMap", "a"), "apps", "ConfigMap/apps/a", id="defaulted"),
        pytest.param(
            manifest("ConfigMap", "a", namespace="own"), "apps", "ConfigMap/own/a", id="kept"
        ),
        pytest.param(manifest("ConfigMap", "a"), None, "ConfigMap/a", id="no target namespace"),
        pytest.param(
            manifest("ClusterRole", "r", api_version="rbac.authorization.k8s.io/v1"),
            "apps",
            "ClusterRole.rbac.authorization.k8s.io/r",
            id="cluster-scoped",
        ),
        pytest.param(
            manifest("Widget", "w", api_version="example.com/v1"),
            "apps",
            "Widget.example.com/w",
            id="unknown kind left for later",
        ),
    ],
)
def test_namespaced_objects_default_to_the_target_namespace(
    given: Manifest, target: str | None, expected: str
) -> None:
    [result] = default_namespace([given], target, is_namespaced=scope_of)

    assert str(result.ref) == expected
    assert result.body["metadata"].get("namespace", "") == result.ref.namespace
    assert result.origin == given.origin


def test_defaulting_copies_and_never_mutates_the_input() -> None:
    given = manifest("ConfigMap", "a")
    before = copy.deepcopy(given.body)

    [result] = default_namespace([given], "apps", is_namespaced=scope_of)

    assert given.body == before
    assert given.ref.namespace == ""
    assert result.body == {**before, "metadata": {"name": "a", "namespace": "apps"}}


def test_a_cluster_scoped_object_with_a_namespace_is_refused_naming_it_and_its_file() -> None:
    given = manifest(
        "ClusterRole",
        "reader",
        namespace="apps",
        api_version="rbac.authorization.k8s.io/v1",
        origin="rbac.yaml, document 2",
    )

    with pytest.raises(ManifestError) as caught:
        default_namespace([given], "apps", is_namespaced=scope_of)

    assert str(caught.value) == (
        "rbac.yaml, document 2: ClusterRole.rbac.authorization.k8s.io/reader is cluster-scoped, "
        "but sets metadata.namespace 'apps'"
    )


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        pytest.param("Namespaced", "Widget.example.com/apps/w", id="namespaced"),
        pytest.param("Cluster", "Widget.example.com/w", id="cluster"),
    ],
)
def test_a_crd_in_the_same_source_decides_the_scope_of_its_kind(scope: str, expected: str) -> None:
    crd_body: JsonObject = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "names": {"kind": "Widget"}, "scope": scope},
    }
    crd = Manifest(ref=ObjectRef.of(crd_body), body=crd_body, origin="crd.yaml")
    widget = manifest("Widget", "w", api_version="example.com/v1")

    _, result = default_namespace([crd, widget], "apps", is_namespaced=scope_of)

    assert str(result.ref) == expected


def test_discovery_wins_over_a_crd_in_the_source() -> None:
    crd_body: JsonObject = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "configmaps.example"},
        "spec": {"group": "", "names": {"kind": "ConfigMap"}, "scope": "Cluster"},
    }
    crd = Manifest(ref=ObjectRef.of(crd_body), body=crd_body, origin="crd.yaml")

    _, result = default_namespace([crd, manifest("ConfigMap", "a")], "apps", is_namespaced=scope_of)

    assert str(result.ref) == "ConfigMap/apps/a"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A List whose items hold the List itself: expanding it never ended (RecursionError).
        (
            "apiVersion: v1\nkind: List\n"
            "items: &items [{apiVersion: v1, kind: List, items: *items}]",
            "app.yaml: document 1: a YAML alias refers to a node that contains it",
        ),
        # An object that contains itself: it parsed, and every later step that walks it would
        # never end.
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: &d {k: *d}\n",
            "app.yaml: document 1: a YAML alias refers to a node that contains it",
        ),
        (
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n"
            "apiVersion: v1\nkind: ConfigMap\nmetadata: &m {name: b, labels: {x: *m}}\n",
            "app.yaml: document 2: a YAML alias refers to a node that contains it",
        ),
    ],
)
def test_a_document_that_contains_itself_is_refused_naming_it(text: str, expected: str) -> None:
    """Found while writing fuzz.manifests (its seeds now carry such a List)."""
    with pytest.raises(ManifestError) as caught:
        parse_documents(text, origin="app.yaml")
    assert str(caught.value).startswith(expected)


def test_an_alias_that_repeats_a_node_is_still_read() -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {a: &v x, b: *v}\n"
    (manifest,) = parse_documents(text, origin="app.yaml")
    assert manifest.body["data"] == {"a": "x", "b": "x"}


def test_json_nested_too_deeply_is_a_manifest_error() -> None:
    """Found while writing fuzz.manifests: json's RecursionError escaped parse_json."""
    with pytest.raises(ManifestError, match=r"^app\.json: nested too deeply"):
        parse_json("[" * 100_000, origin="app.json")


def test_aliases_shared_many_times_are_checked_once_each() -> None:
    """The cycle check walks each node once: a document that aliases one list 2**24 times over
    (each level two aliases of the one below) is read at once, not walked path by path."""
    levels = ["l0: &l0 [x, y]"] + [f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, 25)]
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\nx:\n" + "".join(
        f"  {line}\n" for line in levels
    )
    began = time.monotonic()
    (manifest,) = parse_documents(text, origin="app.yaml")
    assert time.monotonic() - began < 1.0
    assert manifest.ref.name == "a"


# --- what a render holds between the parse and the apply (issue 14, the idle memory) ----------

REALISTIC_STREAM = "---\n".join(
    dedent(
        f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: web-{i}
          namespace: shop
          labels: {{app: web-{i}, tier: front}}
        spec:
          replicas: 2
          selector: {{matchLabels: {{app: web-{i}}}}}
          template:
            metadata: {{labels: {{app: web-{i}}}}}
            spec:
              containers:
              - name: web
                image: registry.example/web:{i}
                env: [{{name: A, value: "1"}}, {{name: B, value: "2"}}]
                ports: [{{containerPort: 8080, name: http}}, {{containerPort: 9090}}]
                resources: {{limits: {{cpu: 500m}}, requests: {{cpu: 100m}}}}
        """
    )
    for i in range(100)
)


def test_parsed_manifests_hold_no_parsed_containers_between_reads() -> None:
    """A render's manifests are held from the parse to the end of the apply: as dicts and
    lists, their bodies were millions of small objects at 10,000 objects, among which the
    long-lived ones made meanwhile pinned the allocator's arenas. Each is now one ``bytes``
    (docs/controller-benchmarks.md, 2026-12-01, issue 14). Counted by the collector, which
    tracks every dict and list: per manifest, the manifest, its ``__dict__`` and its ref."""
    gc.collect()
    before = len(gc.get_objects())
    manifests = parse_documents(REALISTIC_STREAM, origin="app.yaml")
    gc.collect()
    held = len(gc.get_objects()) - before
    assert len(manifests) == 100
    assert held / len(manifests) < 5


def test_a_body_read_is_a_copy_that_a_reader_may_change() -> None:
    (manifest,) = parse_documents(REALISTIC_STREAM.split("---\n")[0], origin="app.yaml")
    read = manifest.body
    read["spec"]["replicas"] = 5
    read["metadata"]["labels"]["tier"] = "changed"
    assert manifest.body["spec"]["replicas"] == 2
    assert manifest.body["metadata"]["labels"] == {"app": "web-0", "tier": "front"}


@pytest.mark.parametrize(
    ("value", "check"),
    [
        (".nan", lambda v: isinstance(v, float) and math.isnan(v)),
        (".inf", lambda v: v == math.inf),
        ("1180591620717411303424", lambda v: v == 2**70),  # beyond 64 bits
        ("-0.0", lambda v: v == 0.0 and math.copysign(1.0, v) == -1.0),
        ("2026-12-01T15:00:00Z", lambda v: v == "2026-12-01T15:00:00Z"),
        ("0x1F", lambda v: v == 31 and type(v) is int),
        ("true", lambda v: v is True),
    ],
)
def test_values_json_cannot_carry_exactly_read_back_as_parsed(
    value: str, check: Callable[[object], bool]
) -> None:
    """Such a body is kept as parsed, not packed (JSON has no NaN nor infinity, orjson no
    integer beyond 64 bits); every read gives back what YAML read, twice over."""
    text = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: a}}\nx: {value}\n"
    (manifest,) = parse_documents(text, origin="app.yaml")
    assert check(manifest.body["x"])
    assert check(manifest.body["x"])


def test_a_defaulted_namespace_is_in_every_read_of_the_body() -> None:
    (parsed,) = parse_documents(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: v}\n", origin="a.yaml"
    )
    (defaulted,) = default_namespace([parsed], "team", is_namespaced=scope_of)
    assert defaulted.defaulted
    for _ in range(2):
        assert defaulted.body == {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "team"},
            "data": {"k": "v"},
        }
    assert parsed.body["metadata"] == {"name": "a"}
