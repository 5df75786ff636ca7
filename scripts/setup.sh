# Sourced by the other scripts: create .venv with skinssl and its dependencies once (again
# whenever pyproject.toml changes), then put it on PATH.
set -euo pipefail
if [ ! -x .venv/bin/skinssl ] || [ pyproject.toml -nt .venv/.installed ]; then
  echo "Setting up .venv (first run: a few minutes) ..."
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
  touch .venv/.installed
fi
export PATH="$PWD/.venv/bin:$PATH"
export NO_ALBUMENTATIONS_UPDATE=1
