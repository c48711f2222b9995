"""Generate the values table of the chart's README from values.yaml (defaults, and the comment above each key)
and values.schema.json (types, and descriptions where values.yaml has no comment).

    python hack/chart_readme.py            rewrite the table in charts/trt-refit-operator/README.md
    python hack/chart_readme.py --check    exit 1 (and say so) when the README's table is stale

The table lives between two marker comments; everything else in the README is hand-written."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "trt-refit-operator"
BEGIN = "<!-- values-table:begin (hack/chart_readme.py writes this table; edit values.yaml instead) -->"
END = "<!-- values-table:end -->"
_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z0-9_.-]+):")

Path_ = tuple[str, ...]


def key_comments(values_text: str) -> dict[Path_, str]:
    """The comment block right above each key of values.yaml, by key path. A blank line ends a block, so
    the file's header comment belongs to no key."""
    comments: dict[Path_, str] = {}
    stack: list[tuple[int, str]] = []
    block: list[str] = []
    for line in values_text.splitlines():
        stripped = line.strip()
        if not stripped:
            block = []
            continue
        if stripped.startswith("#"):
            block.append(re.sub(r"^#\s?(--\s)?", "", stripped))
            continue
        match = _KEY.match(line)
        if match is None:  # a list item or a continuation: not a key
            block = []
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        if block:
            comments[tuple(key for _, key in stack)] = " ".join(block)
        block = []
    return comments


def leaves(values: Any, schema: dict[str, Any], path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """Every value a user sets: a map whose keys the schema names is a section; anything else (scalars,
    lists, free-form maps such as podSecurityContext) is one value."""
    if isinstance(values, dict) and values and "properties" in schema:
        for key, value in values.items():
            yield from leaves(value, schema["properties"].get(key, {}), (*path, str(key)))
    elif path:
        yield path, values


def schema_at(schema: dict[str, Any], path: Path_) -> dict[str, Any]:
    node = schema
    for key in path:
        node = node.get("properties", {}).get(key, {})
    return node


def _type(schema: dict[str, Any], value: Any) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(kind)
    if isinstance(kind, str):
        return kind
    if "enum" in schema:
        return "enum"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}.get(
        type(value), "object"
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(values_text: str, schema: dict[str, Any]) -> str:
    values = yaml.safe_load(values_text)
    comments = key_comments(values_text)
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for path, value in leaves(values, schema):
        node = schema_at(schema, path)
        description = comments.get(path) or node.get("description", "")
        if "enum" in node:
            description += " One of: " + ", ".join(f"`{v}`" for v in node["enum"]) + "."
        default = json.dumps(value, separators=(", ", ": "))
        key, kind = ".".join(path), _type(node, value)
        rows.append(f"| `{key}` | {kind} | `{_cell(default)}` | {_cell(description.strip())} |")
    return "\n".join(rows)


def render(readme: str, values_text: str, schema: dict[str, Any]) -> str:
    """The README with its table replaced (or, without markers yet, appended under "## Values")."""
    block = f"{BEGIN}\n{table(values_text, schema)}\n{END}"
    if BEGIN in readme and END in readme:
        head, rest = readme.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        return f"{head}{block}{tail}"
    return f"{readme.rstrip()}\n\n## Values\n\n{block}\n"


def expected(chart: Path = CHART) -> tuple[str, str]:
    """(the README as it is, the README as it should be)."""
    readme = (chart / "README.md").read_text()
    schema = json.loads((chart / "values.schema.json").read_text())
    return readme, render(readme, (chart / "values.yaml").read_text(), schema)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when the table is stale")
    parser.add_argument(
        "--chart", type=Path, default=CHART, help="the chart directory (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    current, wanted = expected(args.chart)
    if current == wanted:
        return 0
    if args.check:
        print(f"{args.chart / 'README.md'}: the values table is stale; run python hack/chart_readme.py")
        return 1
    (args.chart / "README.md").write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
