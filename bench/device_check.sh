#!/usr/bin/env bash
# The checks that need a GPU, in parts with time limits of 60-210 s that add up to about 37
# minutes, more than one lease allows: choose with PARTS, about 570 s of limits per call. The
# first part that runs also makes the synthetic images (data/ does not travel). The parts:
# the stage-1 step at the published recipe (ResNet-50 x2, 224 px, batch 96, bf16,
# channels-last) with views made in CPU workers and on the GPU, each against the model alone,
# with host-device synchronisations counted; the device-view and k-means tests on the GPU
# (the authors' k-means queued without a synchronisation, and replayed from a CUDA graph);
# k-means seconds per pass; the data benchmark with its GPU row, and with the GPUs hidden
# (no loader pins its batches); the views' cost per step on
# one core, ours and the reference (where the data benchmark's ratio comes from); the quick
# start on the GPU (bf16, views on the GPU); the step with torch.compile; the stage-2 step
# (frozen trunks, batch 256, 32-bit with TF32) with views from CPU workers and on the GPU;
# short stage-2 fits of the published config with either k-means (and the authors' from a
# CUDA graph), reporting the callback's own share of an epoch, and one under cProfile (where the callback's time goes); and the
# k-means share of an epoch of either stage at each step benchmark's rate. A failed or late
# part is reported and the rest still run. Writes machine.txt and results.json (every part's
# JSON) into OUT_DIR.
#
#   bash bench/device_check.sh OUT_DIR
#
# On a machine with only torch & co., fetch the other wheels here first
# (bash bench/device_wheels.sh), carry .whl, and there run:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#   export PYTHONPATH=/tmp/site && bash bench/device_check.sh $OUT 2>&1 | tee $OUT/log.txt
# PARTS (e.g. PARTS="step-device data") runs only those parts: step-cpu, step-device,
# step-device-compiled, tests, kmeans, data, data-unpinned, views, quickstart, compile, stage2-cpu,
# stage2-device, stage2-fit-spherical, stage2-fit-authors, stage2-fit-authors-graph (the
# authors' k-means replayed from a CUDA graph), stage2-profile.
# DEVICE, BACKBONE, SIZE, BATCH, BATCH2 (stage 2), STEPS, CASES, CACHE (cached image side,
# default 462 as the published configs) and KMEANS_ARGS override the defaults (a CPU dry run:
# DEVICE=cpu BACKBONE=resnet18 SIZE=64 BATCH=8 BATCH2=16 STEPS=2 CASES=64 CACHE=72
# KMEANS_ARGS='--repeats 1 --sklearn-max 1000'; the quick-start part runs on GPUs only).
set -uo pipefail
out=${1:?usage: bench/device_check.sh OUT_DIR}
mkdir -p "$out"
work=$(mktemp -d)  # each part's JSON, merged into results.json after each part (a lease
trap 'rm -rf "$work"' EXIT  # returns 8 files; a run stopped at its time limit keeps what ran)
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
device=${DEVICE:-cuda}
cases=${CASES:-1011}
# Derm7pt-sized synthetic images (512 x 768) cached as the published configs (462 px)
data=(--synthetic-size 512 --num-cases "$cases" --cache-size "${CACHE:-462}")
common=(python3 bench/step.py --backbone "${BACKBONE:-resnet50}" --image-size "${SIZE:-224}"
  --steps "${STEPS:-30}" --device "$device" --sync-check --root "data/device-check-512-$cases"
  "${data[@]}")
step=("${common[@]}" --batch-size "${BATCH:-96}" --precision bf16 --channels-last)
failed=()

part() {  # part KEY NAME SECONDS COMMAND...: run with a time limit, report, go on on failure
  local key=$1 name=$2 limit=$3 start=$SECONDS
  shift 3
  [[ -z "${PARTS:-}" || " $PARTS " == *" $key "* ]] || return 0
  echo "== $name"
  timeout "$limit" "$@"
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
  merge
}

merge() {  # every part's JSON so far into OUT_DIR/results.json
  python3 -c 'import json, sys; from pathlib import Path
parts = {f.stem: json.loads(f.read_text()) for f in sorted(Path(sys.argv[1]).glob("*.json"))}
Path(sys.argv[2], "results.json").write_text(json.dumps(parts, indent=1))' "$work" "$out" ||
    failed+=("merging the results")
}

