"""What every fuzz target shares: the invariant, the seed corpus, and the atheris entry point.

The invariant (issue 13): whatever bytes arrive, a pure input reader either returns or raises
our own error (``AioreconcileError``), whose message is not empty, names the input it is about
and quotes no credential: the seeds plant one in URL userinfo, in a ``private_token`` query and
in a Secret's data, and it must never show up in a message while it stands there. Any other
exception is a defect: atheris reports it as a crash and keeps the input that caused it.

The seeds are the real payloads and documents the tests already hold (provider deliveries in
tests/engine/fixtures/webhooks, objects in tests/engine/fixtures), written into
``.fuzz/<target>/seeds`` when a target starts, so the corpus is never a second copy to keep
in step. New inputs atheris finds go to ``.fuzz/<target>/corpus`` (ignored by git).
"""

import gc
import re
import sys
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aioreconcile.engine.errors import AioreconcileError

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "engine" / "fixtures"

PLANTED = "fuzzPlantedT0ken"
"""A credential the seeds carry where credentials live (URL userinfo, a query token, a Secret's
data): no error message may ever quote it."""


class InvariantBroken(AssertionError):
    """An error of ours that says too little or too much."""


_AS_CREDENTIAL = re.compile(
    rf"\b[a-z][a-z0-9+.-]*://[^\s/@:]*:{PLANTED}(?=@)"
    rf"|\b[a-z][a-z0-9+.-]*://[^\s'\"?#]*\?(?:[^\s'\"]*&)?private_token={PLANTED}"
    rf"(?=[&\s\"'}}\]]|$)"
    rf"|(?:token|password): {PLANTED}(?=[\s\"'}}\]]|$)"
)


def planted_as_credential(text: str) -> bool:
    """Whether every planted value in an input still stands where a credential stands
    (``scheme://user:<it>@``, ``private_token=<it>``, ``password: <it>``). A mutation that
    moved it into a name or a key makes it an ordinary string, which messages may quote."""
    return text.count(PLANTED) == len(_AS_CREDENTIAL.findall(text))


def check_error(
    error: AioreconcileError, *, names: Iterable[str] = (), planted: bool = True
) -> None:
    """Raise ``InvariantBroken`` unless ``error`` is a clear, safe message: not empty, naming
    the input (one of ``names``: a file, an object, a field), and quoting no credential (the
    planted one, where ``planted`` says it still is one)."""
    message = str(error)
    if not message.strip():
        raise InvariantBroken(f"{type(error).__name__} with an empty message")
    wanted = list(names)
    if wanted and not any(name in message for name in wanted):
        raise InvariantBroken(f"{message!r} names none of {wanted}")
    if planted and PLANTED in message:
        raise InvariantBroken(f"{message!r} quotes the planted credential")


INSTRUMENTED = ("aioreconcile.", "fuzz.", "json.")
"""Whose code gets coverage feedback. Not PyYAML's pure-Python scanner: atheris 2.3.0's
bytecode rewriting breaks it on Python 3.11 (``AttributeError: 'str' object has no attribute
'prefix'`` inside ``yaml/scanner.py``, which the same input never raises uninstrumented)."""


def _instrument(atheris: Any) -> None:
    """``atheris.instrument_all`` restricted to ``INSTRUMENTED``."""
    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and f"{obj.__module__}.".startswith(INSTRUMENTED):
            atheris.instrument_func(obj)


def run(name: str, test_one_input: Callable[[bytes], None], seeds: Iterable[bytes]) -> None:
    """``python -m fuzz.<name> [libFuzzer flags] [corpus dirs]``: with no corpus directory
    given, ``.fuzz/<name>/corpus`` (new inputs) and ``.fuzz/<name>/seeds`` (the seeds)."""
    import atheris  # only the fuzz targets need it; the property tests do not

    work = ROOT / ".fuzz" / name
    seed_dir = work / "seeds"
    seed_dir.mkdir(parents=True, exist_ok=True)
    for number, seed in enumerate(seeds):
        (seed_dir / f"seed-{number:03d}").write_bytes(seed)
    argv = list(sys.argv)
    if not any(not arg.startswith("-") for arg in argv[1:]):
        corpus = work / "corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        argv += [str(corpus), str(seed_dir)]
    if not any(arg.startswith("-artifact_prefix=") for arg in argv[1:]):
        crashes = work / "crashes"
        crashes.mkdir(parents=True, exist_ok=True)
        argv.append(f"-artifact_prefix={crashes}/")
    _instrument(atheris)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
