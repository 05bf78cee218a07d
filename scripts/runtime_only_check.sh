#!/usr/bin/env bash
# The device install, as a device maker does it: a fresh venv, `pip install .` (no torch), then
# every command a device runs. CI runs it after the tests (.ci/run), because the suite itself runs
# with the build extra installed and cannot see what a runtime-only install lacks.
# Usage: scripts/runtime_only_check.sh [VENV_DIR]   (default: a temporary dir, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
REPO=$PWD
TMP=$(mktemp -d)
V=${1:-$TMP/venv}
SERVER=
cleanup() { [ -z "$SERVER" ] || kill "$SERVER" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
say() { echo "== runtime-only: $*" >&2; }

say "fresh venv $V, pip install . (no extras)"
$PY -m venv "$V"
"$V/bin/python" -m pip install -q --upgrade pip
"$V/bin/python" -m pip install -q .
B=$V/bin
mkdir "$TMP/work" && cd "$TMP/work"  # away from the checkout: only the installed package can be imported

if "$B/python" -c "import torch" 2>/dev/null; then echo "torch is importable in the runtime-only venv" >&2; exit 1; fi
say "defaker --help / --version"
"$B/defaker" --help > /dev/null
"$B/defaker" --version
set +e
"$B/defaker" no-such-command 2> err.txt; rc=$?
set -e
[ "$rc" -eq 2 ] && ! grep -q Traceback err.txt || { echo "unknown command: rc $rc, $(cat err.txt)" >&2; exit 1; }
set +e
"$B/defaker" distill --ground-truth-only --data M --out S 2> err.txt; rc=$?
set -e
[ "$rc" -eq 2 ] && grep -q 'needs the build extra' err.txt && ! grep -q Traceback err.txt \
  || { echo "distill without torch: rc $rc, $(cat err.txt)" >&2; exit 1; }

say "defaker check samples"
"$B/defaker" check "$REPO/samples" --json --mask-dir masks --overlay > verdicts.jsonl
"$B/python" - verdicts.jsonl <<'PY'
import json, sys
lines = [json.loads(x) for x in open(sys.argv[1])]
assert len(lines) >= 7 and all("fake_prob" in x and x["package_id"] and x["manifest_sha256"] for x in lines), lines
print(f"{len(lines)} verdicts", file=sys.stderr)
PY

say "defaker package path / info / verify (the installed default package)"
PKG=$("$B/defaker" package path)
[ "$PKG" = "$("$B/python" -c "from defaker_edge.runtime import DEFAULT_PACKAGE; print(DEFAULT_PACKAGE)")" ]
"$B/defaker" package info > /dev/null
"$B/defaker" package verify

say "the README's Python lines: a mask and an overlay"
"$B/python" - "$REPO/samples/fake_aigc.jpg" <<'PY'
import sys
from PIL import Image
from defaker_edge.runtime import Detector
v = Detector.load().check(sys.argv[1])
v.save_mask("readme.mask.png"); v.save_overlay("readme.overlay.jpg")
assert Image.open("readme.mask.png").mode == "L" and Image.open("readme.overlay.jpg").size == Image.open(sys.argv[1]).size
PY

say "signed package: keygen, sign, verify, and the runtime refusing an edited copy"
cp -r "$PKG" signed && "$B/defaker" package keygen rel > /dev/null
"$B/defaker" package sign signed --key rel.key > /dev/null
"$B/defaker" package verify signed --trusted-key rel.pub --no-golden > /dev/null
DEFAKER_TRUSTED_KEY=rel.pub "$B/defaker" check "$REPO/samples/fake_aigc.jpg" --package signed --quiet
sed -i 's/"overlap": 64/"overlap": 56/' signed/manifest.json
set +e
DEFAKER_TRUSTED_KEY=rel.pub "$B/defaker" check "$REPO/samples/fake_aigc.jpg" --package signed 2> err.txt; rc=$?
set -e
[ "$rc" -eq 2 ] && grep -q 'manifest.json: changed since it was signed' err.txt && ! grep -q Traceback err.txt \
  || { echo "edited signed package: rc $rc, $(cat err.txt)" >&2; exit 1; }

say "defaker serve: one request"
PORT=$("$B/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$B/defaker" serve --host 127.0.0.1 --port "$PORT" 2> serve.log &
SERVER=$!
"$B/python" - "$PORT" "$REPO/samples/fake_aigc.jpg" <<'PY'
import json, sys, time, urllib.request
port, img = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
for _ in range(300):  # the server loads and self-tests the package first
    try:
        urllib.request.urlopen(base + "/healthz", timeout=2)
        break
    except OSError:
        time.sleep(0.2)
else:
    sys.exit("server did not come up")
req = urllib.request.Request(base + "/v1/check", data=open(img, "rb").read(), method="POST")
v = json.load(urllib.request.urlopen(req, timeout=60))
assert 0.0 <= v["fake_prob"] <= 1.0 and v["package_id"], v
print(f"POST /v1/check: fake_prob {v['fake_prob']}, package {v['package_id']}", file=sys.stderr)
PY
kill "$SERVER"
wait "$SERVER" 2>/dev/null || true
SERVER=
if grep -q Traceback serve.log; then cat serve.log >&2; exit 1; fi
say "ok"
