"""docs/protocol.md is the public contract: it must name every error code, close code and
setting the code has, and nothing the code no longer has.

The code side is collected from where the code defines it (the error classes of
errors.py, the settings dataclasses, the literals and aiohttp close codes the sources use),
so a new error class, close code or setting fails here until the reference documents it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import WSCloseCode

from wsgateway import errors
from wsgateway.metrics import CLIENT_ERROR_CODES
from wsgateway.settings import Limits, Settings

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "protocol.md").read_text()
SOURCES = {
    path: path.read_text()
    for path in sorted((ROOT / "wsgateway").rglob("*.py"))
    if "loadgen" not in path.parts  # the load generator is a client, not the gateway
}
#: Settings fields that are tables of the file rather than settings of their own
TABLES = {"defaults": "[defaults]", "overrides": "[channel.NAME]"}


def subclasses(cls: type) -> Iterator[type]:
    yield cls
    for sub in cls.__subclasses__():
        yield from subclasses(sub)


def section(title: str) -> str:
    """The text of the section whose heading is ``title``, up to the next heading of the same
    or a higher level."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", DOC, re.MULTILINE)
    assert match, f"docs/protocol.md has no section {title!r}"
    level = len(match.group(1))
    rest = DOC[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def first_cells(text: str) -> list[str]:
    """The first cell of every body row of the tables in ``text`` (not headers, not rules)."""
    cells: list[str] = []
    in_table = False
    for line in text.splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        cell = line.split("|")[1].strip()
        if in_table and not set(cell) <= set("-: "):
            cells.append(cell)
        in_table = True  # the first row of a table is its header
    return cells


def column(text: str, header: str) -> list[str]:
    """The cells under ``header`` in the tables of ``text`` that have that column."""
    found: list[str] = []
    index = None
    for line in text.splitlines():
        if not line.startswith("|"):
            index = None
            continue
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if index is None:
            index = cells.index(header) if header in cells else -1
        elif index >= 0 and not set(cells[index]) <= set("-: "):
            found.append(cells[index])
    return found


def codes_in(cells: list[str]) -> set[str]:
    return {code for cell in cells for code in re.findall(r"`([a-z_]+)`", cell)}


# -- error codes ------------------------------------------------------------------------------


def http_error_codes() -> set[str]:
    codes = {cls.reason for cls in subclasses(errors.Rejected)}
    codes |= {cls.code for cls in subclasses(errors.PublishError)}
    for text in SOURCES.values():  # answers built in place: {"error": "too_large", ...}
        codes |= set(re.findall(r"""["']error["']\s*:\s*["']([a-z_]+)["']""", text))
    return codes


def websocket_error_codes() -> set[str]:
    return {cls.code for cls in subclasses(errors.ClientError) if cls is not errors.ClientError}


def documented_http_error_codes() -> set[str]:
    codes = codes_in(column(DOC, "`error`"))
    # Codes named in prose (404/405 of any path) count too: they have no table of their own.
    endpoints = section("Endpoints")
    return codes | set(re.findall(r'\{"error": "([a-z_]+)"', endpoints))


def test_every_http_error_code_is_documented() -> None:
    missing = http_error_codes() - documented_http_error_codes()
    assert not missing, f"HTTP error codes missing from docs/protocol.md: {sorted(missing)}"


def test_every_documented_http_error_code_exists() -> None:
    stale = codes_in(column(DOC, "`error`")) - http_error_codes()
    assert not stale, f"docs/protocol.md documents HTTP errors the code lacks: {sorted(stale)}"


def test_every_websocket_error_code_is_documented_and_nothing_else() -> None:
    documented = codes_in(first_cells(section("Errors")))
    assert documented == websocket_error_codes()


def test_the_metrics_label_set_of_client_errors_is_the_code_set() -> None:
    assert set(CLIENT_ERROR_CODES) == websocket_error_codes()


# -- close codes ------------------------------------------------------------------------------


def close_codes() -> set[int]:
    codes = {cls.close_code for cls in subclasses(errors.CloseConnection)}
    for text in SOURCES.values():
        # Literals 1001-1015 in code and in the comments that say which code aiohttp answers
        # with, and aiohttp's named codes. (1000 is also a count in many places, and a close
        # the gateway never sends; an application code 4xxx would be a CloseConnection.)
        codes |= {int(n) for n in re.findall(r"\b(10(?:0[1-9]|1[0-5]))\b", text)}
        codes |= {WSCloseCode[name].value for name in re.findall(r"WSCloseCode\.(\w+)", text)}
    return codes


def test_close_codes_documented_are_those_the_code_uses() -> None:
    documented = {int(cell) for cell in first_cells(section("Close codes"))}
    assert documented == close_codes()


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Limits)])
def test_every_limit_has_a_row(name: str) -> None:
    assert f"`{name}`" in first_cells(section("Limits"))


@pytest.mark.parametrize(
    "name", [f.name for f in dataclasses.fields(Settings) if f.name not in TABLES]
)
def test_every_process_setting_has_a_row(name: str) -> None:
    assert f"`{name}`" in first_cells(section("Settings"))


@pytest.mark.parametrize("table", TABLES.values())
def test_the_tables_of_the_file_are_explained(table: str) -> None:
    assert f"`{table}`" in DOC


def test_no_row_names_a_setting_the_code_lacks() -> None:
    names = {f.name for f in dataclasses.fields(Limits)} | {
        f.name for f in dataclasses.fields(Settings)
    }
    rows = first_cells(section("Limits")) + first_cells(section("Settings"))
    assert {row.strip("`") for row in rows} <= names


# -- the collectors themselves ----------------------------------------------------------------


def test_the_collectors_find_what_they_must() -> None:
    # A collector that found nothing would pass the checks above without checking anything.
    assert {"too_large", "bad_request", "unknown_channel"} <= http_error_codes()
    assert {1001, 1003, 1008, 1009, 1011, 1012, 1013} <= close_codes()
    assert "`max_topics`" in first_cells(section("Limits"))
    assert "`bad_json`" in first_cells(section("Errors"))
