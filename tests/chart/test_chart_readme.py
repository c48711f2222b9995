"""The chart README's values table is generated (hack/chart_readme.py) and current."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

import chart_readme
from tests.chart.helmtool import CHART


def test_readme_values_table_is_current() -> None:
    current, wanted = chart_readme.expected()
    assert current == wanted, "charts/trt-refit-operator/README.md is stale: run python hack/chart_readme.py"


def test_every_value_has_a_row_with_a_description() -> None:
    readme = (CHART / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    keys = {row.split("`")[1] for row in rows}
    for top in yaml.safe_load((CHART / "values.yaml").read_text()):
        assert any(key == top or key.startswith(f"{top}.") for key in keys), top
    undocumented = [row.split("`")[1] for row in rows if row.rstrip().endswith("|  |")]
    assert undocumented == [], (
        f"values with no comment in values.yaml and no schema description: {undocumented}"
    )


@pytest.fixture
def chart_copy(tmp_path: Path) -> Path:
    for name in ("README.md", "values.yaml", "values.schema.json"):
        shutil.copy(CHART / name, tmp_path / name)
    return tmp_path


def test_check_fails_on_a_changed_default_and_the_rewrite_fixes_it(
    chart_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = chart_copy / "values.yaml"
    values.write_text(values.read_text().replace("maxArtifactSize: 8Gi", "maxArtifactSize: 16Gi"))
    assert chart_readme.main(["--check", "--chart", str(chart_copy)]) == 1
    assert "the values table is stale" in capsys.readouterr().out
    assert chart_readme.main(["--chart", str(chart_copy)]) == 0
    assert '| `refit.maxArtifactSize` | string | `"16Gi"` |' in (chart_copy / "README.md").read_text()
    assert chart_readme.main(["--check", "--chart", str(chart_copy)]) == 0
