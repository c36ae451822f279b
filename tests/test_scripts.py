"""scripts/serve and scripts/test, run by bash in a temporary copy of the repository whose
.venv, package tools and PATH are stubs that record how they were called: what each script
decides (reinstall or not; apt-get, with sudo or not, or a clear refusal), without
installing anything."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.processes import ROOT

BASH = shutil.which("bash") or "/bin/bash"
CHMOD = shutil.which("chmod") or "/bin/chmod"
PACKAGES = ["prometheus", "chromium", "chromium-driver", "redis-server", "haproxy"]
#: haproxy is looked for in /usr/sbin and /sbin as well (often not on a user's PATH)
HAPROXY_INSTALLED = any(Path(d, "haproxy").exists() for d in ("/usr/sbin", "/sbin"))


def stub(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{BASH}\n{body}\n")
    path.chmod(0o755)


def run(repo: Path, script: str, *args: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BASH, str(repo / "scripts" / script), *args],
        env={"PATH": str(path), "HOME": str(repo)},
        capture_output=True,
        text=True,
        timeout=30,
    )


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


# -- scripts/serve -----------------------------------------------------------------------------


@pytest.fixture
def serve_repo(tmp_path: Path) -> Path:
    """A copy of scripts/serve and the packaging files, with a .venv whose python records
    each call and installs a wsgateway that echoes its arguments (``fail`` in the repo makes
    it fail instead)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "serve", repo / "scripts" / "serve")
    for name in ("setup.cfg", "pyproject.toml"):
        shutil.copy(ROOT / name, repo / name)
    wsgateway = repo / ".venv" / "bin" / "wsgateway"
    stub(
        repo / ".venv" / "bin" / "python",
        f'echo "python $*" >> {repo}/calls\n'
        f"[ ! -e {repo}/fail ] || exit 1\n"
        f"printf '#!{BASH}\\necho \"wsgateway $*\"\\n' > {wsgateway}; {CHMOD} +x {wsgateway}",
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "cat", "cksum"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    return repo


def serve(repo: Path) -> subprocess.CompletedProcess[str]:
    return run(repo, "serve", "--demo", "--port", "9000", path=repo.parent / "bin")


INSTALL = "python -m pip install -q --disable-pip-version-check -e ."


def test_serve_installs_on_first_use_then_starts(serve_repo: Path) -> None:
    result = serve(serve_repo)
    assert result.returncode == 0, result.stderr
    assert calls(serve_repo / "calls") == [INSTALL]
    assert result.stdout == "wsgateway serve --demo --port 9000\n"
    assert "== installing wsgateway into .venv (first run)" in result.stderr


def test_serve_does_not_reinstall_when_nothing_changed(serve_repo: Path) -> None:
    serve(serve_repo)
    (serve_repo / "wsgateway.py").write_text("# code changes need no reinstall (editable)\n")
    result = serve(serve_repo)
    assert result.returncode == 0, result.stderr
    assert calls(serve_repo / "calls") == [INSTALL]  # the first run's only
    assert result.stderr == ""
    assert result.stdout == "wsgateway serve --demo --port 9000\n"


@pytest.mark.parametrize("changed", ["setup.cfg", "pyproject.toml"])
def test_serve_reinstalls_when_a_packaging_file_changed(serve_repo: Path, changed: str) -> None:
    serve(serve_repo)
    with (serve_repo / changed).open("a") as file:
        file.write("\n# a new dependency, say\n")
    result = serve(serve_repo)
    assert result.returncode == 0, result.stderr
    assert calls(serve_repo / "calls") == [INSTALL, INSTALL]
    assert "(setup.cfg pyproject.toml changed since the last install)" in result.stderr
    serve(serve_repo)
    assert calls(serve_repo / "calls") == [INSTALL, INSTALL]  # and then not again


def test_serve_retries_an_install_that_failed(serve_repo: Path) -> None:
    (serve_repo / "fail").touch()
    result = serve(serve_repo)
    assert result.returncode != 0
    assert result.stdout == ""  # the gateway is not started on a failed install
    (serve_repo / "fail").unlink()
    assert serve(serve_repo).returncode == 0
    assert calls(serve_repo / "calls") == [INSTALL, INSTALL]


def test_a_venv_made_by_scripts_test_gets_one_install(serve_repo: Path) -> None:
    """scripts/test installs without writing the stamp: serve installs once, then trusts it."""
    serve(serve_repo)
    (serve_repo / ".venv" / ".packaging-installed").unlink()
    assert "(installed by something else: no record of" in serve(serve_repo).stderr
    serve(serve_repo)
    assert calls(serve_repo / "calls") == [INSTALL, INSTALL]


# -- scripts/test: the system packages ---------------------------------------------------------


@pytest.fixture
def test_repo(tmp_path: Path) -> Path:
    """A copy of scripts/test, with a bin directory holding only ``dirname`` and ``env``:
    no dpkg, no python3, no apt-get, none of the programs, until a test adds stubs."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "test", repo / "scripts" / "test")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "env"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    return repo


def system(repo: Path, *, uid: int | None = None, apt: bool = False, sudo: bool = False) -> Path:
    """Stubs in the repo's bin: ``id -u`` answering ``uid``, an apt-get and a sudo that
    record their calls (sudo then runs the command)."""
    bin_dir = repo.parent / "bin"
    log = repo / "calls"
    if uid is not None:
        stub(bin_dir / "id", f"echo {uid}")
    if apt:
        stub(bin_dir / "apt-get", f'echo "apt-get $*" >> {log}')
    if sudo:
        stub(bin_dir / "sudo", f'echo "sudo $*" >> {log}; exec "$@"')
    return bin_dir


def missing_here() -> list[str]:
    return [p for p in PACKAGES if p != "haproxy" or not HAPROXY_INSTALLED]


def test_without_apt_get_it_says_what_it_needs_and_exits_1(test_repo: Path) -> None:
    result = run(test_repo, "test", path=system(test_repo))
    assert result.returncode == 1
    assert "this system has no apt-get" in result.stderr
    assert f"missing Debian packages: {' '.join(missing_here())}" in result.stderr
    assert "chromium-driver (programs: chromedriver)" in result.stderr
    assert "prometheus (programs: prometheus promtool)" in result.stderr
    assert "install these programs with your system's packages" in result.stderr


def test_not_root_it_installs_with_sudo(test_repo: Path) -> None:
    result = run(test_repo, "test", path=system(test_repo, uid=1000, apt=True, sudo=True))
    packages = " ".join(missing_here())
    assert calls(test_repo / "calls") == [
        "sudo apt-get update -qq",
        "apt-get update -qq",
        f"sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {packages}",
        f"apt-get install -y -qq {packages}",
    ]
    assert "not root: installing with sudo" in result.stdout
    # The stub installed nothing: it says so rather than run tests that cannot pass.
    assert result.returncode == 1
    assert "apt-get install did not provide everything" in result.stderr


def test_as_root_it_installs_without_sudo(test_repo: Path) -> None:
    run(test_repo, "test", path=system(test_repo, uid=0, apt=True, sudo=True))
    packages = " ".join(missing_here())
    assert calls(test_repo / "calls") == [
        "apt-get update -qq",
        f"apt-get install -y -qq {packages}",
    ]


def test_not_root_without_sudo_it_says_how_to_install(test_repo: Path) -> None:
    result = run(test_repo, "test", path=system(test_repo, uid=1000, apt=True))
    assert result.returncode == 1
    assert calls(test_repo / "calls") == []
    assert "installing needs root, and this system has no sudo" in result.stderr
    assert f"as root: apt-get install {' '.join(missing_here())}" in result.stderr


def test_with_every_program_present_it_installs_nothing(test_repo: Path) -> None:
    bin_dir = system(test_repo, uid=1000, apt=True, sudo=True)
    for program in ("prometheus", "promtool", "chromium", "chromedriver", "redis-server"):
        stub(bin_dir / program, "exit 0")
    stub(bin_dir / "haproxy", "exit 0")
    result = run(test_repo, "test", path=bin_dir)
    assert calls(test_repo / "calls") == []
    # On to the next step, the venv (python3 is not on this PATH, so it stops there).
    assert "== creating .venv" in result.stdout
    assert result.returncode != 0


def test_the_scripts_are_executable() -> None:
    for script in ("serve", "test"):
        assert os.access(ROOT / "scripts" / script, os.X_OK)
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
