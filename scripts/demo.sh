#!/usr/bin/env bash
# `make demo`: the pipeline on the embedded default — local S3 (SeaweedFS), local Spark, tiny preset.
# Each step skips what an earlier run already did, so a second `make demo` is fast.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
DEMO_DIR=${G2I_DEMO_DIR:-$PWD/.local/demo}
DEMO_NODES=${G2I_DEMO_NODES:-400}
DEMO_SEED=${G2I_DEMO_SEED:-0}
IMAGE_PORT=${G2I_DEMO_IMAGE_PORT:-8765}
export G2I_STORAGE_ROOT=${G2I_STORAGE_ROOT:-s3://g2i}
t0=$(date +%s)
step() { printf '\n[demo %4ss] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

step "1. local S3 server (SeaweedFS on 127.0.0.1)"
g2i s3 start

step "2. sample raw dumps (Goodreads, Amazon 2014, Amazon 2018; $DEMO_NODES nodes each, seed $DEMO_SEED)"
if [ -f "$DEMO_DIR/sample/sample_manifest.json" ]; then
  echo "sample data already in $DEMO_DIR/sample"
else
  g2i sample --out "$DEMO_DIR/sample" --nodes "$DEMO_NODES" --seed "$DEMO_SEED" \
    --image-base-url "http://127.0.0.1:$IMAGE_PORT"
fi

step "3. raw dumps into the object store ($G2I_STORAGE_ROOT/raw/sample/)"
python - "$DEMO_DIR/sample" <<'PY'
import sys
from pathlib import Path
from g2i_core.config import Settings
from g2i_core.storage import Storage
storage = Storage.from_settings(Settings.load())
for dump in sorted(Path(sys.argv[1], "raw").glob("*.json.gz")):
    uri = storage.uri("raw", "sample", dump.name)
    if storage.exists(uri) and len(storage.get_bytes(uri)) == dump.stat().st_size:
        print(f"{uri} already uploaded")
        continue
    storage.put_bytes(uri, dump.read_bytes(), "application/gzip")
    print(f"uploaded {uri} ({dump.stat().st_size:,} bytes)")
PY

step "4. image server for the dumps' image URLs (http://127.0.0.1:$IMAGE_PORT)"
g2i serve-images --dir "$DEMO_DIR/sample" --port "$IMAGE_PORT" > "$DEMO_DIR/image-server.log" 2>&1 &
IMAGE_SERVER_PID=$!
trap 'kill $IMAGE_SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
  python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$IMAGE_PORT/sample_manifest.json', timeout=1)" 2>/dev/null && break
  sleep 0.2
done
echo "image server up (pid $IMAGE_SERVER_PID)"

step "done in $(( $(date +%s) - t0 ))s — raw dumps are in $G2I_STORAGE_ROOT/raw/sample/ on $(g2i config | sed -n "s/^s3_endpoint = '\(.*\)'/\1/p")"
