"""From rendered text to Manifests: parse, expand lists, default namespaces, refuse duplicates.

Everything here is a function of its arguments, so every rule about what a source may contain is
tested with strings. Error messages name the file, the document and the field, and never quote
the document: sources hold Secrets, and messages end up in logs, events and status.
"""

import hashlib
import json
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.reader import ReaderError

from aioreconcile.engine.model import (
    JsonObject,
    Manifest,
    ManifestError,
    ObjectRef,
    deflated,
    inflated,
)

NamespaceScope = Callable[[ObjectRef], bool | None]
"""Whether a kind is namespaced, as discovery knows it; ``None`` for a kind it doesn't know yet."""

_CRD_GROUP: Final = "apiextensions.k8s.io"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"

try:
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # PyYAML built without libyaml: same results, slower
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]


class _ManifestLoader(_SafeLoader):
    """Safe YAML read the way the Kubernetes API reads it.

    Timestamps stay text and scalar keys become strings (``9000:`` in a ConfigMap means
    ``"9000"``), so every document is JSON. A key given twice is an error, not a silently lost
    value.
    """

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        """One pass over the pairs: keys made JSON keys, duplicates among the node's own keys
        refused; merged keys (``<<``, placed first by ``flatten_mapping``) may be overridden.
        (Two passes and a copy of every map cost a third of the parse of a large source.)"""
        if not isinstance(node, MappingNode):
            return super().construct_mapping(node, deep=deep)
        own = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
        self.flatten_mapping(node)
        pairs = node.value
        first_own = len(pairs) - own
        seen: set[object] = set()
        mapping: dict[Any, Any] = {}
        for position, (key_node, value_node) in enumerate(pairs):
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "found unhashable key",
                    key_node.start_mark,
                )
            key = _json_key(key)
            if position >= first_own and isinstance(key_node, ScalarNode):
                if key in seen:
                    raise ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def _timestamp_as_text(loader: yaml.SafeLoader, node: Node) -> str:
    assert isinstance(node, ScalarNode)
    return str(loader.construct_scalar(node))


_ManifestLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


def _json_key(key: object) -> object:
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    if isinstance(key, int | float):
        return str(key)
    return key


@dataclass
class KnownDocuments:
    """The documents of a sync's last render, by the digest of their text (blake2b-128 of the
    bytes from a document's ``---`` line to the next), so that a push re-parses only the
    documents whose text changed: the YAML parse of 1,000 unchanged documents was most of a
    push of 50. ``refs``: the object each stood for, after ``default_namespace``;
    ``defaulted``: those whose namespace it set. No body is kept (they are what the deflated
    desired state saves); about 100 bytes per document. ``parsed``/``reused`` count what the
    renders given this table did, for tests and the render span.

    Argo CD's repo-server caches a revision's whole rendered output; this keys documents by
    text instead, so a new commit reuses every document it did not touch."""

    refs: dict[bytes, ObjectRef] = field(default_factory=dict)
    defaulted: set[bytes] = field(default_factory=set)
    # Objects the caller will plan whatever their document (the controller's suspects): their
    # documents are parsed here, off the event loop, not when their body is first read.
    parse: frozenset[ObjectRef] = frozenset()
    parsed: int = 0
    reused: int = 0


def known_documents(manifests: Sequence[Manifest]) -> KnownDocuments:
    """The table a render's manifests leave for the next one: only documents that stood for
    exactly one object (a List's items, the same text twice: parsed again next time). Not
    CustomResourceDefinitions: ``default_namespace`` reads their bodies for their kinds' scope,
    and a large one parsed there, on the caller's event loop, would block it."""
    refs: dict[bytes, ObjectRef] = {}
    twice: set[bytes] = set()
    for m in manifests:
        if m.source is None or (m.ref.group, m.ref.kind) == (
            _CRD_GROUP,
            "CustomResourceDefinition",
        ):
            continue
        if m.source in refs:
            twice.add(m.source)
        refs[m.source] = m.ref
    for source in twice:
        del refs[source]
    defaulted = {m.source for m in manifests if m.defaulted and m.source in refs}
    return KnownDocuments(refs=refs, defaulted=defaulted)


