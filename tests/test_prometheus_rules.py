"""The Prometheus side of the observability pack, checked with the real tools.

`promtool` (Debian package `prometheus`, installed by scripts/test) validates prometheus.yml,
the alert rules and their unit tests, and lints a real scrape of a running gateway. The rules
are also checked against the runbook (every alert links to an existing section) and against
the gateway (every metric and label they use is exported).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
import yaml
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus

from .conftest import RunningGateway, recv_json, request, until

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_YML = ROOT / "prometheus.yml"
ALERTS_YML = ROOT / "alerts.yml"
ALERT_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"

# What the issue asks the rules to cover, by alert name.
REQUIRED_ALERTS = {
    "WSGatewayDown",
    "WSGatewayLowSuccessRate",
    "WSGatewaySlowConsumersRising",
    "WSGatewayRateLimitSpike",
    "WSGatewayConnectionRejectionSpike",
    "WSGatewayHighDeliveryLatency",
    "WSGatewayBrokerDisconnected",
    "WSGatewayFeedSilent",
    "WSGatewayHighMemoryPerConnection",
    "WSGatewayFileDescriptorsNearLimit",
    "WSGatewayNearMaxConnections",
    "WSGatewayOutboxNearLimit",
}
SEVERITIES = {"critical", "warning"}
RUNBOOK_URL = re.compile(r"^docs/runbook\.md#(?P<anchor>[a-z0-9_-]+)$")
METRIC_NAME = re.compile(r"\b(?:wsgateway|process)_[a-zA-Z0-9_]*[a-zA-Z0-9]")
SELECTOR = re.compile(r"\b(?P<name>(?:wsgateway|process)_\w+)\s*\{(?P<matchers>[^}]*)\}")
MATCHER = re.compile(r'(?P<label>\w+)\s*(?P<op>=~|!~|!=|=)\s*"(?P<value>[^"]*)"')
GROUPING = re.compile(r"\b(?:by|on)\s*\((?P<labels>[^)]*)\)")
# Labels that Prometheus adds (target labels) or that belong to histogram buckets.
TARGET_LABELS = {"job", "instance", "le"}
PROMTOOL_TIMEOUT = 60.0


def promtool() -> str:
    """The path of promtool; a missing tool fails the test (it is part of the test setup)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found on PATH: these tests need the Debian package `prometheus`, "
            "which scripts/test installs (apt-get install prometheus)",
            pytrace=False,
        )
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT,
        check=False,
    )