quickstart_on_gpu() {  # the quick start's three stages and test on the GPU: bf16, views there
  local cli=(python3 -m skinssl.cli)
  local precision=(--trainer.precision bf16-mixed --trainer.enable_progress_bar false)
  rm -rf runs/quickstart
  "${cli[@]}" fit -c configs/quickstart/stage1.yaml "${precision[@]}" \
    --data.init_args.augment_on device --data.init_args.compile_views true &&
    "${cli[@]}" fit -c configs/quickstart/stage2.yaml "${precision[@]}" &&
    "${cli[@]}" fit -c configs/quickstart/finetune.yaml "${precision[@]}" &&
    "${cli[@]}" test -c configs/quickstart/finetune.yaml "${precision[@]}" \
      --ckpt_path runs/quickstart/finetune/checkpoints/best.ckpt
}

python3 - "$device" <<'PY' | tee "$out/machine.txt"
import os, platform, re, sys
import cv2, torch
print(f"date {__import__('datetime').date.today()}, {platform.machine()}, {os.cpu_count()} cores")
cpuinfo = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
flags = re.search(r"flags\s*:\s*(.*)", cpuinfo)
flags = set(flags.group(1).split()) if flags else set()
print(f"CPU {model.group(1) if model else '?'}, AVX2 {'avx2' in flags},"
      f" AVX-512 {'avx512f' in flags}")
# torch's uint8 anti-aliased resize (the CPU crops) is 8x slower without its AVX2 kernels
print(f"torch {torch.__version__} (CPU kernels {torch.backends.cpu.get_cpu_capability()}),"
      f" CUDA {torch.version.cuda}, OpenCV {cv2.__version__}")
if sys.argv[1] == "cuda":
    print(torch.cuda.get_device_name(0))
PY
part step-cpu "step: views in CPU workers" 120 "${step[@]}" --out "$work/step_cpu_views.json"
part step-device "step: views on the device" 100 "${step[@]}" --augment-on device \
  --out "$work/step_device_views.json"
part step-device-compiled "step: views on the device, compiled" 120 "${step[@]}" \
  --augment-on device --compile-views --profile-views --out "$work/step_device_views_compiled.json"
part tests "device-view and k-means tests on $device" 150 env SKINSSL_TEST_DEVICE="$device" \
  python3 -m pytest -q -p no:cacheprovider tests/test_device_views.py \
  tests/test_kmeans.py::test_authors_kmeans_on_the_test_device_is_queued_without_waiting \
  tests/test_kmeans.py::test_authors_kmeans_replayed_from_a_cuda_graph
part kmeans "k-means: seconds per pass" 90 python3 bench/kmeans.py --threads "$(nproc)" \
  ${KMEANS_ARGS:-} --out "$work/kmeans.json"
loader=(python3 bench/dataloader.py --num-cases "$cases" --image-size "${SIZE:-224}"
  --synthetic-root "data/device-check-512-$cases" --cache-size "${CACHE:-462}"
  --batch-size $((${BATCH:-96} < 32 ? ${BATCH:-96} : 32)))
part data "data: reference per-sample pipeline, cache on CPU, views on the device" 210 \
  "${loader[@]}" --out "$work/dataloader.json"
part data-unpinned "data: the CPU pipelines with the GPUs hidden (no loader pins)" 150 \
  env CUDA_VISIBLE_DEVICES= "${loader[@]}" --out "$work/dataloader_unpinned.json"
part views "views: milliseconds per step on one core, ours and the reference" 60 \
  python3 bench/views.py --image-size "${SIZE:-224}" --cache-size "${CACHE:-462}" \
  --out "$work/views.json"
if [ "$device" = cuda ]; then  # a function: run by bash under timeout
  part quickstart "quick start on the GPU (bf16, compiled views on the GPU)" 150 \
    bash -c "$(declare -f quickstart_on_gpu); quickstart_on_gpu"
fi
part compile "step: trunks and views compiled" 180 "${step[@]}" --augment-on device --compile \
  --compile-views --out "$work/step_device_compiled.json"
# stage 2 as its published config: 32-bit, TF32 allowed (as the authors' mlc_train.py), NCHW
step2=("${common[@]}" --stage 2 --batch-size "${BATCH2:-256}")
part stage2-cpu "stage-2 step: views in CPU workers" 120 "${step2[@]}" \
  --out "$work/step2_cpu_views.json"