def parse_documents(
    text: str, *, origin: str, known: KnownDocuments | None = None
) -> list[Manifest]:
    """Every object in a YAML stream, in document order; empty documents are skipped.

    ``origin`` names the source (a file, a rendered template) in errors and in each Manifest,
    together with the 1-based document number, counted including empty documents so that it
    matches the ``---`` a reader counts in the file.

    With ``known``, a document whose text is one of ``known``'s is not parsed: its Manifest
    has the object's ref and parses its body only if asked (``_Unparsed``); the others are
    parsed one by one. A stream the splitter does not take as plain (``_split``), and any
    error, take the whole-stream parse, whose errors name the document as always.
    """
    split = _split(text) if known is not None else None
    if known is not None and known.refs and split is not None:
        reused = _parse_known(split, origin=origin, known=known)
        if reused is not None:
            return reused
    sources = dict(split or ())
    manifests: list[Manifest] = []
    for number, document in _load_yaml(text, origin=origin):
        where = f"{origin}, document {number}"
        found = _manifests_of(document, origin=where, text=text)
        if number in sources and len(found) == 1 and found[0].origin == where:
            found = [_with_source(found[0], _text_digest(sources[number]))]
        manifests.extend(found)
    if known is not None:
        known.parsed += len(manifests)
    return manifests


_LINE_BREAKS_OTHER_THAN_LF: Final = ("\r", "\x85", "\u2028", "\u2029", "\ufeff")


def _split(text: str) -> list[tuple[int, str]] | None:
    """(document number, text) of each document of a plain stream, numbered as the parser
    numbers them; None for anything else (then the whole stream is parsed, as before).

    YAML ends a document at a line starting ``---`` (then a space, a tab or the line's end) or
    ``...`` at column 0, wherever it is, even inside a block scalar; ``%`` there starts a
    directive. Plain means: lines end in LF only, no BOM, no ``...``, no directive, no
    ``---`` glued to text. The part before the first ``---`` is a document only if it holds
    more than comments and blanks, as for the parser."""
    if any(c in text for c in _LINE_BREAKS_OTHER_THAN_LF):
        return None
    chunks: list[str] = []  # the part before the first ``---``, then one per ``---``
    start = position = 0
    for line in text.split("\n"):
        if line.startswith(("%", "...")):
            return None
        if line.startswith("---"):
            if len(line) > 3 and line[3] not in " \t":
                return None
            chunks.append(text[start:position])
            start = position
        position += len(line) + 1
    chunks.append(text[start:])
    documents = chunks[1:]
    if _has_content(chunks[0]):
        documents.insert(0, chunks[0])
    return list(enumerate(documents, start=1))


def _has_content(chunk: str) -> bool:
    return any(line.strip() and not line.lstrip().startswith("#") for line in chunk.split("\n"))


def _parse_known(
    documents: list[tuple[int, str]], *, origin: str, known: KnownDocuments
) -> list[Manifest] | None:
    """The split stream's manifests, the known documents unparsed; None on any error."""
    manifests: list[Manifest] = []
    parsed = reused = 0
    for number, chunk in documents:
        where = f"{origin}, document {number}"
        source = _text_digest(chunk)
        ref = known.refs.get(source)
        if ref is not None and ref not in known.parse:
            if source in known.defaulted:
                ref = ref.with_namespace("")
            manifests.append(_Unparsed(ref, origin=where, source=source, text=chunk))
            reused += 1
            continue
        try:
            loaded = _load_yaml(chunk, origin=origin)
            if len(loaded) > 1:
                return None
            found = [
                m
                for _, document in loaded
                for m in _manifests_of(document, origin=where, text=chunk)
            ]
        except ManifestError:
            return None
        if len(found) == 1 and found[0].origin == where:  # a List's items keep no source
            found = [_with_source(found[0], source)]
        manifests.extend(found)
        parsed += len(found)
    known.parsed += parsed
    known.reused += reused
    return manifests


def _text_digest(chunk: str) -> bytes:
    return hashlib.blake2b(chunk.encode(), digest_size=16).digest()


def _with_source(manifest: Manifest, source: bytes) -> Manifest:
    if isinstance(manifest, _Packed):
        return _Packed(manifest.ref, origin=manifest.origin, packed=manifest.packed, source=source)
    return Manifest(ref=manifest.ref, body=manifest.body, origin=manifest.origin, source=source)


