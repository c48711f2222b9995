"""The chart's alerts and dashboard read only metrics the operator really exports.

The render tests need only helm. The scrape test runs the real operator process (the integration fixtures)
through a refit and a rollout on the session's control plane, scrapes its real /metrics, and checks that
every metric name in every PrometheusRule expression and every dashboard query is in that scrape."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from kubernetes import client

from tests.chart.helmtool import Manifest, by_kind, template
from tests.chart.monitoring import dashboard_expressions, exposed, metric_names, rule_expressions
from tests.integration import conftest as integration
from tests.integration.conftest import OperatorProcess
from tests.integration.world import complete, create_model, create_serving, trtmodel, wait_job, wait_phase
from tests.kubehelpers import wait_for
from trtrefit.api.trtmodel import GROUP, PLURAL, VERSION

ALERTS = {
    "TRTModelRefitFailing",
    "TRTModelStalled",
    "TRTModelRolloutStuck",
    "TRTModelNoSuccessfulRefit",
    "TRTRefitReconcileErrors",
}
# The integration folder's fixtures: the CRD on the session cluster, the real operator process.
trtmodel_crd = integration.trtmodel_crd
operator = integration.operator

MONITORING = {"metrics": {"prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}}}
CHECKPOINT = "s3://ckpt/tiny/step-1.safetensors"


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


@pytest.fixture(scope="module")
def monitoring(helm_home: Path) -> list[Manifest]:
    return template(helm_home, MONITORING)


def test_metric_names_are_read_out_of_promql() -> None:
    expr = (
        '(sum by (namespace, name) (increase(a_total{outcome!="Passed",x=~"a|b"}[6h])) > 0) unless on (name) '
        "histogram_quantile(0.95, sum by (le) (rate(b_bucket[$__rate_interval]))) or time() - c:d * 1e3"
    )
    assert metric_names(expr) == {"a_total", "b_bucket", "c:d"}
    assert metric_names("label_values(trtrefit_model_phase, namespace)") == {"trtrefit_model_phase"}


def test_alerts_and_dashboard_are_off_by_default(helm_home: Path) -> None:
    manifests = template(helm_home)
    assert not by_kind(manifests, "PrometheusRule")
    assert not [m for m in by_kind(manifests, "ConfigMap") if m["metadata"]["name"].endswith("-dashboard")]


def test_rules_and_dashboard_render_when_enabled(monitoring: list[Manifest]) -> None:
    rules = rule_expressions(monitoring)
    assert set(rules) == ALERTS
    (config_map,) = [
        m for m in by_kind(monitoring, "ConfigMap") if m["metadata"]["name"].endswith("-dashboard")
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    panels = dashboard_expressions(monitoring)
    assert len(panels) >= 10 and all(panels.values())


def test_every_rule_and_panel_names_a_metric_of_the_real_scrape(
    monitoring: list[Manifest], kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    # One refit and one rollout, so the per-model families have samples, not only # TYPE lines.
    create_serving(kube_api, namespace)
    create_model(kube_api, namespace, trtmodel(checkpoint=CHECKPOINT))
    complete(kube_api, wait_job(kube_api, namespace, CHECKPOINT))
    wait_phase(kube_api, namespace, "Ready", timeout=120)
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    scrape = urllib.request.urlopen(url, timeout=10).read().decode()
    sampled, declared = exposed(scrape)
    assert f'trtrefit_model_phase{{name="tiny",namespace="{namespace}",phase="Ready"}} 1.0' in scrape

    queries = {f"alert {name}": [expr] for name, expr in rule_expressions(monitoring).items()}
    queries |= {f"panel {title}": exprs for title, exprs in dashboard_expressions(monitoring).items()}
    used = {name: where for where, exprs in queries.items() for expr in exprs for name in metric_names(expr)}
    assert len(used) >= 8, used
    unknown = {name: where for name, where in used.items() if name not in sampled | declared}
    assert unknown == {}, f"queried but not exported by the operator: {unknown}"
    # What a refit and a rollout produce has samples, not just a declaration (the error counter may be empty).
    empty = {name for name in used if name not in sampled} - {"trtrefit_reconcile_errors_total"}
    assert empty == set(), f"no samples after a refit and a rollout: {empty}"

    # Bounded: deleting the TRTModel drops its series (the operator-wide counters stay).
    client.CustomObjectsApi(kube_api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "tiny"
    )

    def forgotten() -> str:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        return text if f'namespace="{namespace}"' not in text else ""

    after = wait_for(forgotten, timeout=30, what="the deleted TRTModel's series gone from /metrics")
    assert 'trtrefit_refits_total{outcome="Passed"} 1.0' in after
