"""The package as a user gets it: ``python -m build``, then the wheel alone in a fresh venv.

The sdist and the wheel are built the way the README says (``python -m build``: the sdist
first, then the wheel from the unpacked sdist, so the wheel's web page is built by
setup.py's hook from the sdist's web/ sources with Node.js). The wheel is installed into a
new virtual environment that has nothing else of this checkout, and that venv's
``terminal-proxy demo`` is driven in headless Chromium like tests/test_browser_demo.py.
Slow-ish (build, npm ci, pip install): well under two minutes with warm pip and npm caches.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser

from tests.test_browser_demo import (
    chromium,  # noqa: F401 (a fixture)
    open_terminal,
    start_demo,
    wait_for_screen,
)

ROOT = Path(__file__).resolve().parent.parent
STATIC = "terminal_proxy/web/static"
PAGE_FILES = ("terminal-proxy.js", "terminal-proxy.css", "recordings.js", "recordings.css")
WEB_SOURCES = ("web/package.json", "web/package-lock.json", "web/build.mjs", "web/src/demo.js")

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(300)]


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{command} exited with {result.returncode}:\n{output[-4000:]}"
    return output


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """sdist and wheel from ``python -m build`` (isolated: setuptools comes from the index)."""
    out = tmp_path_factory.mktemp("dist")
    log = run(sys.executable, "-m", "build", "--outdir", out, ROOT, cwd=ROOT)
    # The wheel was built from the sdist, which has no built page: the hook built it.
    assert "==> building the web page" in log
    assert "License classifiers are deprecated" not in log and "project.license" not in log
    yield out


def only(directory: Path, pattern: str) -> Path:
    (found,) = directory.glob(pattern)
    return found


def test_sdist_has_the_web_sources_and_not_the_built_page(dist: Path) -> None:
    with tarfile.open(only(dist, "terminal_proxy-*.tar.gz")) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {*WEB_SOURCES, "setup.py", "pyproject.toml"} <= names
    assert not any(name.startswith(("web/node_modules", STATIC)) for name in names)


def test_wheel_has_the_built_page_and_an_spdx_license(dist: Path) -> None:
    with zipfile.ZipFile(only(dist, "terminal_proxy-*.whl")) as wheel:
        names = set(wheel.namelist())
        (metadata,) = (name for name in names if name.endswith(".dist-info/METADATA"))
        headers = wheel.read(metadata).decode()
    assert {f"{STATIC}/{name}" for name in PAGE_FILES} <= names
    assert "terminal_proxy/web/index.html" in names
    assert "License-Expression: Apache-2.0" in headers.splitlines()
    assert not any(name.startswith(("web/", "tests/")) for name in names)


def test_build_without_node_says_what_is_missing(tmp_path: Path) -> None:
    """No node/npm on PATH and no built page: the build stops and says why."""
    tree = tmp_path / "src"
    shutil.copytree(
        ROOT,
        tree,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "node_modules", "static", "tests", "test-output", "bench", "*cache*"
        ),
    )
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "out"), str(tree)],
        cwd=tmp_path,
        env={"PATH": str(tmp_path / "empty"), "HOME": str(Path.home())},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode != 0
    assert "building terminal-proxy's web page needs Node.js >= 18 with npm" in (
        result.stdout + result.stderr
    )


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel and its dependencies only; its bin/ directory."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home / "venv", with_pip=True)
    bin_dir = home / "venv" / "bin"
    run(bin_dir / "pip", "install", "--quiet", only(dist, "terminal_proxy-*.whl"), cwd=home)
    where = run(
        bin_dir / "python", "-c", "import terminal_proxy; print(terminal_proxy.__file__)", cwd=home
    )
    assert where.strip().startswith(str(home)), where
    return bin_dir


async def test_wheel_in_a_fresh_venv_serves_a_working_terminal(
    installed: Path,
    chromium: Browser,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The wheel's own ``terminal-proxy demo``: login link, page, a shell that echoes."""
    async with start_demo(program=[str(installed / "terminal-proxy")], cwd=tmp_path) as demo:
        page = await open_terminal(chromium, demo)
        await page.keyboard.type("echo packaged-$((6*7))\n")
        await wait_for_screen(page, r"^packaged-42$")
