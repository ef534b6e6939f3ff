"""What every fuzz target shares: the invariant, the seed corpus, and the atheris entry point.

The invariant (issue 13): whatever bytes arrive, a pure input reader either returns or raises
our own error (``AioreconcileError``), whose message is not empty, names the input it is about
and quotes nothing credential-shaped (``engine.redaction.redact_text`` would leave it as it
is, and none of the credentials planted in the seeds shows up in it). Any other exception is a
defect: atheris reports it as a crash and keeps the input that caused it.

The seeds are the real payloads and documents the tests already hold (provider deliveries in
tests/engine/fixtures/webhooks, objects in tests/engine/fixtures), written into
``.fuzz/<target>/seeds`` when a target starts, so the corpus is never a second copy to keep
in step. New inputs atheris finds go to ``.fuzz/<target>/corpus`` (ignored by git).
"""

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from aioreconcile.engine.errors import AioreconcileError
from aioreconcile.engine.redaction import redact_text

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "engine" / "fixtures"

PLANTED = "fuzzPlantedT0ken"
"""A credential the seeds carry where credentials live (URL userinfo, a query token, a Secret's
data): no error message may ever quote it."""


class InvariantBroken(AssertionError):
    """An error of ours that says too little or too much."""


def check_error(error: AioreconcileError, *, names: Iterable[str] = ()) -> None:
    """Raise ``InvariantBroken`` unless ``error`` is a clear, safe message: not empty, naming
    the input (one of ``names``: a file, an object, a field), and quoting no credential."""
    message = str(error)
    if not message.strip():
        raise InvariantBroken(f"{type(error).__name__} with an empty message")
    wanted = list(names)
    if wanted and not any(name in message for name in wanted):
        raise InvariantBroken(f"{message!r} names none of {wanted}")
    if PLANTED in message:
        raise InvariantBroken(f"{message!r} quotes the planted credential")
    if redact_text(message) != message:
        raise InvariantBroken(f"{message!r} quotes URL userinfo or a query")


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
    atheris.instrument_all()
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
