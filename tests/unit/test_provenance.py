"""Results carry their provenance, and the README quotes only figures its results hold.

Every JSON under bench/results/ says which commit, when, by what command, on which versions and with
how many repetitions it was made ("unknown" only with a reason). Every figure in the README's Benchmarks
section is linked, by an HTML comment under its table or paragraph, to a key of a named JSON and must
equal that value as displayed (rounded to the digits shown). The CI timing table is rendered from
bench/results/ci_timing.json by hack/ci_timing.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

import ci_timing

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
REQUIRED = ("commit", "date", "command", "versions", "n")

# A figure is a number with a unit, a count "N of M", or "of M" (medians of 10). Numbers without a unit
# (batch 8, TensorRT-RTX 1.4, resnet50) are settings and names, not measurements.
NUMBER = r"\d+(?:,\d{3})*(?:\.\d+)?"
FIGURE = re.compile(
    rf"(?<![\w.,])(?:{NUMBER}\s?(?:ms|s|min|MB|GB/s|GiB|%|x)(?![\w/])|{NUMBER} of {NUMBER}|of {NUMBER})"
)
FIGURES_COMMENT = re.compile(r"<!-- figures (\S+)\n(.*?)-->", re.DOTALL)


def result_files() -> list[Path]:
    return sorted(RESULTS.glob("*.json"))


@pytest.mark.parametrize("path", result_files(), ids=lambda p: p.name)
def test_every_result_records_commit_date_command_versions_and_n(path: Path) -> None:
    data = json.loads(path.read_text())
    missing = [key for key in REQUIRED if key not in data]
    assert not missing, f"{path.name}: no {', '.join(missing)} (write 'unknown' and a reason if it is)"
    reasons = data.get("unknown_reasons", {})
    for key in REQUIRED:
        if data[key] == "unknown":
            assert isinstance(reasons.get(key), str) and reasons[key].strip(), (
                f"{path.name}: {key} is 'unknown' without unknown_reasons.{key}"
            )
    if data["commit"] != "unknown":
        assert re.fullmatch(r"[0-9a-f]{40}", data["commit"]), f"{path.name}: commit is not a full git hash"
        known = subprocess.run(
            ["git", "cat-file", "-e", f"{data['commit']}^{{commit}}"],
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        assert known.returncode == 0, (
            f"{path.name}: commit {data['commit']} is not in this repository's history"
        )
    if data["date"] != "unknown":
        assert re.match(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", data["date"]), (
            f"{path.name}: date {data['date']!r}"
        )
    if data["command"] != "unknown":
        assert isinstance(data["command"], str) and data["command"].strip(), f"{path.name}: empty command"
    if data["versions"] != "unknown":
        assert isinstance(data["versions"], dict) and data["versions"], (
            f"{path.name}: versions must name some"
        )
    if data["n"] != "unknown":
        counts = data["n"].values() if isinstance(data["n"], dict) else [data["n"]]
        assert all(isinstance(c, int | float) and c > 0 for c in counts), f"{path.name}: n {data['n']!r}"


def lookup(data: Any, path: str) -> list[float]:
    """Values at a dotted path; `*` stands for every key at that level."""
    found: list[Any] = [data]
    for part in path.split("."):
        found = [v for node in found for v in (node.values() if part == "*" else [node[part]])]
    return [float(v) for v in found]


def evaluate(data: Any, expression: str) -> float:
    """`a.b.c`, `a.b.c*1000` or `sum(a.b, c.*.d, ...)`."""
    expression = expression.strip()
    if expression.startswith("sum(") and expression.endswith(")"):
        return sum(sum(lookup(data, p.strip())) for p in expression[4:-1].split(","))
    path, _, factor = expression.partition("*")
    (value,) = lookup(data, path)
    return value * float(factor) if factor else value


def shown_numbers(figure: str) -> list[tuple[float, int]]:
    """The numbers a figure shows, each with how many decimals it shows."""
    return [
        (float(n.replace(",", "")), len(n.split(".")[1]) if "." in n else 0)
        for n in re.findall(NUMBER, figure)
    ]


def matches(data: Any, figure: str, expression: str) -> bool:
    """The figure equals the expression's value as displayed: rounded to the digits shown.

    "N of M" pairs with "EXPR of EXPR"; "of M" with one expression.
    """
    shown = shown_numbers(figure)
    expressions = expression.split(" of ")
    if len(shown) != len(expressions):
        return False
    for (number, decimals), part in zip(shown, expressions, strict=True):
        value = evaluate(data, part)
        if abs(value - number) > 0.5 * 10**-decimals + 1e-9 * max(1.0, abs(value)):
            return False
    return True


def figure_links(section: str) -> list[tuple[str, dict[str, list[tuple[str, str]]]]]:
    """(text, {figure: [(json file, expression)]}) for each run of text and the comments under it."""
    groups: list[tuple[str, dict[str, list[tuple[str, str]]]]] = []
    position = 0
    for match in FIGURES_COMMENT.finditer(section):
        text = section[position : match.start()]
        if text.strip() or not groups:
            groups.append((text, {}))
        links = groups[-1][1]
        for line in match.group(2).strip().splitlines():
            figure, _, expression = line.partition(" = ")
            links.setdefault(figure.strip(), []).append((match.group(1), expression))
        position = match.end()
    groups.append((section[position:], {}))
    return groups


def without_target_columns(text: str) -> str:
    """Table cells under a `target` header are the design's targets, not measurements."""
    out, dropped = [], set[int]()
    for line in text.splitlines():
        if not line.startswith("|"):
            dropped = set()
            out.append(line)
            continue
        cells = line.split("|")
        if not dropped and any(c.strip() == "target" for c in cells):
            dropped = {i for i, c in enumerate(cells) if c.strip() == "target"}
        out.append("|".join(c for i, c in enumerate(cells) if i not in dropped))
    return "\n".join(out)