class _Packed(Manifest):
    """A parsed document whose body is kept deflated (``model.deflated``: orjson, then zlib)
    and inflated on each read, so each read returns a fresh copy.

    Why: a render's manifests are held from the parse to the end of the apply. As dicts, the
    bodies of 10,000 realistic objects are ~56 MiB of small objects (~5.6 KB each); the
    long-lived small objects made meanwhile (the refs, the digests, resourceVersions, watch
    entries) end up scattered through the same pymalloc arenas, and an arena is given back to
    the system only when all of it is free: the controller kept ~82 arenas (26 MiB in use) at
    idle after applying 10,000 objects. As one ``bytes`` each, the dicts live only while their
    document is parsed and while a reader uses them (docs/controller-benchmarks.md, issue 14).
    Deflated, 10,000 realistic bodies are ~6 MiB (orjson's own ``bytes`` would keep a ~4 KiB
    buffer each: measured, that made the idle RSS worse, 210 MiB). A read costs an inflate
    and a decode (~6 µs for a few KiB); the controller reads each up to four times per
    reconcile (digest, desired form, the apply's decision and request). The controller keeps
    its desired and stored forms the same way (``SyncState``). The parse checks the encoding
    by reading it back (``_packed``), so a body reads the same either way."""

    packed: bytes

    def __init__(
        self,
        ref: ObjectRef,
        *,
        origin: str,
        packed: bytes,
        source: bytes | None = None,
        defaulted: bool = False,
    ) -> None:
        _set_fields(self, ref=ref, origin=origin, source=source, defaulted=defaulted, packed=packed)

    @property
    def body(self) -> JsonObject:
        return inflated(self.__dict__["packed"])


def _set_fields(manifest: Manifest, **fields: object) -> None:
    """Set the fields of a frozen ``Manifest`` subclass (``_Packed``, ``_Unparsed``) that keeps
    its body its own way instead of in the dataclass' ``body`` field."""
    for name, value in fields.items():
        object.__setattr__(manifest, name, value)


def _packed(manifest: Manifest) -> Manifest:
    """``manifest`` with its body packed (``_Packed``), or as it is when JSON does not carry
    the body exactly (a NaN or infinity, an integer beyond 64 bits, a lone surrogate): the
    encoding is checked by decoding it, off the event loop, in the parse."""
    body = manifest.body
    try:
        packed = deflated(body)
    except orjson.JSONEncodeError:
        return manifest
    if inflated(packed) != body:
        return manifest
    return _Packed(
        manifest.ref,
        origin=manifest.origin,
        packed=packed,
        source=manifest.source,
        defaulted=manifest.defaulted,
    )


class _Unparsed(Manifest):
    """A document known from the last render (``KnownDocuments``): the ref is the one that
    render parsed from the same text; the body is parsed on first use (an object a push
    plans after all: suspect, new to the cluster, its namespace defaulted otherwise)."""

    def __init__(
        self, ref: ObjectRef, *, origin: str, source: bytes, text: str, namespace: str = ""
    ) -> None:
        _set_fields(
            self,
            ref=ref,
            origin=origin,
            source=source,
            defaulted=bool(namespace),
            _text=text,
            _namespace=namespace,
            _body=None,
        )

    @property
    def body(self) -> JsonObject:
        body: JsonObject | None = self.__dict__["_body"]
        if body is None:
            [(_, document)] = _load_yaml(self.__dict__["_text"], origin=self.origin)
            assert isinstance(document, dict)  # it was one object, as the last render read it
            [(body, _)] = expand_lists(document, origin=self.origin)
            namespace = self.__dict__["_namespace"]
            if namespace:
                body = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
            object.__setattr__(self, "_body", body)
        return body


def parse_json(text: str, *, origin: str) -> list[Manifest]:
    """The objects in one JSON file (one object, or a List of them).

    JSON gets its own parser rather than YAML's: YAML 1.1 refuses some valid JSON (tabs), and
    JSON's error positions are exact.
    """
    try:
        document = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{origin}: line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise ManifestError(f"{origin}: nested too deeply to be read") from None
    except _DuplicateKeyError as e:
        raise ManifestError(f"{origin}: duplicate key {e.key!r}") from None
    return _manifests_of(document, origin=origin)


def expand_lists(obj: JsonObject, *, origin: str) -> list[tuple[JsonObject, str]]:
    """The objects a document stands for, each with its origin.

    A ``List`` (or any ``*List`` kind carrying ``items``) stands for its items, recursively, as
    kubectl treats it; anything else stands for itself.
    """
    kind = obj.get("kind")
    if not (isinstance(kind, str) and kind.endswith("List") and "items" in obj):
        return [(obj, origin)]
    items = obj["items"]
    if items is None:
        return []
    if not isinstance(items, list):
        raise ManifestError(f"{origin}: {kind} items is {_describe_type(items)}, not a list")
    expanded: list[tuple[JsonObject, str]] = []
    for position, item in enumerate(items):
        item_origin = f"{origin}, items[{position}]"
        if not isinstance(item, dict):
            raise ManifestError(f"{item_origin}: expected an object, found {_describe_type(item)}")
        expanded.extend(expand_lists(item, origin=item_origin))
    return expanded


