#!/usr/bin/env bash
# The login-node install, for real: `pip install -e .` in a fresh venv (no torch, no training stack), then dry runs
# of a local and a cluster recipe must exit 0, the hub model checked and pinned against tests/hub_standin.py on
# loopback. tests/unit/test_layout.py checks the same with the stack blocked.
#   bash .ci/light_install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/light"
trap 'rm -rf "$(dirname "$venv")"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -e .
if "$venv/bin/python" -c 'import torch' 2>/dev/null; then echo "light install pulled torch" >&2; exit 1; fi
runs="$(dirname "$venv")/runs"
"$venv/bin/launch" lora tiny-starcoder --dry-run --runs-dir "$runs" >/dev/null
# a hub model is checked on the hub at launch: here against the stand-in on loopback, serving the catalog's stubs
url_file="$(dirname "$venv")/hub.url"
python3 tests/hub_standin.py >"$url_file" & hub_pid=$!
trap 'kill "$hub_pid" 2>/dev/null; rm -rf "$(dirname "$venv")"' EXIT
for _ in $(seq 50); do [ -s "$url_file" ] && break; sleep 0.1; done
HF_ENDPOINT="$(cat "$url_file")" HF_HUB_OFFLINE=0 HF_HOME="$(dirname "$venv")/hf" \
  "$venv/bin/launch" qlora starcoder15b -N 2 -p gpu --dry-run --runs-dir "$runs" 2>/dev/null | grep -Eq "bigcode/starcoder @ [0-9a-f]{40} "
# running the stages here needs the training stack: one line, exit 2, nothing written
rc=0; err="$("$venv/bin/launch" lora tiny-starcoder --local --runs-dir "$runs" 2>&1)" || rc=$?
if [ "$rc" -ne 2 ] || [ "$(printf '%s\n' "$err" | wc -l)" -ne 1 ] || [ -e "$runs" ]; then
  printf 'launch --local without torch: expected exit 2 and one line, got %s:\n%s\n' "$rc" "$err" >&2; exit 1
fi
# submitting from it: a warning that the jobs' Python lacks the stack, then sbatch's answer (a stand-in that refuses
# here) as one line, exit 2, nothing left behind
mkdir -p "$(dirname "$venv")/bin"
printf '#!/bin/sh\necho "sbatch: error: invalid partition specified: gpu" >&2\nexit 1\n' >"$(dirname "$venv")/bin/sbatch"
chmod +x "$(dirname "$venv")/bin/sbatch"
rc=0; err="$(PATH="$(dirname "$venv")/bin:$PATH" "$venv/bin/launch" full-ft tiny-starcoder -p gpu --runs-dir "$runs" 2>&1)" || rc=$?
if [ "$rc" -ne 2 ] || ! printf '%s\n' "$err" | grep -q "^warning: the jobs will run .* cannot import torch" \
   || [ "$(printf '%s\n' "$err" | grep -c '^launch: error: sbatch refused')" -ne 1 ] || [ -e "$runs" ]; then
  printf 'submitting from the light install: expected the warning, one error line and exit 2, got %s:\n%s\n' \
    "$rc" "$err" >&2; exit 1
fi
echo "light install: launch --dry-run works without torch; --local says what is missing; a submission warns"
