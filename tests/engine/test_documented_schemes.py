"""docs/controller.md names every URL scheme a sync's ``source.url`` accepts (a reader who sees
only ``https`` assumes a local ``http://`` server will not do)."""

import re
from pathlib import Path

from aioreconcile.engine.configuration import _URL_SCHEMES

DOC = Path(__file__).resolve().parents[2] / "docs" / "controller.md"


def test_controller_doc_lists_every_accepted_url_scheme() -> None:
    line = next(line for line in DOC.read_text().splitlines() if re.match(r"\s+url: ", line))
    comment = line.partition("#")[2]

    missing = [scheme for scheme in sorted(_URL_SCHEMES) if f"{scheme}://" not in comment]

    assert not missing, f"docs/controller.md's url line does not name {missing}: {line.strip()}"
