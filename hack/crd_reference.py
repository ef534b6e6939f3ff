"""Write the field tables of docs/crds.md from the CRDs under charts/aioreconcile/crds/.

    python hack/crd_reference.py          # rewrite the generated sections in place
    python hack/crd_reference.py --check  # exit 1 if they are out of date (a test runs this)

The schema is the single source: descriptions, defaults, enums, patterns, bounds and the CEL
rules' messages all come from the YAML, so the reference cannot drift from what the apiserver
enforces. Only the text between the BEGIN/END markers of each CRD file is generated; everything
else in docs/crds.md is written by hand. (Flux generates its API reference from Go types with
gen-crd-api-reference-docs; our types are the YAML, so we read that.)
"""

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "charts" / "aioreconcile" / "crds"
DOC = ROOT / "docs" / "crds.md"
FILES = ("syncs.yaml", "receivers.yaml")


def _cell(text: str) -> str:
    """Prose for a table cell: one line, Markdown's special characters taken literally."""
    text = " ".join(text.split())
    for special in ("\\", "*", "<", ">", "|"):
        text = text.replace(special, f"\\{special}")
    return text


def _code(text: object) -> str:
    return f"`{text}`".replace("|", "\\|")


def _value(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _type(schema: dict[str, Any]) -> str:
    kind = str(schema.get("type", "object"))
    if kind == "array":
        return f"[]{_type(schema['items'])}"
    if kind == "object" and "additionalProperties" in schema:
        return f"map[string]{_type(schema['additionalProperties'])}"
    if kind == "integer" and "format" in schema:
        return str(schema["format"])
    return kind


def _range(low: object, high: object, unit: str) -> str | None:
    if low is not None and high is not None:
        return f"{low}-{high}{unit}"
    if high is not None:
        return f"at most {high}{unit}"
    if low is not None:
        return f"at least {low}{unit}"
    return None


def _constraints(schema: dict[str, Any]) -> list[str]:
    found: list[str] = []
    if "enum" in schema:
        found.append("one of " + ", ".join(_code(v) for v in schema["enum"]))
    if "pattern" in schema:
        found.append(f"pattern {_code(schema['pattern'])}")
    ranges = [
        _range(schema.get("minLength"), schema.get("maxLength"), " characters"),
        _range(schema.get("minimum"), schema.get("maximum"), ""),
        _range(schema.get("minItems"), schema.get("maxItems"), " items"),
        _range(schema.get("minProperties"), schema.get("maxProperties"), " entries"),
    ]
    found += [r for r in ranges if r]
    if schema.get("x-kubernetes-list-type") == "set":
        found.append("no duplicates")
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        found.append("any fields")
    return found


def _rules(schema: dict[str, Any]) -> list[str]:
    return [_cell(rule["message"]) for rule in schema.get("x-kubernetes-validations", [])]


Row = tuple[str, str, str, str, str]


def _rows(schema: dict[str, Any], prefix: str, required: bool) -> Iterator[Row]:
    """(field, type, default, description, validation) for ``schema`` and all below it."""
    items = schema.get("items", {}) if schema.get("type") == "array" else {}
    checks = _constraints(schema)
    if items.get("type") != "object":
        checks += [f"each {c}" for c in _constraints(items)]
    checks += [f'refused: "{message}"' for message in _rules(schema) + _rules(items)]
    name = f"**{_code(prefix)}**" if required else _code(prefix)
    default = _code(_value(schema["default"])) if "default" in schema else ""
    description = _cell(schema.get("description", ""))
    yield name, _type(schema), default, description, "; ".join(checks)
    below = items if items.get("type") == "object" else schema
    if below.get("x-kubernetes-preserve-unknown-fields"):
        return
    wanted = set(below.get("required", []))
    suffix = "[]" if below is items else ""
    for key, sub in below.get("properties", {}).items():
        yield from _rows(sub, f"{prefix}{suffix}.{key}", key in wanted)


def _table(schema: dict[str, Any], prefix: str) -> str:
    lines = ["| field | type | default | description | validation |", "|---|---|---|---|---|"]
    rows = list(_rows(schema, prefix, required=False))[1:]  # the root object itself is implied
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)


def section(crd: dict[str, Any]) -> str:
    """The generated Markdown for one CRD: names, columns, object rules, spec and status."""
    names = crd["spec"]["names"]
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    kind, plural = names["kind"], names["plural"]
    short = ", ".join(_code(s) for s in names.get("shortNames", []))
    categories = ", ".join(_code(c) for c in names.get("categories", []))
    columns = version.get("additionalPrinterColumns", [])
    normal = [c["name"].upper() for c in columns if not c.get("priority")]
    wide = [c["name"].upper() for c in columns if c.get("priority")]
    out = [
        f"`{crd['spec']['group']}/{version['name']}` `{kind}`, {crd['spec']['scope'].lower()};"
        f" `kubectl get {plural}` (short names {short}; categories {categories}) shows "
        + ", ".join(normal)
        + (f"; `-o wide` adds {', '.join(wide)}." if wide else "."),
        "",
        "| column | JSONPath |",
        "|---|---|",
        *(f"| {c['name'].upper()} | {_code(c['jsonPath'])} |" for c in columns),
        "",
    ]
    object_rules = _rules(schema)
    if object_rules:
        out += ["Rules on the whole object:", ""]
        out += [f"- {message}" for message in object_rules]
        out.append("")
    out += ["**Bold** fields are required.", "", f"#### `{kind}.spec`", ""]
    out += [_table(schema["properties"]["spec"], "spec"), ""]
    out += [f"#### `{kind}.status`", "", _table(schema["properties"]["status"], "status")]
    return "\n".join(out)


def render(document: str) -> str:
    """``document`` with every generated section replaced by the current one."""
    for name in FILES:
        crd = yaml.safe_load((CRDS / name).read_text())
        begin = f"<!-- BEGIN {name} (generated by hack/crd_reference.py; do not edit) -->"
        end = f"<!-- END {name} -->"
        pattern = re.compile(f"{re.escape(begin)}\n.*?{re.escape(end)}", flags=re.DOTALL)
        found = pattern.search(document)
        if found is None:
            raise SystemExit(f"{DOC}: no '{begin}' ... '{end}' section")
        generated = f"{begin}\n{section(crd)}\n{end}"
        document = document[: found.start()] + generated + document[found.end() :]
    return document


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/crds.md is stale")
    args = parser.parse_args()
    current = DOC.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print(f"{DOC} is out of date: run `python hack/crd_reference.py`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
