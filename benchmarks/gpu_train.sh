#!/usr/bin/env bash
# Training speed on one GPU, side by side: ours (benchmarks/train_step.py, float32 and bfloat16) and
# the official DETR (official_bench.py --train, float32 and --amp bf16), then one table.
#
#   benchmarks/gpu_train.sh prepare OFFICIAL_CHECKOUT OFFICIAL_BENCH   # on this machine, once
#   benchmarks/gpu_train.sh                                            # on the GPU machine
#
# `prepare` copies the official checkout (github.com/facebookresearch/detr) and official_bench.py
# (../shared/bench/) into .device/ and downloads the wheels the GPU image lacks (ml_collections)
# into .whl/, both ignored through .git/info/exclude; the device tool then carries them:
#   run(command="bash benchmarks/gpu_train.sh", carry=[".device", ".whl"], timeout_s=600)
# The four runs fit in 10 minutes: each has its own limit (LIMIT_OURS, LIMIT_OFFICIAL seconds) and
# a run that fails or times out is a row saying so. Logs and table.txt go to $OUT when it is set.
#
# Settings (environment): DEVICE=cuda MODEL=detr_resnet50 SIZE="800 1088" BATCH=4 (images per
# device) REPS=10 PY=python3 (ours) TORCH_PY=$PY (official) OFFICIAL_CHECKOUT=.device/detr
# OFFICIAL_BENCH=.device/official_bench.py LIMIT_OURS=210 LIMIT_OFFICIAL=80.
# A check on CPU at a tiny size (here: PY=.venv/bin/python TORCH_PY=<a venv with torch>):
#   DEVICE=cpu SIZE="64 64" BATCH=2 REPS=2 OFFICIAL_CHECKOUT=... OFFICIAL_BENCH=... benchmarks/gpu_train.sh
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1

if [ "${1:-}" = prepare ]; then
  [ $# -eq 3 ] && [ -f "$2/models/detr.py" ] && [ -f "$3" ] ||
    { echo "usage: $0 prepare OFFICIAL_CHECKOUT OFFICIAL_BENCH (a checkout with models/detr.py, the bench script)" >&2; exit 2; }
  set -e
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  for d in /.device/ /.whl/; do grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >> "$exclude"; done
  rm -rf .device && mkdir -p .device/detr .whl
  tar -C "$2" --exclude=.git -cf - . | tar -C .device/detr -xf -
  cp "$3" .device/official_bench.py
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl ml_collections
  du -sh .device .whl
  exit 0
fi

DEVICE=${DEVICE:-cuda} MODEL=${MODEL:-detr_resnet50} SIZE=${SIZE:-800 1088} BATCH=${BATCH:-4} REPS=${REPS:-10}
PY=${PY:-python3} TORCH_PY=${TORCH_PY:-$PY}
OFFICIAL_CHECKOUT=${OFFICIAL_CHECKOUT:-.device/detr} OFFICIAL_BENCH=${OFFICIAL_BENCH:-.device/official_bench.py}
LOGS=${OUT:-$(mktemp -d)}
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$ROOT
else
  export PYTHONPATH=$ROOT
fi

run() {  # name limit command...: the command's output goes to the screen and to $LOGS/name.log
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*"
  timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]}"
}
# shellcheck disable=SC2086  # SIZE is two numbers
{
  run ours_float32 "${LIMIT_OURS:-210}" "$PY" benchmarks/train_step.py --model "$MODEL" --size $SIZE --batch "$BATCH" --reps "$REPS" --dtype float32
  run ours_bfloat16 "${LIMIT_OURS:-210}" "$PY" benchmarks/train_step.py --model "$MODEL" --size $SIZE --batch "$BATCH" --reps "$REPS" --dtype bfloat16
  run official_float32 "${LIMIT_OFFICIAL:-80}" "$TORCH_PY" "$OFFICIAL_BENCH" "$OFFICIAL_CHECKOUT" --model "$MODEL" --device "$DEVICE" --train --batch "$BATCH" --size $SIZE --reps "$REPS"
  run official_amp "${LIMIT_OFFICIAL:-80}" "$TORCH_PY" "$OFFICIAL_BENCH" "$OFFICIAL_CHECKOUT" --model "$MODEL" --device "$DEVICE" --train --batch "$BATCH" --size $SIZE --reps "$REPS" --amp
}
GPU=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
"$PY" - "$LOGS" "${GPU:-no nvidia-smi}" "$MODEL" "$SIZE" "$BATCH" <<'EOF' | tee "$LOGS/table.txt"
import json, os, sys

logs, gpu, model, size, batch = sys.argv[1:]
def last_json(name):
  try:
    lines = open(os.path.join(logs, f"{name}.log")).read().splitlines()
  except OSError:
    return None
  for line in reversed(lines):
    if line.startswith("{"):
      return json.loads(line)
  return None

rows = {name: last_json(name) for name in ("ours_float32", "ours_bfloat16", "official_float32", "official_amp")}
versions = [f"jax {r['jax']} ({r['device_kind']})" for r in (rows["ours_float32"], rows["ours_bfloat16"]) if r][:1]
versions += [f"torch {r['torch']}" for r in (rows["official_float32"], rows["official_amp"]) if r][:1]
print(f"\nTrain step, {model}, {batch} images of {size.replace(' ', 'x')} per step, one device: {gpu}; "
      + ", ".join(versions))
print(f"| run | step (median) | images/s | compile | first step | peak memory |")
print(f"|---|---|---|---|---|---|")
for name, r in rows.items():
  if r is None:
    print(f"| {name} | failed or timed out (see {name}.log) | | | | |")
    continue
  compile_s = f"{r['compile_s']:.1f} s" if "compile_s" in r else "-"
  first = f"{r['first_step_s']:.2f} s" if "first_step_s" in r else "-"
  memory = f"{r['peak_memory_gib']} GiB" if r.get("peak_memory_gib") is not None else "-"
  print(f"| {name} | {r['median_s'] * 1000:.0f} ms | {r['images_per_s']:.2f} | {compile_s} | {first} | {memory} |")
def ratio(a, b):
  return f"{rows[a]['images_per_s'] / rows[b]['images_per_s']:.2f}x" if rows[a] and rows[b] else "n/a"
print(f"ours bfloat16 / official AMP: {ratio('ours_bfloat16', 'official_amp')} (goal >= 1.5x); "
      f"ours float32 / official float32: {ratio('ours_float32', 'official_float32')} (goal > 1x)")
EOF
