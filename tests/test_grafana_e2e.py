"""Grafana dashboards: provisionable as shipped, built only on metrics the gateway exports, and
every panel query returns data from a real Prometheus scraping a real gateway with traffic.

The end-to-end test runs the Debian ``prometheus`` binary (installed by scripts/test) against
a gateway in this process, scraping it every second, then evaluates through Prometheus' HTTP
API every panel query of every dashboard (template variables substituted as Grafana would:
$job, $instance and $channel as one value and as All) and every expression of alerts.yml. With
another instance or job selected every query must come back empty (each one is scoped), and
the variables' own label_values queries must list the scraped job, instance and channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
import yaml
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .conftest import RunningGateway, StartGateway, request

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARD_DIR.glob("*.json"))
DATASOURCE_FILE = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDER_FILE = ROOT / "grafana" / "provisioning" / "dashboards" / "wsgateway.yml"
ALERTS_FILE = ROOT / "alerts.yml"

DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
#: The channel matcher of each dashboard: the overview takes several channels (or All), the
#: channel dashboard is the drill-down into exactly one.
CHANNEL_MATCHERS = {
    "wsgateway-overview": 'channel=~"$channel"',
    "wsgateway-channel": 'channel="$channel"',
}
#: Every selector of every query carries these: the dashboards show the selected jobs and
#: instances (several nodes) only.
SCOPE_MATCHERS = ('job=~"$job"', 'instance=~"$instance"')
# What Grafana would put in place of its built-in variables for a 1 s scrape interval.
BUILTINS = {"__rate_interval": "15s", "__interval": "5s", "__range": "5m"}
#: The variables as Grafana renders them, per dashboard: one value of each (``TARGET`` is the
#: scraped gateway's instance), and "All" (allValue ``.*``) where a variable allows it.
TARGET = "$target"
SELECTIONS: dict[str, tuple[dict[str, str], ...]] = {
    "wsgateway-overview": (
        {"job": "wsgateway", "instance": TARGET, "channel": "ticker|trades"},
        {"job": ".*", "instance": ".*", "channel": ".*"},
    ),
    "wsgateway-channel": (
        {"job": "wsgateway", "instance": TARGET, "channel": "ticker"},
        {"job": ".*", "instance": ".*", "channel": "orderbook"},
    ),
}
# Channels with steady traffic in the end-to-end test, and what each client subscribes to.
SUBSCRIPTIONS = {
    "ticker": ["BTC-USD", "ETH-USD"],
    "trades": ["*"],
    "orderbook": ["BTC-USD"],
    "market": ["*"],
}
SCRAPES_BEFORE_CHECKING = 5
JOB = "wsgateway"  # the job name of the shipped prometheus.yml (the alert rules select it)

METRIC_NAME = re.compile(r"(?<![\w:])((?:wsgateway|process)_[A-Za-z0-9_:]*)")
SELECTOR = re.compile(r"(?<![\w:])((?:wsgateway|process)_[A-Za-z0-9_]+)\s*(\{[^}]*\})?")
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")

pytestmark = pytest.mark.e2e


# -- reading the shipped files ----------------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel of one dashboard."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def where(self) -> str:
        return f"{self.dashboard} / {self.panel!r} ({self.ref_id})"


def load_dashboard(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included (a collapsed row holds its panels)."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def visual_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (p for p in all_panels(dashboard["panels"]) if p["type"] != "row")


def panel_queries() -> list[PanelQuery]:
    queries = []
    for path in DASHBOARD_FILES:
        dashboard = load_dashboard(path)
        for panel in visual_panels(dashboard):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    queries.append(
                        PanelQuery(path.stem, panel["title"], target["refId"], target["expr"])
                    )
    return queries


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def substitute(expr: str, selection: dict[str, str]) -> str:
    """``expr`` with Grafana's template variables replaced; unknown ones are left as they are
    (and then fail the test as a leftover ``$``)."""
    values = {**selection, **BUILTINS}

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        return values.get(name, match.group(0))

    return VARIABLE.sub(replace, expr)


def load_rules() -> list[dict[str, Any]]:
    """Every rule of alerts.yml (alerting and recording), or none while it does not exist."""
    if not ALERTS_FILE.exists():
        return []
    document = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8")) or {}
    return [rule for group in document.get("groups", []) for rule in group.get("rules", [])]


def rule_name(rule: dict[str, Any]) -> str:
    return str(rule.get("alert") or rule.get("record"))


def datasource_uid() -> str:
    document = yaml.safe_load(DATASOURCE_FILE.read_text(encoding="utf-8"))
    (source,) = document["datasources"]
    assert source["type"] == "prometheus"
    return str(source["uid"])


# -- static checks ----------------------------------------------------------------------------


def test_provisioning_files() -> None:
    assert datasource_uid() == "wsgateway-prometheus"
    provider_doc = yaml.safe_load(PROVIDER_FILE.read_text(encoding="utf-8"))
    (provider,) = provider_doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/wsgateway"
    assert [p.name for p in DASHBOARD_FILES] == [
        "wsgateway-channel.json",
        "wsgateway-overview.json",
    ]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_dashboard_is_well_formed(path: Path) -> None:
    dashboard = load_dashboard(path)
    assert dashboard["uid"] == path.stem, "the uid is fixed: links and bookmarks use it"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["title"] and dashboard.get("id") is None

    found = variables(dashboard)
    assert list(found) == ["datasource", "job", "instance", "channel"], "in dependency order"
    datasource = found["datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    assert datasource["current"]["value"] == datasource_uid(), "defaults to the provisioned uid"
    expected_queries = {
        "job": "label_values(wsgateway_build_info,job)",
        "instance": 'label_values(wsgateway_build_info{job=~"$job"},instance)',
        "channel": 'label_values(wsgateway_connections_active{job=~"$job",instance=~"$instance"},'
        "channel)",
    }
    for name, expected in expected_queries.items():
        variable = found[name]
        assert variable["type"] == "query" and variable["datasource"] == DATASOURCE_REF, name
        query = variable["query"]
        query_text = query["query"] if isinstance(query, dict) else query
        for text in (query_text, variable["definition"]):
            assert re.sub(r"\s", "", text) == expected, name
        several = name != "channel" or path.stem == "wsgateway-overview"
        assert variable["multi"] is several and variable["includeAll"] is several, name
        if several:
            assert variable["allValue"] == ".*", name
    channel_matcher = CHANNEL_MATCHERS[path.stem]

    ids = [p["id"] for p in all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    panels = list(visual_panels(dashboard))
    assert len(panels) >= 15
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == DATASOURCE_REF, title
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title}: no unit"
        assert panel.get("description"), f"{title}: no description"
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), title
        targets = panel["targets"]
        assert targets, f"{title}: no query"
        assert len({t["refId"] for t in targets}) == len(targets), title
        for target in targets:
            expr = target["expr"]
            assert target.get("datasource", DATASOURCE_REF) == DATASOURCE_REF, title
            if panel["type"] == "timeseries":
                assert target.get("legendFormat"), f"{title}: a series without a legend"
            for name, matchers in SELECTOR.findall(expr):
                for matcher in SCOPE_MATCHERS:
                    assert matcher in matchers, f"{title}: {name} not filtered by {matcher}"
            if path.stem == "wsgateway-channel":
                assert channel_matcher in expr, f"{title}: not filtered by the channel"
            # Multi-value and All: only a regex match works, never channel="$channel".
            multi = re.search(r'channel\s*(=|!=)\s*"\$', expr)
            assert bool(multi) is (path.stem == "wsgateway-channel"), (title, expr)
            for window in re.findall(r"\[([^\]]*)\]", expr):
                assert window.startswith("$__"), f"{title}: fixed rate() window [{window}]"


def test_panels_show_sizes_in_bytes() -> None:
    """A histogram of bytes is drawn on a byte axis; its cells are frames per second."""
    heatmaps = [
        panel
        for path in DASHBOARD_FILES
        for panel in visual_panels(load_dashboard(path))
        if panel["type"] == "heatmap"
    ]
    assert heatmaps
    for panel in heatmaps:
        (target,) = panel["targets"]
        assert "_bytes_bucket" in target["expr"], panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"] == "bytes", panel["title"]
        assert panel["options"]["yAxis"]["unit"] == "bytes", panel["title"]
        assert panel["options"]["cellValues"]["unit"] == "ops", panel["title"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_usage_against_limits_is_shown(path: Path) -> None:
    titles = {panel["title"]: panel for panel in visual_panels(load_dashboard(path))}
    for title, metric in (
        ("Connections vs max_connections", "wsgateway_limit_connections"),
        ("Fullest client queue vs max_outbox_bytes", "wsgateway_limit_bytes"),
    ):
        panel = titles[title]
        assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"
        assert metric in panel["targets"][0]["expr"]


# -- the metric names -------------------------------------------------------------------------


async def scrape(gw: RunningGateway) -> str:
    async with aiohttp.ClientSession() as session, session.get(gw.http + "/metrics") as response:
        assert response.status == 200
        return await response.text()


async def test_every_metric_in_the_dashboards_and_rules_is_exported(gw: RunningGateway) -> None:
    """Names as Prometheus stores them: ``_total`` of counters, ``_bucket``/``_sum``/
    ``_count`` of histograms (no ``_created``: wsgateway/scrape.py), ``process_*``."""
    families = list(text_string_to_metric_families(await scrape(gw)))
    exported = {sample.name for family in families for sample in family.samples}
    with_channel = {
        sample.name
        for family in families
        for sample in family.samples
        if "channel" in sample.labels
    }
    rules = load_rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}

    used: dict[str, str] = {}
    for query in panel_queries():
        for name in METRIC_NAME.findall(query.expr):
            used.setdefault(name, query.where())
        if "process_" in query.expr:
            continue  # a per-process figure: every channel of the process counts
        for name, matchers in SELECTOR.findall(query.expr):
            if name in with_channel:
                assert CHANNEL_MATCHERS[query.dashboard] in matchers, (
                    f"{query.where()}: {name} not filtered by $channel"
                )
    for rule in rules:
        for name in METRIC_NAME.findall(str(rule["expr"])):
            if ":" not in name and name not in recorded:
                used.setdefault(name, f"alerts.yml / {rule_name(rule)}")
    assert any(name.startswith("process_") for name in used)
    missing = {name: where for name, where in used.items() if name not in exported}
    assert not missing, f"used but not exported: {missing}"


# -- end to end: a real Prometheus scraping a gateway with traffic ----------------------------


#: Prometheus binds port 0 and logs the port it got (at level info): a port picked here and
#: freed before Prometheus binds it can be taken by a parallel test in between.
LISTENING = re.compile(r'msg="Listening on" address=127\.0\.0\.1:(\d+)')


def write_prometheus_config(workdir: Path, target: str) -> Path:
    """A config scraping ``target`` every second, with alerts.yml beside it when it exists."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
    }
    if ALERTS_FILE.exists():
        shutil.copy(ALERTS_FILE, workdir / "alerts.yml")
        config["rule_files"] = ["alerts.yml"]
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def open_log(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def log_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(log_text(path).splitlines()[-lines:]) or "(no log)"


@dataclass
class Prometheus:
    url: str
    log: Path
    process: asyncio.subprocess.Process

    def failure(self, message: str) -> str:
        return f"{message}\n--- prometheus log ---\n{log_tail(self.log)}"


@contextlib.asynccontextmanager
async def run_prometheus(workdir: Path, target: str) -> AsyncIterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary, "the Debian package prometheus is needed (scripts/test installs it)"
    config = write_prometheus_config(workdir, target)
    log = workdir / "prometheus.log"
    log_fd = open_log(log)
    try:
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            "--web.listen-address=127.0.0.1:0",
            "--log.level=info",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
        )
    finally:
        os.close(log_fd)
    try:
        port = await announced_port(process, log)
        yield Prometheus(f"http://127.0.0.1:{port}", log, process)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def announced_port(process: asyncio.subprocess.Process, log: Path) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not (found := LISTENING.search(log_text(log))):
        if process.returncode is not None or loop.time() > deadline:
            raise AssertionError(f"prometheus did not listen:\n{log_tail(log)}")
        await asyncio.sleep(0.05)
    return int(found.group(1))


