"""The metric names a PromQL expression reads, and the metric names a Prometheus scrape exposes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

from tests.chart.helmtool import Manifest, one

# Words of PromQL that look like metric names but are not: binary operators, modifiers.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL (or Grafana) expression: identifiers that are not functions (followed by
    "("), keywords, label names in groupings and matchers, durations or Grafana variables."""
    text = re.sub(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,[^)]*\)", r" \1 ", expr)  # Grafana's
    text = _STRING.sub('""', text)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = _GROUPING.sub(" ", text)  # by (namespace, name), on (...)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    text = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", " ", text)  # numbers
    names = set()
    for match in _NAME.finditer(text):
        word, rest = match.group(), text[match.end() :].lstrip()
        if rest.startswith("(") or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def exposed(scrape: str) -> tuple[set[str], set[str]]:
    """(names with a sample, names declared by a # TYPE line) of a text exposition, with the suffixes
    their type gives them (a counter `x` is read as `x_total`, a histogram as `x_bucket`...)."""
    sampled: set[str] = set()
    declared: set[str] = set()
    for family in text_string_to_metric_families(scrape):
        sampled |= {sample.name for sample in family.samples}
        declared |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return sampled, declared


def rule_expressions(manifests: Iterable[Manifest]) -> dict[str, str]:
    """alert name -> expr of the chart's PrometheusRule."""
    rule = one(list(manifests), "PrometheusRule")
    return {r["alert"]: r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]}


def dashboard_expressions(manifests: Iterable[Manifest]) -> dict[str, list[str]]:
    """panel title (or template variable) -> its queries, from the dashboard ConfigMap."""
    config_map = next(
        m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"].endswith("-dashboard")
    )
    (text,) = config_map["data"].values()
    dashboard = json.loads(text)
    found = {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard["panels"]}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found[f"${variable['name']}"] = [variable["definition"]]
    return found
