"""Build hook: the wheel carries the built web page (terminal_proxy/web/static/).

Everything else is declared in pyproject.toml. When the page is missing or older than its
sources in web/, ``build_py`` builds it the way scripts/build-web does (``npm ci`` as
web/package-lock.json pins it, then ``node build.mjs``), so ``python -m build``, ``pip
install .`` and a wheel built from the sdist all ship a working ``terminal-proxy demo``.
Node.js (>= 18) with npm is needed at build time only, and only when the page must be built;
without it the build stops with a message saying so. Editable installs (``pip install -e``)
leave the page to ``make web``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import SetupError

ROOT = Path(__file__).resolve().parent
WEB = ROOT / "web"
STATIC = ROOT / "terminal_proxy" / "web" / "static"
BUNDLE = STATIC / "terminal-proxy.js"
NODE_MAJOR = 18


def _sources() -> list[Path]:
    files = [WEB / "package.json", WEB / "package-lock.json", WEB / "build.mjs"]
    return files + sorted(path for path in (WEB / "src").rglob("*") if path.is_file())


def _page_is_current() -> bool:
    if not BUNDLE.is_file():
        return False
    if not (WEB / "package.json").is_file():
        return True  # no sources here (e.g. the Dockerfile's build stage): use what is built
    built = BUNDLE.stat().st_mtime
    return all(source.stat().st_mtime <= built for source in _sources() if source.is_file())


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SetupError(
            f"building terminal-proxy's web page needs Node.js >= {NODE_MAJOR} with npm, "
            f"and {name!r} is not on PATH. Install Node.js (https://nodejs.org/ or your "
            "distribution's nodejs and npm packages) and build again, or install a "
            "published wheel, which has the page built in."
        )
    return path


def build_web_page() -> None:
    """web/ → terminal_proxy/web/static/, as scripts/build-web does."""
    if not (WEB / "package.json").is_file():
        raise SetupError(
            "terminal_proxy/web/static is missing and there are no web/ sources to build "
            "it from: build from a git checkout or from the sdist"
        )
    node, npm = _tool("node"), _tool("npm")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    found = re.match(r"v(\d+)\.", version)
    if found is None or int(found.group(1)) < NODE_MAJOR:
        raise SetupError(
            f"building terminal-proxy's web page needs Node.js >= {NODE_MAJOR}; "
            f"{node} is {version or 'of unknown version'}"
        )
    print(f"==> building the web page with {node} {version} (npm ci, node build.mjs)")
    for command in ([npm, "ci", "--no-audit", "--no-fund"], [node, "build.mjs"]):
        result = subprocess.run(command, cwd=WEB, check=False)
        if result.returncode != 0:
            raise SetupError(
                f"building the web page failed: {' '.join(command)} exited with "
                f"{result.returncode} (its output is above)"
            )
    if not BUNDLE.is_file():
        raise SetupError(f"building the web page did not produce {BUNDLE}")


class BuildPyWithWebPage(build_py):
    """build_py that first makes sure the built page is there to be packaged."""

    def run(self) -> None:
        if not getattr(self, "editable_mode", False) and not _page_is_current():
            build_web_page()
        super().run()


setup(cmdclass={"build_py": BuildPyWithWebPage})