async def drain(ws: websockets.ClientConnection) -> None:
    """Read everything the server sends, so no client becomes a slow consumer."""
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass


async def publish_forever(gw: RunningGateway) -> None:
    """Updates on every subscribed channel, ~25 rounds a second, of varied sizes."""
    book = {
        "bids": [[65000 - i, 0.5] for i in range(40)],
        "asks": [[65001 + i, 0.5] for i in range(40)],
    }
    i = 0
    while True:
        i += 1
        await gw.publish("ticker", "BTC-USD", {"price": 65000 + i % 7, "i": i})
        await gw.publish("ticker", "ETH-USD", {"price": 3400 + i % 5, "i": i})
        await gw.publish("trades", "ETH-USD", {"qty": i % 3 + 1, "side": "buy", "i": i})
        # A whole book every 10 rounds, level changes in between (orderbook is a book).
        if i % 10 == 1:
            await gw.publish("orderbook", "BTC-USD", {**book, "snapshot": True})
        else:
            await gw.publish("orderbook", "BTC-USD", {"bids": [[65000 - i % 40, i % 3]]})
        await gw.publish("market", "SOL-USD", {"status": "open", "i": i})
        await asyncio.sleep(0.04)


async def misbehave_forever(gw: RunningGateway, client: websockets.ClientConnection) -> None:
    """Once a second: a ping, a bad frame, a short-lived connection and a refused one."""
    while True:
        await client.send(json.dumps({"type": "ping"}))
        await client.send("not json")
        async with websockets.connect(gw.ws_url("trades")) as short:
            await request(short, {"type": "subscribe", "topics": ["BTC-USD"]})
        with contextlib.suppress(InvalidStatus):  # `user` without a token: 401
            async with websockets.connect(gw.ws_url("user")):
                pass
        await asyncio.sleep(1)