part stage2-device "stage-2 step: views on the device, compiled" 150 "${step2[@]}" \
  --augment-on device --compile-views --out "$work/step2_device_views.json"
stage2_fit() {  # stage2_fit ALGORITHM [profile]: 6 epochs of configs/sm3/stage2.yaml on
  # synthetic data (413 training pairs, random frozen trunks, the config's 32-bit precision,
  # TF32 allowed); prints the k-means callback's own timings. With "profile": 4 epochs under
  # cProfile, printing the milliseconds per call of the callback's steps (cProfile slows
  # Python-heavy code most, so these are for where the time goes, not for the share)
  local dir="$work/fit-$1${2:+-$2}" size=${SIZE:-224} run=(python3) epochs=6
  [ "${2:-}" = profile ] && run=(python3 -m cProfile -o "$dir/profile.out") epochs=4
  mkdir -p "$dir"
  python3 - "$1" "$dir/kmeans.yaml" <<'PY' || return  # the config's k-means, this algorithm
import sys, yaml
config = yaml.safe_load(open("configs/sm3/stage2.yaml"))
kmeans = [c for c in config["trainer"]["callbacks"] if "KMeansPseudoLabels" in c["class_path"]]
algorithm, _, graph = sys.argv[1].partition("-")  # authors-graph: with cuda_graph: true
kmeans[0]["init_args"].update(algorithm=algorithm, cuda_graph=graph == "graph")
yaml.safe_dump({"trainer": {"callbacks": kmeans}}, open(sys.argv[2], "w"))  # no ModelCheckpoint
PY
  "${run[@]}" -m skinssl.cli fit -c configs/sm3/stage2.yaml -c "$dir/kmeans.yaml" \
    --trainer.accelerator "$([ "$device" = cuda ] && echo gpu || echo cpu)" \
    --trainer.max_epochs "$epochs" --trainer.enable_progress_bar false \
    --trainer.enable_checkpointing false \
    --trainer.logger.init_args.save_dir "$dir" --model.init_args.pretrained null \
    --model.init_args.weights null --model.init_args.backbone "${BACKBONE:-resnet50}" \
    --data skinssl.datamodules.SyntheticDerm7ptDataModule \
    --data.init_args.root "data/device-check-512-$cases" --data.init_args.num_cases "$cases" \
    --data.init_args.synthetic_size 512 --data.init_args.image_size "$size" \
    --data.init_args.cache_size "${CACHE:-462}" --data.init_args.augment_on "$device_views" ||
    return
  if [ "${2:-}" = profile ]; then
    python3 - "$dir/profile.out" "$1" "$work/stage2_profile_$1.json" <<'PY'
import json, pstats, sys
from pathlib import Path
profile, algorithm, out = sys.argv[1:]
steps = ("on_train_epoch_start", "_merge_bank", "cluster", "_features", "_kmeans",
         "feature_problems", "dot_kmeans_heads", "kmeans", "_apply", "_report_now", "_keep",
         "write_report", "clustering_metrics")
rows = {}
for (path, _, name), (_, calls, _, cumulative, _) in pstats.Stats(profile).stats.items():
    ours = ("callbacks/kmeans.py", "callbacks/kmeans_report.py", "skinssl/clustering.py")
    if path.endswith(ours) and name in steps:
        rows[name] = {"calls": calls, "ms": 1e3 * cumulative}
for row in rows.values():  # per clustering (_report_now runs after every step, mostly idle)
    row["ms_per_clustering"] = row["ms"] / rows["cluster"]["calls"]
print(f"{algorithm}, under cProfile, ms per clustering (means; the first clustering, before"
      " epoch 0, also makes a pass over the data): " + ", ".join(
    f"{n} {rows[n]['ms_per_clustering']:.2f}" for n in steps if n in rows))
Path(out).write_text(json.dumps({"algorithm": algorithm, "steps": rows}))
PY
    return
  fi
  python3 - "$dir" "$1" "$work/stage2_fit_$1.json" <<'PY'
import json, statistics, sys
from pathlib import Path
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
logs, algorithm, out = sys.argv[1:]
events = EventAccumulator(str(next(Path(logs).rglob("events.out.tfevents.*")).parent),
                          size_guidance={"scalars": 0}).Reload()
tags = ("kmeans/seconds", "kmeans/statistics_seconds", "kmeans/features_seconds",
        "kmeans/callback_seconds", "kmeans/epoch_share")
rows = {t: [e.value for e in events.Scalars(t)] for t in tags}
# after the first clustering (epoch 0: a pass fills the bank); the callback's own time starts
# at epoch 1, its share at epoch 2 (epoch 0's training compiled the views)
skip = {"kmeans/callback_seconds": 0, "kmeans/epoch_share": 1}
later = {t: statistics.median(v[skip.get(t, 1):]) for t, v in rows.items()}
# the k-means pass itself (features from the bank, k-means) against the epoch's training
spent, share = rows["kmeans/callback_seconds"][1:], rows["kmeans/epoch_share"][1:]
epochs = [c * (1 - s) / s for c, s in zip(spent, share)]
passes = [f + k for f, k in zip(rows["kmeans/features_seconds"][2:], rows["kmeans/seconds"][2:])]
later["pass_share"] = statistics.median(p / (p + e) for p, e in zip(passes, epochs))
later["epoch_seconds"] = statistics.median(epochs)
print(f"{algorithm}: per epoch "
      + ", ".join(f"{t} {[round(x, 4) for x in v]}" for t, v in rows.items()))
print(f"{algorithm}: medians from epoch 1 (shares from epoch 2):"
      f" k-means {later['kmeans/seconds']:.4f} s,"
      f" statistics {later['kmeans/statistics_seconds']:.4f} s,"
      f" features {later['kmeans/features_seconds']:.4f} s,"
      f" the callback in all {later['kmeans/callback_seconds']:.4f} s,"
      f" an epoch's training {later['epoch_seconds']:.4f} s; share of the epoch: the callback"
      f" {100 * later['kmeans/epoch_share']:.2f} %, features + k-means"
      f" {100 * later['pass_share']:.2f} %")
Path(out).write_text(json.dumps({"algorithm": algorithm, "per_epoch": rows, "median": later}))
PY
}
device_views=$([ "$device" = cuda ] && echo device || echo cpu)
for algorithm in spherical authors authors-graph; do
  part "stage2-fit-$algorithm" "stage-2 fit, $algorithm k-means: the callback's share" 150 \
    bash -c "$(declare -f stage2_fit); device=$device device_views=$device_views \
      work=$work cases=$cases CACHE=${CACHE:-462} stage2_fit $algorithm"
