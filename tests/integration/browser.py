"""Headless Chromium for UI tests: Debian's chromium-headless-shell (or chromium), installed with apt-get when it is
missing and we are root (as tests/cluster/slurm_up.sh installs SLURM); the test is skipped otherwise.

    shot = Browser.find_or_install()
    shot.screenshot(url, Path("page.png"))    # after the page's scripts ran (virtual time budget)
    shot.dom(url)                             # the DOM the scripts built

Not a test module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "chromium-headless-shell"
TIMEOUT_S = 180
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage",
         "--disable-extensions", "--no-first-run", "--hide-scrollbars", "--window-size=2400,1000",
         "--virtual-time-budget=30000")


@dataclass(frozen=True)
class Browser:
    binary: str

    @classmethod
    def find_or_install(cls) -> Browser:
        found = shutil.which(PACKAGE) or shutil.which("chromium")
        if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300",
                       PACKAGE]
            done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900, check=False)
            if done.returncode != 0:  # a machine whose package lists were never fetched
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600, check=False)
                subprocess.run(install, capture_output=True, text=True, env=env, timeout=900, check=False)
            found = shutil.which(PACKAGE)
        if found is None:
            pytest.skip(f"no headless Chromium ({PACKAGE}) and not root to install it")
        return cls(found)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.binary, *FLAGS, *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=False)
        assert done.returncode == 0, f"{self.binary} failed ({done.returncode}): {done.stderr[-2000:]}"
        return done

    def screenshot(self, url: str, png: Path) -> Path:
        self._run(f"--screenshot={png}", url)
        return png

    def dom(self, url: str) -> str:
        return self._run("--dump-dom", url).stdout