@contextlib.asynccontextmanager
async def steady_traffic(gw: RunningGateway) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for channel, topics in SUBSCRIPTIONS.items():
            ws = await stack.enter_async_context(websockets.connect(gw.ws_url(channel)))
            reply = await request(ws, {"type": "subscribe", "topics": topics})
            assert reply["type"] == "subscribed", reply
            clients[channel] = ws
        tasks = [asyncio.create_task(drain(ws)) for ws in clients.values()]
        tasks.append(asyncio.create_task(publish_forever(gw)))
        tasks.append(asyncio.create_task(misbehave_forever(gw, clients["ticker"])))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        # Reached only when the test body passed: a failed traffic task fails it too.
        errors = [r for r in results if not isinstance(r, asyncio.CancelledError | None)]
        assert not errors, f"traffic failed: {errors!r}"


class PrometheusAPI:
    def __init__(self, session: aiohttp.ClientSession, prometheus: Prometheus) -> None:
        self.session = session
        self.prometheus = prometheus

    async def get(self, path: str, **params: str) -> dict[str, Any]:
        url = self.prometheus.url + path
        async with self.session.post(url, data=params) if params else self.session.get(url) as r:
            document: dict[str, Any] = await r.json(content_type=None)
            return document

    async def query(self, expr: str) -> dict[str, Any]:
        """Instant query at now; the whole answer (``status``, ``data`` or ``error``)."""
        return await self.get("/api/v1/query", query=expr, time=f"{time.time():.3f}")

    async def label_values(self, label: str, match: str) -> list[str]:
        url = f"{self.prometheus.url}/api/v1/label/{label}/values"
        async with self.session.get(url, params={"match[]": match}) as r:
            document = await r.json(content_type=None)
            assert document["status"] == "success", document
            return list(document["data"])

    async def scalar(self, expr: str) -> float:
        answer = await self.query(expr)
        assert answer["status"] == "success", answer
        result = answer["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    async def ready(self) -> bool:
        async with self.session.get(self.prometheus.url + "/-/ready") as r:
            return r.status == 200

    async def wait_for_scrapes(self, timeout: float) -> None:
        """Until the gateway target is up and has been scraped a few times (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        scrapes = 0.0
        while True:
            if self.prometheus.process.returncode is not None:
                raise AssertionError(self.prometheus.failure("prometheus exited"))
            # Prometheus listens before its storage is ready and answers 503 meanwhile.
            with contextlib.suppress(aiohttp.ClientError):
                if await self.ready():
                    scrapes = await self.scalar(
                        f'min(count_over_time(up{{job="{JOB}"}}[1m]) and up{{job="{JOB}"}} == 1)'
                    )
                    if scrapes >= SCRAPES_BEFORE_CHECKING:
                        return
            if loop.time() > deadline:
                raise AssertionError(
                    self.prometheus.failure(f"{scrapes:.0f} good scrapes after {timeout} s")
                )
            await asyncio.sleep(0.25)


def has_data(data: dict[str, Any]) -> bool:
    """At least one series with at least one finite value (NaN/Inf is not an answer)."""
    result = data["result"]
    if data["resultType"] == "scalar":
        return math.isfinite(float(result[1]))
    values = [
        float(sample[1])
        for series in result
        for sample in ([series["value"]] if "value" in series else series["values"])
    ]
    return any(math.isfinite(v) for v in values)


async def check_panels(api: PrometheusAPI, target: str) -> tuple[list[str], list[str]]:
    """(queries that do not parse, queries without data), each as "where: expr: why"."""
    broken, empty = [], []
    for query in panel_queries():
        for selection in SELECTIONS[query.dashboard]:
            chosen = {k: target if v == TARGET else v for k, v in selection.items()}
            expr = substitute(query.expr, chosen)
            if "$" in expr:
                broken.append(f"{query.where()}: unknown template variable in {expr}")
                continue
            answer = await api.query(expr)
            if answer["status"] != "success":
                broken.append(f"{query.where()}: {expr}: {answer.get('error')}")
            elif not has_data(answer["data"]):
                empty.append(f"{query.where()} with {chosen}: {expr}: no data")
    return broken, empty


async def check_scoped(api: PrometheusAPI) -> list[str]:
    """Queries that still answer with another instance selected: a panel that ignores
    $instance (or $job) would show every node whatever is chosen."""
    unscoped = []
    for query in panel_queries():
        for other in (
            {"job": "wsgateway", "instance": "other:1"},
            {"job": "other", "instance": ".*"},
        ):
            expr = substitute(query.expr, {**other, "channel": "ticker"})
            answer = await api.query(expr)
            if answer["status"] == "success" and has_data(answer["data"]):
                unscoped.append(f"{query.where()} with {other}: {expr}: answers")
    return unscoped


async def check_variables(api: PrometheusAPI, target: str) -> list[str]:
    """The variables' own queries, as Grafana's label_values runs them: the series API."""
    failures = []
    for path in DASHBOARD_FILES:
        found = variables(load_dashboard(path))
        for name, expected in (("job", JOB), ("instance", target), ("channel", "ticker")):
            definition = substitute(found[name]["definition"], {"job": JOB, "instance": target})
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", definition)
            assert match, definition
            values = await api.label_values(match.group(2), match.group(1))
            if expected not in values:
                failures.append(f"{path.stem} ${name}: {definition} gave {values}")
    return failures


async def check_rules(api: PrometheusAPI) -> list[str]:
    """Every rule expression parses and evaluates; Prometheus loaded every group of the file."""
    failures = []
    for rule in load_rules():
        answer = await api.query(str(rule["expr"]))
        if answer["status"] != "success":
            failures.append(f"alerts.yml / {rule_name(rule)}: {rule['expr']}: {answer['error']}")
    if ALERTS_FILE.exists():
        loaded = await api.get("/api/v1/rules")
        names = {r["name"] for g in loaded["data"]["groups"] for r in g["rules"]}
        expected = {rule_name(rule) for rule in load_rules()}
        if names != expected:
            failures.append(f"prometheus loaded rules {sorted(names)}, alerts.yml has {expected}")
        for group in loaded["data"]["groups"]:
            for r in group["rules"]:
                if r.get("health") == "err":
                    failures.append(f"alerts.yml / {r['name']}: {r.get('lastError')}")
    return failures


async def check_everything(api: PrometheusAPI, target: str) -> list[str]:
    """Every panel, alert rule, dashboard variable and the scoping of every query, against
    the node scraped as ``target``. Parse errors are final; a panel without data may only lack
    samples: a few more scrapes while traffic keeps flowing (up to 10 s), then report."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        broken, empty = await check_panels(api, target)
        if broken or not empty or loop.time() > deadline:
            break
        await asyncio.sleep(1)
    failures = broken + empty + await check_rules(api)
    return failures + await check_scoped(api) + await check_variables(api, target)


@pytest.mark.timeout(120)
async def test_every_panel_and_alert_query_works_against_a_real_prometheus(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway()
    queries = panel_queries()
    assert len(queries) >= 40
    with tempfile.TemporaryDirectory(prefix="wsgateway-prometheus-") as tmp:
        async with (
            steady_traffic(gw),
            run_prometheus(Path(tmp), f"127.0.0.1:{gw.server.port}") as prometheus,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        ):
            api = PrometheusAPI(session, prometheus)
            await api.wait_for_scrapes(timeout=30)
            failures = await check_everything(api, f"127.0.0.1:{gw.server.port}")
            assert not failures, prometheus.failure(
                f"{len(failures)} failing queries:\n" + "\n".join(failures)
            )
