#!/usr/bin/env bash
# The speed measurements that need a GPU (issue 7), in one run of an estimated 5-8 minutes on one
# H100-class GPU: the stage-1 step at the published recipe (ResNet-50 x2, 224 px, batch 96,
# bf16, channels-last) with views made in CPU workers and on the GPU, with and without
# torch.compile, each against the model alone, with host-device synchronisations counted;
# the data benchmark with its GPU row; k-means seconds per pass; and the k-means share of a
# stage-1 epoch at Derm7pt size. Writes at most 8 files into OUT_DIR.
#
#   bash bench/device_check.sh OUT_DIR
#
# On a machine with only torch & co., fetch the other wheels here first
# (bash bench/device_wheels.sh), carry .whl, and there run:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#   export PYTHONPATH=/tmp/site && bash bench/device_check.sh $OUT 2>&1 | tee $OUT/log.txt
# DEVICE, BACKBONE, SIZE, BATCH, STEPS, CASES and KMEANS_ARGS override the defaults (a CPU
# dry run: DEVICE=cpu BACKBONE=resnet18 SIZE=64 BATCH=8 STEPS=2 CASES=64
# KMEANS_ARGS='--repeats 1 --sklearn-max 1000').
set -euo pipefail
out=${1:?usage: bench/device_check.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
device=${DEVICE:-cuda}
cases=${CASES:-1011}
step=(python3 bench/step.py --backbone "${BACKBONE:-resnet50}" --image-size "${SIZE:-224}"
  --batch-size "${BATCH:-96}" --steps "${STEPS:-20}" --device "$device" --precision bf16
  --channels-last --sync-check --root data/device-check-step)

python3 - "$device" <<'PY' | tee "$out/machine.txt"
import os, platform, sys
import torch
print(f"date {__import__('datetime').date.today()}, {platform.machine()}, {os.cpu_count()} cores")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")
if sys.argv[1] == "cuda":
    print(torch.cuda.get_device_name(0))
PY
echo "== step: views in CPU workers"
"${step[@]}" --out "$out/step_cpu_views.json"
echo "== step: views on the device"
"${step[@]}" --augment-on device --out "$out/step_device_views.json"
echo "== step: views on the device, torch.compile"
"${step[@]}" --augment-on device --compile --out "$out/step_device_views_compile.json"
echo "== data: reference per-sample pipeline, cache on CPU, views on the device"
python3 bench/dataloader.py --num-cases "$cases" --synthetic-root "data/device-check-512-$cases" \
  --image-size "${SIZE:-224}" --batch-size "${BATCH:-96}" --out "$out/dataloader.json"
echo "== k-means: seconds per pass"
python3 bench/kmeans.py --threads "$(nproc)" ${KMEANS_ARGS:-} --out "$out/kmeans.json"
echo "== k-means share of a stage-1 epoch (413 training pairs; a lower bound for stage 2,"
echo "   whose epochs are shorter: frozen trunks, one view)"
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
km = json.loads((out / "kmeans.json").read_text())["rows"]
for name in ("step_cpu_views", "step_device_views", "step_device_views_compile"):
    rates = json.loads((out / f"{name}.json").read_text())["pairs_per_s"]
    full = next(v for k, v in rates.items() if k.startswith("full pipeline"))
    epoch = 413 / full
    for r in km:
        if r["case"].startswith("Derm7pt") and r["method"] != "sklearn":
            share = 100 * r["seconds"] / (epoch + r["seconds"])
            print(f"{name}: epoch {epoch:.2f} s, {r['method']} {r['seconds']:.3f} s = {share:.1f} %")
PY