def benchmarks_section() -> str:
    text = README.read_text()
    start = text.index("## Benchmarks\n")
    return text[start : text.index("\n## ", start + 1)]


def test_every_readme_benchmark_figure_equals_the_json_key_it_names() -> None:
    groups = figure_links(benchmarks_section())
    checked = 0
    for text, links in groups:
        for figure in FIGURE.findall(without_target_columns(text)):
            assert figure in links, f"README Benchmarks: {figure!r} has no link to a JSON key under it"
        for figure, sources in links.items():
            for name, expression in sources:
                data = json.loads((ROOT / name).read_text())
                assert matches(data, figure, expression), (
                    f"README shows {figure!r}; {name} has {expression} = "
                    f"{[evaluate(data, e) for e in expression.split(' of ')]}"
                )
                checked += 1
    assert checked >= 40, f"only {checked} figures linked: the README's figure comments went missing"


def test_the_figure_check_fails_on_a_wrong_or_unlinked_figure() -> None:
    """The checker itself: a figure off by one shown digit, and a figure nobody linked, are caught."""
    data = {"a": {"median_s": 0.534}, "b": {"x": {"requests": 3}, "y": {"requests": 4}}}
    assert evaluate(data, "a.median_s") == 0.534 and evaluate(data, "sum(b.*.requests)") == 7
    assert matches(data, "0.53 s", "a.median_s") and not matches(data, "0.54 s", "a.median_s")
    assert matches(data, "3 of 7", "b.x.requests of sum(b.*.requests)")
    assert not matches(data, "3 of 8", "b.x.requests of sum(b.*.requests)")
    ((text, links), _) = figure_links(
        "| x | 0.53 s | ≤ 2 s |\n<!-- figures f.json\n0.53 s = a.median_s\n-->\n"
    )
    assert FIGURE.findall(without_target_columns("| | measured | target |\n" + text)) == ["0.53 s"]
    assert links == {"0.53 s": [("f.json", "a.median_s")]}
    text = "took 1.2 s, 0 of 1,181 failed, 20.4x faster, medians of 5, batch 8, TensorRT-RTX 1.4"
    assert FIGURE.findall(text) == ["1.2 s", "0 of 1,181", "20.4x", "of 5"]


def test_the_readme_ci_timing_table_is_the_one_rendered_from_its_json() -> None:
    data = json.loads((RESULTS / "ci_timing.json").read_text())
    assert ci_timing.readme_block(README.read_text()) == ci_timing.render(data)
    totals = data["totals"]
    assert totals["tests"] == sum(sum(row[k] for k in ci_timing.OUTCOMES) for row in data["suites"].values())


def test_ci_timing_reads_pytest_junit_xml(tmp_path: Path) -> None:
    """A junit XML as pytest writes it: outcomes and times per tests/<folder> suite."""
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">'
        '<testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="12.5">'
        '<testcase classname="tests.unit.api.test_models" name="test_a" time="1.25" />'
        '<testcase classname="tests.unit.test_provenance" name="test_b" time="0.5">'
        '<failure message="boom">x</failure></testcase>'
        '<testcase classname="tests.gpu.test_tensorrt_refit" name="test_c" time="0.0">'
        '<skipped type="pytest.skip" message="no GPU">s</skipped></testcase>'
        '<testcase classname="tests.e2e.test_refit_rollout" name="test_d" time="9.0" />'
        "</testsuite></testsuites>"
    )
    summary = ci_timing.summarize(junit)
    assert summary["pytest_s"] == 12.5
    assert summary["suites"] == {
        "tests/e2e": {"passed": 1, "skipped": 0, "failed": 0, "errors": 0, "time_s": 9.0},
        "tests/gpu": {"passed": 0, "skipped": 1, "failed": 0, "errors": 0, "time_s": 0.0},
        "tests/unit": {"passed": 1, "skipped": 0, "failed": 1, "errors": 0, "time_s": 1.8},
    }
    assert summary["totals"] == {"passed": 2, "skipped": 1, "failed": 1, "errors": 0, "tests": 4}