done
part stage2-profile "stage-2 fit, authors k-means, under cProfile: the callback's steps" 120 \
  bash -c "$(declare -f stage2_fit); device=$device device_views=$device_views \
    work=$work cases=$cases CACHE=${CACHE:-462} stage2_fit authors profile"
echo "== k-means share of an epoch at each step benchmark's rate (step: a stage-1 epoch, 384"
echo "   pairs with drop_last, as DeepCluster-v2 clusters; step2: stage 2, 413 pairs; the"
echo "   stage2-fit parts measure the callback itself)"
python3 - "$work" <<'PY' || failed+=("the k-means share")
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
kmeans = out / "kmeans.json"
km = json.loads(kmeans.read_text())["rows"] if kmeans.is_file() else []
for name in ("step_cpu_views", "step_device_views", "step_device_views_compiled",
             "step_device_compiled", "step2_cpu_views", "step2_device_views"):
    if not (out / f"{name}.json").is_file():
        continue
    rates = json.loads((out / f"{name}.json").read_text())["pairs_per_s"]
    full = next(v for k, v in rates.items() if k.startswith("full pipeline"))
    epoch = (413 if name.startswith("step2") else 384) / full
    derm = [r for r in km if r["case"].startswith("Derm7pt")]
    stats = next((r["seconds"] for r in derm if r["method"] == "statistics"), 0.0)
    for r in derm:
        if r["method"] != "sklearn" and not r["method"].startswith("statistics"):
            spent = r["seconds"] + stats  # the callback's pass: k-means and its statistics
            share = 100 * spent / (epoch + spent)
            print(f"{name}: epoch {epoch:.2f} s, {r['method']} + statistics {spent:.4f} s"
                  f" = {share:.1f} %")
PY
if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "all parts passed"
