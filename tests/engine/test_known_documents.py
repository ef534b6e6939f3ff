"""A push parses only the documents whose text changed (``KnownDocuments``): the split is the
parser's, and what comes out is what a full parse gives, edited or not."""

import sys
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aioreconcile.engine.manifests import (
    KnownDocuments,
    default_namespace,
    known_documents,
    parse_documents,
)
from aioreconcile.engine.model import Manifest, ManifestError, ObjectRef


def cm(name: str, namespace: str | None = None, value: str = "1") -> str:
    ns = f"\n  namespace: {namespace}" if namespace else ""
    return (
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}{ns}\ndata:\n  v: '{value}'\n"
    )


def scope(ref: ObjectRef) -> bool | None:
    return {"ConfigMap": True, "Namespace": False}.get(ref.kind)


def render(text: str, known: KnownDocuments | None, namespace: str = "apps") -> list[Manifest]:
    return default_namespace(
        parse_documents(text, origin="f.yaml", known=known), namespace, is_namespaced=scope
    )


def seen(manifests: list[Manifest]) -> list[tuple[ObjectRef, object, str]]:
    return [(m.ref, m.body, m.origin) for m in manifests]


def table_after(text: str, namespace: str = "apps") -> KnownDocuments:
    return known_documents(render(text, KnownDocuments(), namespace))


@pytest.mark.parametrize(
    ("stream", "plain"),
    [
        ("a: 1\n", True),
        ("# only a comment\n---\na: 1\n---\nb: 2\n", True),
        ("---\n---\na: 1\n", True),
        ("--- |\n  a block\n", True),
        ("a: 1\r\n---\r\nb: 2\r\n", False),  # CR: YAML breaks lines there too
        ("%YAML 1.1\n---\na: 1\n", False),  # a directive
        ("a: 1\n...\n---\nb: 2\n", False),  # a document end
        ("a: 1\n---x\n", False),  # ``---`` glued to text is no separator
        ("\ufeffa: 1\n", False),  # a BOM
        ("a: 1\u2028b: 2\n", False),
    ],
)
def test_only_plain_streams_are_split_otherwise_the_whole_stream_is_parsed(
    stream: str, plain: bool
) -> None:
    from aioreconcile.engine.manifests import _split

    assert (_split(stream) is not None) is plain


@pytest.mark.parametrize(
    ("before", "after", "parsed", "reused"),
    [
        (cm("a") + "---\n" + cm("b"), cm("a") + "---\n" + cm("b", value="2"), 1, 1),
        (cm("a") + "---\n" + cm("b"), "---\n" + cm("b") + "---\n" + cm("a"), 1, 1),  # moved
        (cm("a") + "---\n" + cm("b"), cm("a") + "---\n" + cm("b"), 0, 2),
        (cm("a"), "kind: List\napiVersion: v1\nitems:\n- " + cm("a").replace("\n", "\n  "), 1, 0),
        (cm("a") + "---\n" + cm("b"), "%YAML 1.1\n---\n" + cm("a") + "---\n" + cm("b"), 2, 0),
    ],
)
def test_a_document_whose_text_is_known_is_not_parsed_again(
    before: str, after: str, parsed: int, reused: int
) -> None:
    known = table_after(before)
    assert seen(render(after, known)) == seen(render(after, None))
    assert (known.parsed, known.reused) == (parsed, reused)


def test_a_known_document_whose_namespace_default_changed_comes_out_as_a_full_parse_says() -> None:
    text = cm("a") + "---\n" + cm("b", namespace="other")
    known = table_after(text, namespace="apps")
    assert seen(render(text, known, namespace="prod")) == seen(render(text, None, "prod"))
    assert [str(m.ref.namespace) for m in render(text, known, "prod")] == ["prod", "other"]


def test_an_error_in_a_changed_document_names_it_as_a_full_parse_does() -> None:
    known = table_after(cm("a") + "---\n" + cm("b"))
    broken = cm("a") + "---\n" + cm("b") + "---\nkind: [\n"
    with pytest.raises(ManifestError) as full:
        parse_documents(broken, origin="f.yaml")
    with pytest.raises(ManifestError) as cached:
        parse_documents(broken, origin="f.yaml", known=known)
    assert str(cached.value) == str(full.value)
    assert "document 3" in str(cached.value)


def test_the_table_keeps_no_body_and_about_100_bytes_a_document() -> None:
    """Allocated while it is built and kept by it (digests and the dict; the refs are the
    Manifests', the ones ``SyncState.digests`` keys by): every namespace defaulted, the worst."""
    text = "---\n".join(cm(f"cm-{i}") for i in range(1000))
    manifests = render(text, KnownDocuments())
    tracemalloc.start()
    known = known_documents(manifests)
    table, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    digests = sum(sys.getsizeof(source) for source in known.refs)
    assert len(known.refs) == len(known.defaulted) == 1000
    assert (table + digests) / 1000 < 130


PIECES = st.sampled_from(
    [
        cm("a"),
        cm("a", value="2"),
        cm("b"),
        cm("b", namespace="x"),
        cm("c", namespace="apps"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: n, namespace: x}\n",
        "kind: List\napiVersion: v1\nitems:\n- " + cm("d").replace("\n", "\n  "),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: &m {name: e}\ndata: *m\n",
        "# comment\n",
        "\n",
        "null\n",
        "key: |\n  text\n",
        "kind: [\n",
        "- 1\n",
        "'---'\n",
    ]
)
SEPARATORS = st.sampled_from(["---\n", "--- \n", "", "...\n", "---x\n", "--- # c\n"])
STREAMS = st.lists(st.tuples(SEPARATORS, PIECES), max_size=8).map(
    lambda parts: "".join(separator + piece for separator, piece in parts)
)


def outcome(text: str, known: KnownDocuments | None, namespace: str = "apps") -> object:
    try:
        return seen(render(text, known, namespace))
    except ManifestError as e:
        return str(e)


@settings(max_examples=400, deadline=None)
@given(STREAMS, STREAMS, st.sampled_from(["apps", "prod", ""]))
def test_the_cached_path_gives_what_a_full_parse_gives_after_any_edit(
    before: str, after: str, namespace: str
) -> None:
    try:
        known = table_after(before)
    except ManifestError:
        known = KnownDocuments()
    assert outcome(after, known, namespace) == outcome(after, None, namespace)
    try:
        again = table_after(after)
    except ManifestError:
        return
    assert outcome(after, again) == outcome(after, None)


def test_a_document_the_caller_will_plan_anyway_is_parsed_in_the_render() -> None:
    known = table_after(cm("a") + "---\n" + cm("b"))
    known.parse = frozenset({ObjectRef("", "ConfigMap", "apps", "b", "v1")})
    manifests = render(cm("a") + "---\n" + cm("b"), known)
    assert seen(manifests) == seen(render(cm("a") + "---\n" + cm("b"), None))
    assert (known.parsed, known.reused) == (1, 1)
