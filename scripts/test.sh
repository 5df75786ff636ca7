#!/usr/bin/env bash
# Set up (first run) and run the test suite (CPU only). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
python -m pytest "$@"
