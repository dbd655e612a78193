#!/usr/bin/env bash
# `make bench`: run every bench/bench_*.py; each writes bench/results/<topic>.json and .md.
# BENCH_ARGS=--quick for a fast pass; BENCH_ONLY=ppr to run one.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p bench/results
status=0
for script in bench/bench_*.py; do
  topic=$(basename "$script" .py); topic=${topic#bench_}
  [ -n "${BENCH_ONLY:-}" ] && [ "$BENCH_ONLY" != "$topic" ] && continue
  if [ "$topic" = ppr_refresh ] && [ -z "${BENCH_ONLY:-}" ]; then
    # it measures two build-graph commits that bench_scale.py leaves in S3; it has no data of its own
    echo "== bench $topic skipped: needs --root/--old-run/--new-run from a bench_scale.py run (see its docstring)"
    continue
  fi
  echo "== bench $topic ${BENCH_ARGS:-}"
  start=$(date +%s)
  if python "$script" ${BENCH_ARGS:-}; then
    echo "== $topic ok in $(( $(date +%s) - start ))s -> bench/results/$topic.md"
  else
    echo "== $topic FAILED"; status=1
  fi
done
exit $status
