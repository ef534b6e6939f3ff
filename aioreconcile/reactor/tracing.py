"""What the reactor asks of tracing, as a port; ``NoTracing`` when nothing is configured.

The reactor never imports OpenTelemetry (import-linter forbids it). It opens spans through this
port and hands finished results (ChangeSets) to it; the adapter in ``adapters/telemetry`` turns
them into OTel spans. One trace per commit reconcile: ``commit`` opens the root (for a push, a
child of the webhook request's span only when the sender's ``traceparent`` made that request part
of a trace already, e.g. a CI pipeline's; otherwise a root of its own, linked to the request, so
a backend's search list shows ``reconcile <sync>`` and not ``POST /hooks/{name}``),
``stage`` its children (fetch, render, apply, prune, inventory, status), ``objects`` one span
per ChangeSet entry with the times the applier recorded. A drift heal is a trace of its own
whose root links to the commit trace named in the object's ``aioreconcile.dev/traceparent``
annotation. Span names stay low-cardinality (``apply ConfigMap``, never an object's name): the
identity of an object is in attributes, as OpenTelemetry's span-name guidance asks.
"""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from aioreconcile.engine.changeset import ChangeSetEntry
from aioreconcile.engine.model import ObjectRef

AttributeValue = str | bool | int | float | Sequence[str]


@dataclass(frozen=True)
class CommitInfo:
    """What the root span of a commit trace says about the commit."""

    sync: str
    repository_url: str  # credentials are stripped by the adapter before export, too
    ref: str  # branch or tag name as configured
    ref_type: str  # "branch" | "tag" | "commit"
    sha: str
    author: str = ""
    subject: str = ""
    trigger: str = "poll"  # "push" | "poll" | "spec"
    # A push: the parent is the webhook request's span only when its sender gave a trace to
    # continue (a CI pipeline); otherwise the reconcile is a root with a link to the request.
    parent_traceparent: str | None = None
    link_traceparent: str | None = None
    started_at: float | None = None  # time.time() the webhook arrived; None: now


class SpanScope(Protocol):
    """An open span: add attributes, record an error, learn its W3C traceparent."""

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None: ...

    def record_error(self, message: str, *, error: BaseException | None = None) -> None: ...

    @property
    def traceparent(self) -> str | None: ...


class Tracing(Protocol):
    def commit(self, info: CommitInfo) -> AbstractContextManager[SpanScope]:
        """The root span of one commit reconcile; ends when the block exits."""
        ...

    def stage(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> AbstractContextManager[SpanScope]:
        """A child of the current span (git fetch, render, apply, prune, health wait)."""
        ...

    def objects(self, entries: Sequence[ChangeSetEntry], *, operation: str) -> None:
        """One finished child span per entry under the current span, timed from the entry's
        ``started_at``/``duration_s``; ``operation`` is "apply" or "prune"."""
        ...

    def heal(
        self,
        *,
        sync: str,
        ref: ObjectRef,
        revision: str,
        repository_url: str,
        link_traceparent: str | None,
        writers: Sequence[str],
        fields: Sequence[str],
    ) -> AbstractContextManager[SpanScope]:
        """The root span of a drift heal, linked to the trace that last set the object.

        ``revision`` is the commit the object is healed back to and ``repository_url`` its
        source (redacted by the adapter), so a search for a SHA finds its heals too."""
        ...


class _NoSpan:
    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        return None

    def record_error(self, message: str, *, error: BaseException | None = None) -> None:
        return None

    @property
    def traceparent(self) -> str | None:
        return None


class NoTracing:
    """Tracing switched off: every call is a few attribute lookups, no allocation of spans."""

    _span = _NoSpan()

    @contextmanager
    def _nothing(self) -> Iterator[SpanScope]:
        yield self._span

    def commit(self, info: CommitInfo) -> AbstractContextManager[SpanScope]:
        return self._nothing()

    def stage(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> AbstractContextManager[SpanScope]:
        return self._nothing()

    def objects(self, entries: Sequence[ChangeSetEntry], *, operation: str) -> None:
        return None

    def heal(
        self,
        *,
        sync: str,
        ref: ObjectRef,
        revision: str,
        repository_url: str,
        link_traceparent: str | None,
        writers: Sequence[str],
        fields: Sequence[str],
    ) -> AbstractContextManager[SpanScope]:
        return self._nothing()
