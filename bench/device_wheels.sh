#!/usr/bin/env bash
# Downloads into .whl/ the wheels that bench/device_check.sh needs on a GPU machine that has
# torch, torchvision, lightning, torchmetrics, OpenCV, scikit-learn and matplotlib but not the
# rest (about 27 MB; Python 3.12, x86-64). Versions as in this project's tested environment.
#   bash bench/device_wheels.sh [PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."  # .whl/ is in .gitignore
platforms=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${p}_x86_64")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${1:-3.12}" \
  --implementation cp "${platforms[@]}" -d .whl \
  faiss-cpu==1.15.1 albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 \
  pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 stringzilla==5.3.2 \
  simsimd==6.5.16 jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0
du -sh .whl