def check_unique(manifests: Iterable[Manifest]) -> None:
    """Refuse an object defined more than once: which definition would win is an accident.

    Run it after ``default_namespace``, which can make two definitions name the same object.
    """
    first: dict[ObjectRef, Manifest] = {}
    duplicates: list[str] = []
    for manifest in manifests:
        earlier = first.setdefault(manifest.ref, manifest)
        if earlier is not manifest:
            duplicates.append(
                f"{manifest.ref} is defined twice: in {earlier.origin} and in {manifest.origin}"
            )
    if duplicates:
        raise ManifestError("; ".join(duplicates))


def default_namespace(
    manifests: Iterable[Manifest], namespace: str | None, *, is_namespaced: NamespaceScope
) -> list[Manifest]:
    """Put namespaced objects that name no namespace into ``namespace``; inputs are not mutated.

    Scope comes from ``is_namespaced`` (discovery) and, for kinds it doesn't know, from the
    CustomResourceDefinitions among ``manifests``: a CRD and its first objects usually arrive in
    the same commit. A kind neither knows is left as it is, to be decided once its CRD is
    established. A cluster-scoped object naming a namespace is refused: the author meant
    something the API would silently drop.
    """
    manifests = list(manifests)
    declared = _scopes_declared_by_crds(manifests)
    defaulted: list[Manifest] = []
    for manifest in manifests:
        ref = manifest.ref
        namespaced = is_namespaced(ref)
        if namespaced is None:
            namespaced = declared.get((ref.group, ref.kind))
        if namespaced is False and ref.namespace:
            raise ManifestError(
                f"{manifest.origin}: {ref.with_namespace('')} is cluster-scoped, "
                f"but sets metadata.namespace {ref.namespace!r}"
            )
        if namespaced and namespace and not ref.namespace:
            manifest = _with_namespace(manifest, namespace)
        defaulted.append(manifest)
    return defaulted


def _with_namespace(manifest: Manifest, namespace: str) -> Manifest:
    """A copy with the namespace set; only the two levels that change are copied (an
    ``_Unparsed`` one stays unparsed)."""
    ref = manifest.ref.with_namespace(namespace)
    if isinstance(manifest, _Unparsed):
        text = manifest.__dict__["_text"]
        return _Unparsed(
            ref,
            origin=manifest.origin,
            source=manifest.source or b"",
            text=text,
            namespace=namespace,
        )
    read = manifest.body
    body = {**read, "metadata": {**read["metadata"], "namespace": namespace}}
    if isinstance(manifest, _Packed):  # its body is JSON already: no check needed
        return _Packed(
            ref,
            origin=manifest.origin,
            packed=deflated(body),
            source=manifest.source,
            defaulted=True,
        )
    return Manifest(
        ref=ref, body=body, origin=manifest.origin, source=manifest.source, defaulted=True
    )


def _scopes_declared_by_crds(manifests: Iterable[Manifest]) -> dict[tuple[str, str], bool]:
    scopes: dict[tuple[str, str], bool] = {}
    for manifest in manifests:
        if manifest.ref.group != _CRD_GROUP or manifest.ref.kind != "CustomResourceDefinition":
            continue
        spec = manifest.body.get("spec")
        if not isinstance(spec, dict) or not isinstance(spec.get("names"), dict):
            continue
        group, kind, scope = spec.get("group"), spec["names"].get("kind"), spec.get("scope")
        if isinstance(group, str) and isinstance(kind, str) and scope in ("Namespaced", "Cluster"):
            scopes[(group, kind)] = scope == "Namespaced"
    return scopes


