"""The chart's alerts (a PrometheusRule): unit-tested with Prometheus' own `promtool test
rules` on the rules the chart renders, every alert firing and staying silent, each linked
to its runbook in the README."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from devtools import manifests
from devtools.control_plane import tool

TESTS = Path(__file__).parent / "alerts" / "wa-controller.test.yaml"


def rendered_rule(*values: str) -> dict[str, Any]:
    """The PrometheusRule of release "wa" in namespace "monitoring" (what the tests name)."""
    rendered = subprocess.run(
        [str(tool("helm")), "template", "wa", str(manifests.CHART), "--namespace",
         "monitoring", "--set", "metrics.prometheusRule.enabled=true", *values],
        capture_output=True, text=True, check=True).stdout
    [rule] = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "PrometheusRule"]
    return rule


def alerts(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def test_promtool_passes_every_alert_firing_and_staying_silent(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(
        {"groups": rendered_rule()["spec"]["groups"]}))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    result = subprocess.run([str(tool("promtool")), "test", "rules", str(tmp_path / TESTS.name)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    names = set(alerts(rendered_rule()))
    cases = [case for test in yaml.safe_load(TESTS.read_text())["tests"]
             for case in test["alert_rule_test"]]
    assert {c["alertname"] for c in cases if c["exp_alerts"]} == names
    assert {c["alertname"] for c in cases if not c["exp_alerts"]} == names
    assert names == {"WAControllerAbsent", "WAInstanceNotAnswering", "WAAccountsLost",
                     "WAAccountsPairingTooLong", "WAAccountsPendingTooLong",
                     "WAReassignmentsHigh", "WAMirrorLagging", "WAMirrorFailing",
                     "WAWebhooksRefused"}


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a page."""
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)}


def test_every_alert_links_its_runbook_section_in_the_readme() -> None:
    readme = (manifests.ROOT / "README.md").read_text()
    anchors = github_anchors(readme)
    for name, rule in alerts(rendered_rule()).items():
        base, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert base == "https://github.com/wa-controller/wa-controller/blob/main/README.md"
        assert anchor == name.lower()
        assert anchor in anchors, f"no README section for {name}"
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


def test_thresholds_runbooks_and_the_operators_series_are_values() -> None:
    rule = rendered_rule(
        "--set", "metrics.prometheusRule.pairingFor=2h",
        "--set", "metrics.prometheusRule.reassignmentsThreshold=25",
        "--set", "metrics.prometheusRule.runbookBaseUrl=https://wiki.example/wa",
        "--set", "metrics.prometheusRule.upSelector=job=\"wa-operator\"",
        "--set", "metrics.prometheusRule.labels.release=prometheus",
        "--set", "probe.interval=600")
    rules = alerts(rule)
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rules["WAAccountsPairingTooLong"]["for"] == "2h"
    assert rules["WAAccountsPairingTooLong"]["annotations"]["summary"].endswith("for 2h.")
    assert rules["WAReassignmentsHigh"]["expr"].endswith("> 25")
    assert rules["WAControllerAbsent"]["expr"] == 'absent(up{job="wa-operator"} == 1)'
    assert rules["WAAccountsLost"]["annotations"]["runbook_url"] == \
        "https://wiki.example/wa#waaccountslost"
    # A probe counts as fresh for three probe intervals (at least five minutes).
    assert "time() - 1800" in rules["WAInstanceNotAnswering"]["expr"]


def test_no_rule_without_metrics() -> None:
    rendered = subprocess.run(
        [str(tool("helm")), "template", "wa", str(manifests.CHART),
         "--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.enabled=false"],
        capture_output=True, text=True, check=True).stdout
    assert "PrometheusRule" not in rendered


def test_the_rules_read_only_series_the_operator_exports() -> None:
    """A metric renamed in controller/metrics.py must not leave an alert watching nothing."""
    from prometheus_client import REGISTRY

    import controller.metrics  # noqa: F401 - registers every metric

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",)}
    exported = {family.name + suffix for family in REGISTRY.collect()
                for suffix in suffixes.get(family.type, ())}
    for name, rule in alerts(rendered_rule()).items():
        used = set(re.findall(r"\bwa_controller_\w+", rule["expr"]))
        assert used or name == "WAControllerAbsent", name  # that one reads Prometheus' `up`
        assert used <= exported, f"{name} reads {used - exported}, which nothing exports"
