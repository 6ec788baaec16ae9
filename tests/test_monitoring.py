"""deploy/prometheus and deploy/grafana: the rules load and fire as meant, and every metric they
name is one the receiver exposes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from receiver.metrics import exposed_names

TOP = Path(__file__).resolve().parent.parent
DEPLOY = TOP / "deploy"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (deploy/check.sh installs it)"
)


def check_names(*files: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(TOP)}
    return subprocess.run(
        [sys.executable, str(DEPLOY / "check_metric_names.py"), *map(str, files)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def test_every_metric_the_rules_and_the_dashboard_name_is_exposed():
    proc = check_names()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("all exposed") == 3


def test_a_dashboard_naming_a_metric_the_receiver_lacks_fails_the_check(tmp_path):
    dashboard = tmp_path / "dash.json"
    dashboard.write_text('{"expr": "rate(receiver_notifications_count[5m])"}')
    proc = check_names(dashboard)
    assert proc.returncode == 1
    assert "receiver_notifications_count is not a metric the receiver exposes" in proc.stderr


def test_exposed_names_are_the_sample_names_of_spec_metrics():
    names = exposed_names()
    assert {
        "receiver_notifications_total",
        "receiver_notification_seconds_bucket",
        "receiver_http_refusals_total",
        "receiver_ledger_batch_size_count",
        "receiver_database_up",
        "receiver_reconcile_queries_total",
        "receiver_orders_overdue",
        "receiver_orders_needs_review",
        "receiver_build_info",
        "receiver_deliveries_total",
        "receiver_delivery_lag_seconds",
    } <= names
    assert "receiver_notifications" not in names


def test_the_alerts_cover_what_an_operator_must_hear_of():
    yaml = pytest.importorskip("yaml")
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert "receiver_orders_overdue" in exprs["ReceiverOrdersOverdue"]
    assert 'outcome="bad_signature"' in exprs["ReceiverBadSignatureRise"]
    assert "amount_mismatch" in exprs["ReceiverAmountMismatch"]
    assert 'status="503"' in exprs["ReceiverReplying503"]
    assert "receiver_database_up" in exprs["ReceiverDatabaseDown"]
    assert "receiver_reconcile_queries_total" in exprs["ReceiverReconcileErrors"]
    assert "receiver_orders_needs_review" in exprs["ReceiverOrdersNeedReview"]
    assert "receiver_delivery_lag_seconds" in exprs["ReceiverDeliveryLagging"]
    assert 'result="failed"' in exprs["ReceiverDeliveryFailed"]


def test_the_dashboard_queries_prometheus_through_a_datasource_variable():
    dashboard = json.loads((DEPLOY / "grafana" / "receiver.json").read_text())
    targets = [t for p in dashboard["panels"] for t in p["targets"]]
    assert targets and all(t["expr"] and t["datasource"]["uid"] == "${datasource}" for t in targets)
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    rules = DEPLOY / "prometheus"
    return subprocess.run([PROMTOOL, *args], cwd=rules, capture_output=True, text=True, check=False)


@needs_promtool
def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