def _load_yaml(text: str, *, origin: str) -> list[tuple[int, object]]:
    """(document number, content) for each non-empty document.

    The stream is walked node by node rather than with ``load_all`` to know which document an
    error is in: an error while looking for the next document belongs to that next document.
    Errors are raised ``from None`` because PyYAML's own message quotes the offending line.
    """
    documents: list[tuple[int, object]] = []
    number = 0
    starting_next = True
    try:
        loader = _ManifestLoader(text)
        try:
            while True:
                starting_next = True
                if not loader.check_node():
                    break
                number += 1
                starting_next = False
                content = loader.construct_document(loader.get_node())
                if "*" in text and _contains_itself(content):  # only an alias (*x) can
                    raise ManifestError(
                        f"{origin}: document {number}: a YAML alias refers to a node that "
                        "contains it; such an object never ends"
                    )
                if content is not None:
                    documents.append((number, content))
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        at = number + 1 if starting_next else number
        raise ManifestError(_describe_yaml_error(e, origin=origin, document=at)) from None
    except ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise ManifestError(
            f"{origin}: document {_document_at(text, line)}, line {line}: "
            f"character #x{e.character:04x}: {e.reason}"
        ) from None
    except yaml.YAMLError:
        raise ManifestError(f"{origin}: document {number + 1}: not valid YAML") from None
    return documents


def _contains_itself(value: object) -> bool:
    """Whether a decoded document is cyclic (``&x [*x]``). Go's YAML decoder, and so kubectl,
    refuses such a document; every walk of it (List expansion, hashing, JSON) would not end.
    Depth-first, without recursion (a deep document must not raise RecursionError here), and
    each node once: aliases may share one node a million times over without a cycle."""
    return _reaches_again(value, shared=False)


def _shares_a_node(value: object) -> bool:
    """Whether a dict or list is reached twice in ``value`` (a YAML alias of a node)."""
    return _reaches_again(value, shared=True)


def _reaches_again(value: object, *, shared: bool) -> bool:
    """Whether a dict or list of ``value`` contains itself, or (``shared``) is reached twice
    at all. Depth-first, without recursion, each node walked once."""
    on_path: set[int] = set()
    done: set[int] = set()
    stack: list[tuple[object, bool]] = [(value, False)]
    while stack:
        node, leaving = stack.pop()
        if leaving:
            on_path.discard(id(node))
            done.add(id(node))
            continue
        if isinstance(node, dict):
            children: Iterable[object] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if id(node) in on_path:
            return True
        if id(node) in done:
            if shared:
                return True
            continue
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children)
    return False


def _describe_yaml_error(error: yaml.MarkedYAMLError, *, origin: str, document: int) -> str:
    """Problem, context and line only: ``str(error)`` would quote the document."""
    mark = error.problem_mark or error.context_mark
    line = f", line {mark.line + 1}" if mark is not None else ""
    problem = error.problem or error.context or "not valid YAML"
    context = f" ({error.context})" if error.context and error.problem else ""
    return f"{origin}: document {document}{line}: {problem}{context}"


def _document_at(text: str, line: int) -> int:
    """The document a 1-based line is in, by counting ``---`` markers.

    Only for errors found before parsing (bad characters); the parser counts exactly otherwise.
    """
    number = 1
    content_seen = False
    for text_line in text.splitlines()[: line - 1]:
        if text_line == "---" or text_line.startswith(("--- ", "---\t")):
            number += 1 if content_seen else 0
            content_seen = True
        elif text_line.strip() and not text_line.lstrip().startswith("#"):
            content_seen = True
    return number


def _manifests_of(document: object, *, origin: str, text: str = "") -> list[Manifest]:
    """The manifests ``document`` (parsed from ``text``) stands for, their bodies packed
    (``_Packed``) unless YAML aliases share a node in it: JSON would repeat the node at each
    alias, and aliases nested a few levels deep repeat one node millions of times."""
    if not isinstance(document, dict):
        raise ManifestError(f"{origin}: expected an object, found {_describe_type(document)}")
    pack = not ("*" in text and _shares_a_node(document))  # only an alias (*x) can
    return [
        _manifest(obj, origin=where, pack=pack)
        for obj, where in expand_lists(document, origin=origin)
    ]


def _manifest(obj: JsonObject, *, origin: str, pack: bool = True) -> Manifest:
    try:
        ref = ObjectRef.of(obj)
    except ManifestError as e:
        raise ManifestError(f"{origin}: {e}") from None
    manifest = Manifest(ref=ref, body=obj, origin=origin)
    return _packed(manifest) if pack else manifest


def _describe_type(value: object) -> str:
    """What a value is, without quoting it (it may be a Secret's data)."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    return type(value).__name__


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> JsonObject:
    obj: JsonObject = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKeyError(key)
        obj[key] = value
    return obj
