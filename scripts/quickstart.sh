#!/usr/bin/env bash
# The main job end to end on the built-in synthetic data (no download), sized for a laptop CPU:
# set up, generate the data, SM3 stage 1 -> stage 2 -> fine-tune -> test table.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
rm -rf runs/quickstart
skinssl fit -c configs/quickstart/stage1.yaml
skinssl fit -c configs/quickstart/stage2.yaml
skinssl fit -c configs/quickstart/finetune.yaml
skinssl test -c configs/quickstart/finetune.yaml \
  --ckpt_path runs/quickstart/finetune/checkpoints/best.ckpt