def report(result: subprocess.CompletedProcess[str]) -> str:
    command = " ".join(result.args[1:]) if isinstance(result.args, list) else str(result.args)
    return (
        f"promtool {command} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS_YML.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    anchors = set()
    for line in RUNBOOK.read_text().splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            anchors.add(github_anchor(heading.group(1)))
    anchors.update(re.findall(r'<a\s+(?:id|name)="([^"]+)"', RUNBOOK.read_text()))
    return anchors


# -- promtool -----------------------------------------------------------------------------------


def test_promtool_checks_the_config() -> None:
    result = run_promtool("check", "config", str(PROMETHEUS_YML.relative_to(ROOT)))
    assert result.returncode == 0, report(result)
    # The config loads the rules file beside it.
    assert "1 rule files found" in result.stdout, report(result)


def test_promtool_checks_the_rules() -> None:
    result = run_promtool("check", "rules", str(ALERTS_YML.relative_to(ROOT)))
    assert result.returncode == 0, report(result)
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout, report(result)


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = run_promtool("test", "rules", str(ALERT_TESTS.relative_to(ROOT)))
    assert result.returncode == 0, report(result)
    assert "SUCCESS" in result.stdout, report(result)


def test_prometheus_yml_scrapes_the_gateway_and_loads_the_rules_beside_it() -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "wsgateway"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert "127.0.0.1:8080" in targets
    assert len(targets) == len(set(targets)), "one target per process, no duplicates"


# -- the rules, the runbook and the unit tests --------------------------------------------------


def test_the_required_alerts_exist() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(names)


def test_every_alert_has_severity_annotations_and_a_runbook_section() -> None:
    anchors = runbook_anchors()
    for rule in alert_rules():
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary", "").strip(), f"{name}: no summary"
        description = annotations.get("description", "").strip()
        assert description, f"{name}: no description"
        assert "$labels" in description or "$value" in description, (
            f"{name}: the description should name the instance/channel or value"
        )
        url = annotations.get("runbook_url", "")
        match = RUNBOOK_URL.match(url)
        assert match, f"{name}: runbook_url {url!r} is not docs/runbook.md#section"
        assert match["anchor"] in anchors, (
            f"{name}: docs/runbook.md has no section #{match['anchor']}"
        )


def test_every_alert_has_unit_tests_firing_and_not_firing() -> None:
    document = yaml.safe_load(ALERT_TESTS.read_text())
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in document["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown staying quiet"


def test_every_rule_selects_the_gateway_job() -> None:
    """process_* metrics come from many exporters: every selector must pin the job."""
    for rule in alert_rules():
        for selector in SELECTOR.finditer(rule["expr"]):
            assert 'job="wsgateway"' in selector["matchers"], (rule["alert"], selector[0])


# -- against a running gateway ------------------------------------------------------------------


async def drive_traffic(gw: RunningGateway) -> None:
    """Connections, subscriptions, updates, a bad frame, a ping and a rejected upgrade."""
    async with (
        websockets.connect(gw.ws_url("ticker")) as a,
        websockets.connect(gw.ws_url("trades")) as b,
    ):
        assert (await request(a, {"type": "subscribe", "topics": ["BTC-USD"]}))["type"] == (
            "subscribed"
        )
        assert (await request(b, {"type": "subscribe", "topics": ["*"]}))["type"] == "subscribed"
        assert (await request(a, "not json"))["code"] == "bad_json"
        assert (await request(b, {"type": "ping", "id": 1}))["type"] == "pong"
        for i in range(5):
            await gw.publish("ticker", "BTC-USD", {"price": 65000 + i})
            await gw.publish("trades", "ETH-USD", {"price": 3000 + i, "size": 0.1})
        for _ in range(5):
            assert (await recv_json(a))["type"] == "update"
            assert (await recv_json(b))["type"] == "update"
        with pytest.raises(InvalidStatus):  # `user` without a jwt_secret: 401
            async with websockets.connect(gw.ws_url("user")):
                pass
    await until(lambda: gw.gateway.metrics_json()["total_active_connections"] == 0)


async def scrape(gw: RunningGateway) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.http + "/metrics", headers={"Accept": "text/plain"}) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain"), response.headers
        return await response.text()


@pytest.mark.e2e
async def test_promtool_finds_no_lint_problem_in_a_scrape(gw: RunningGateway) -> None:
    await drive_traffic(gw)
    text = await scrape(gw)
    process = await asyncio.create_subprocess_exec(
        promtool(),
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(text.encode()), PROMTOOL_TIMEOUT)
    output = (stdout + stderr).decode()
    assert process.returncode == 0, f"promtool check metrics exited {process.returncode}:\n{output}"
    assert output.strip() == "", f"promtool check metrics reported:\n{output}"


@pytest.mark.e2e
async def test_every_metric_and_label_the_rules_use_is_exported(gw: RunningGateway) -> None:
    await drive_traffic(gw)
    families = list(text_string_to_metric_families(await scrape(gw)))
    family_types = {family.name: family.type for family in families}
    labels_of: dict[str, set[str]] = defaultdict(set)
    values_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    for family in families:
        for sample in family.samples:
            for label, value in sample.labels.items():
                labels_of[sample.name].add(label)
                values_of[sample.name, label].add(value)
    exported = set(labels_of) | {s.name for f in families for s in f.samples}

    for rule in alert_rules():
        expr: str = rule["expr"]
        used = set(METRIC_NAME.findall(expr))
        for name in used:
            # A histogram's series: NAME_bucket / NAME_count / NAME_sum of family NAME.
            for suffix in ("_bucket", "_count", "_sum"):
                base = name.removesuffix(suffix)
                if base != name and base in family_types:
                    assert family_types[base] == "histogram", (rule["alert"], name)
            assert name in exported, f"{rule['alert']}: the gateway does not export {name}"

        for selector in SELECTOR.finditer(expr):
            name = selector["name"]
            for matcher in MATCHER.finditer(selector["matchers"]):
                label, op, value = matcher["label"], matcher["op"], matcher["value"]
                if label in TARGET_LABELS:
                    continue
                assert label in labels_of[name], f"{rule['alert']}: {name} has no label {label}"
                if op in ("=", "!="):
                    assert value in values_of[name, label], (
                        f"{rule['alert']}: {name} never has {label}={value!r}"
                    )

        carried = set().union(*(labels_of[name] for name in used)) | TARGET_LABELS
        for grouping in GROUPING.finditer(expr):
            for label in (part.strip() for part in grouping["labels"].split(",")):
                assert label in carried, f"{rule['alert']}: no metric it uses has label {label}"
