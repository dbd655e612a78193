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
DEMO_SOURCES=${G2I_DEMO_SOURCES:-goodreads}  # all three: G2I_DEMO_SOURCES=goodreads,amazon2014,amazon2018
# The ART500K-like item table (--source attributes, linked on artist,genre):
#   G2I_DEMO_SOURCES=attributes G2I_DEMO_DATASET=attributes make demo
SAMPLE_FORMATS=goodreads,amazon2014,amazon2018
case ",$DEMO_SOURCES," in *,attributes,*) SAMPLE_FORMATS=$SAMPLE_FORMATS,attributes ;; esac
t0=$(date +%s)
step() { printf '\n[demo %4ss] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

step "1. local S3 server (SeaweedFS on 127.0.0.1)"
g2i s3 start

step "2. sample raw dumps ($SAMPLE_FORMATS; $DEMO_NODES nodes each, seed $DEMO_SEED)"
if [ -f "$DEMO_DIR/sample/sample_manifest.json" ] && { [ "$SAMPLE_FORMATS" = "${SAMPLE_FORMATS%,attributes}" ] \
    || [ -f "$DEMO_DIR/sample/raw/artworks.csv.gz" ]; }; then
  echo "sample data already in $DEMO_DIR/sample"
else
  g2i sample --out "$DEMO_DIR/sample" --nodes "$DEMO_NODES" --seed "$DEMO_SEED" --formats "$SAMPLE_FORMATS" \
    --image-base-url "http://127.0.0.1:$IMAGE_PORT"
fi

step "3. raw dumps and the sample's true communities into the object store ($G2I_STORAGE_ROOT/raw/sample/)"
python - "$DEMO_DIR/sample" <<'PY'
import sys
from pathlib import Path
from g2i_core.config import Settings
from g2i_core.storage import Storage
storage = Storage.from_settings(Settings.load())
sample = Path(sys.argv[1])
files = [(d, ("raw", "sample", d.name)) for d in sorted((sample / "raw").glob("*.json.gz"))]
files += [(d, ("raw", "sample", d.name)) for d in sorted((sample / "raw").glob("*.csv.gz"))]  # the artworks table
# the generator's ground truth (node_id,community): the evaluation's community labels
files += [(t, ("raw", "sample", "truth", t.name)) for t in sorted((sample / "truth").glob("*_communities.csv.gz"))]
for dump, parts in files:
    uri = storage.uri(*parts)
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
# The fetcher refuses loopback and private addresses; this one setting opens the demo's image server only.
export G2I_FETCH_ALLOW_HOSTS=127.0.0.1:$IMAGE_PORT

# ---- the pipeline, through Airflow (SQLite + LocalExecutor under .local/airflow) ---------------------------
# Each DAG runs once per logical date with `dag.test()` (python -m g2i_core.orchestration dag-test); a stamp
# keyed on the sample data and the DAG's conf makes a second `make demo` skip the DAG runs already done.
export AIRFLOW_HOME=${AIRFLOW_HOME:-$PWD/.local/airflow}
export AIRFLOW__CORE__LOAD_EXAMPLES=False AIRFLOW__CORE__DAGS_FOLDER=$PWD/dags AIRFLOW__CORE__UNIT_TEST_MODE=False
export G2I_SPARK_DRIVER_MEMORY=${G2I_SPARK_DRIVER_MEMORY:-2g} G2I_SPARK_SHUFFLE_PARTITIONS=${G2I_SPARK_SHUFFLE_PARTITIONS:-4}
export G2I_RETRY_DELAY_S=${G2I_RETRY_DELAY_S:-5} G2I_BACKFILL_SHARDS=${G2I_BACKFILL_SHARDS:-2}
DEMO_DATE=${G2I_DEMO_DATE:-2024-01-01}
DEMO_DATASET=${G2I_DEMO_DATASET:-goodreads}
# The model: preset tiny16 (the tiny model at 16 px, one QFormer layer, lr 1e-3 with cosine decay), the one
# the paper suite showed to learn community style on a CPU (docs/evaluation.md). Measured on the shared 2-core
# machine: 2.5-3.5 steps/s at batch 16, so 600 steps train in ~3-4 min and keep `make demo` within 15 min
# with setup; on the 400-node sample, 500 steps already gave community accuracy 0.79 vs 0.48 text-only, and
# 800 steps 0.85 vs 0.55 (33 test nodes; docs/evaluation.md, "The demo").
DEMO_PRESET=${G2I_DEMO_PRESET:-tiny16}
DEMO_TRAIN_STEPS=${G2I_DEMO_TRAIN_STEPS:-600}
DEMO_BATCH=${G2I_DEMO_BATCH:-16}
# Sampling as in the suite: 10 DDIM steps, text guidance 3, graph guidance 4 (chosen there on a val split).
DEMO_GEN_STEPS=${G2I_DEMO_GEN_STEPS:-10}
DEMO_TEXT_SCALE=${G2I_DEMO_TEXT_SCALE:-3}
DEMO_GRAPH_SCALE=${G2I_DEMO_GRAPH_SCALE:-4}
DEMO_EVAL_NODES=${G2I_DEMO_EVAL_NODES:-0}  # test nodes scored by g2i_evaluate (0 = all of them)
DEMO_CHECK_NODES=${G2I_DEMO_CHECK_NODES:-16}  # the backfill's quality check
DEMO_LABELS=raw/sample/truth/${DEMO_DATASET}_communities.csv.gz  # true communities, uploaded in step 3
STAMPS=$DEMO_DIR/stamps
mkdir -p "$AIRFLOW_HOME" "$STAMPS"
SAMPLE_KEY=$(sha256sum "$DEMO_DIR/sample/sample_manifest.json" | cut -c1-12)

step "5. Airflow metadata DB ($AIRFLOW_HOME)"
if [ -f "$AIRFLOW_HOME/airflow.db" ]; then echo "already migrated"; else airflow db migrate > "$DEMO_DIR/airflow-migrate.log" 2>&1 && echo "migrated"; fi

run_dag() {  # dag_id conf-json
  local dag=$1 conf=$2 key stamp
  key=$(printf '%s %s %s %s' "$SAMPLE_KEY" "$DEMO_DATE" "$G2I_STORAGE_ROOT" "$conf" | sha256sum | cut -c1-12)
  stamp=$STAMPS/$dag-$key
  if [ -f "$stamp" ]; then echo "$dag for $DEMO_DATE already succeeded with this data (stamp $stamp); skipping"; return 0; fi
  local log=$DEMO_DIR/dag-$dag.log
  if python -m g2i_core.orchestration dag-test "$dag" --logical-date "$DEMO_DATE" --conf "$conf" > "$log" 2>&1; then
    grep '^\[dag-test\]' "$log"
    touch "$stamp"
  else
    grep '^\[dag-test\]' "$log" || true
    echo "$dag failed; full log: $log" >&2
    tail -40 "$log" >&2
    exit 1
  fi
}
json_list() { python -c "import json,sys; print(json.dumps(sys.argv[1].split(',')))" "$1"; }

step "6. mmag_refresh: ingest -> fetch images -> build graph -> PPR + embed -> rerank ($DEMO_SOURCES)"
run_dag mmag_refresh "{\"sources\": $(json_list "$DEMO_SOURCES")}"

step "7. g2i_train: preset $DEMO_PRESET on $DEMO_DATASET ($DEMO_TRAIN_STEPS steps x batch $DEMO_BATCH, CPU)"
run_dag g2i_train "{\"dataset\": \"$DEMO_DATASET\", \"preset\": \"$DEMO_PRESET\", \"steps\": $DEMO_TRAIN_STEPS, \"batch_size\": $DEMO_BATCH, \"resume\": true}"

SCALES="\"steps\": $DEMO_GEN_STEPS, \"text_scale\": $DEMO_TEXT_SCALE, \"graph_scale\": $DEMO_GRAPH_SCALE, \"labels\": \"$DEMO_LABELS\""
step "8. g2i_backfill_covers: covers for $DEMO_DATASET nodes without one ($G2I_BACKFILL_SHARDS mapped shards)"
run_dag g2i_backfill_covers "{\"dataset\": \"$DEMO_DATASET\", \"shards\": $G2I_BACKFILL_SHARDS, \"sample\": $DEMO_CHECK_NODES, $SCALES}"

step "9. g2i_evaluate: test split, graph-guided vs text-only, evaluation report with the backfill gallery"
run_dag g2i_evaluate "{\"dataset\": \"$DEMO_DATASET\", \"limit\": $DEMO_EVAL_NODES, $SCALES}"

step "10. the report"
echo "pipeline done in $(( $(date +%s) - t0 ))s — data under $G2I_STORAGE_ROOT on $(g2i config | sed -n "s/^s3_endpoint = '\(.*\)'/\1/p")"
python - "$DEMO_DATASET" "$DEMO_DIR" <<'PY'
import json, sys
from pathlib import Path
from g2i_core.config import Settings
from g2i_core.orchestration import graph_root, headline_metrics
from g2i_core.storage import Storage
settings = Settings.load()
storage = Storage.from_settings(settings, root=graph_root(settings.storage_root, sys.argv[1]))
run_id = storage.get_json(storage.uri("reports", "_LATEST"))["run_id"]
report = storage.uri("reports", run_id)
local = Path(sys.argv[2]) / "report"
local.mkdir(parents=True, exist_ok=True)
for uri in storage.list(report):
    dest = local / uri[len(report) + 1:]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(storage.get_bytes(uri))
metrics = json.loads((local / "metrics.json").read_text())
backfill = metrics.get("backfill") or {}
if backfill.get("page"):  # the gallery page beside the backfill run's manifest, copied next to the report
    (local / "backfill.html").write_bytes(storage.get_bytes(backfill["page"]))
print("headline metrics (reports/%s):" % run_id)
for k, v in headline_metrics(metrics).items():
    print(f"  {k:<34} {v}")
print()
print(f"report (object store): {report}/report.html")
if backfill.get("page"):
    print(f"backfill gallery:      {backfill['page']} ({backfill['covers']} covers)")
print(f"report (local copy):   {local / 'report.html'}")
print(f"open in a browser:     {(local / 'report.html').resolve().as_uri()}")
acc = {m["name"]: m["summary"].get("community_acc") for m in metrics["methods"]}
g, t = acc.get("graph_guided"), acc.get("text_only")
if g and t:
    verdict = "graph-guided wins" if g["mean"] > t["mean"] else "graph-guided does NOT win"
    print(f"headline: community accuracy graph-guided {g['mean']:.3f} [{g['lo']:.3f}, {g['hi']:.3f}] vs text-only "
          f"{t['mean']:.3f} [{t['lo']:.3f}, {t['hi']:.3f}] on {g.get('n', '?')} test nodes ({verdict})")
PY

