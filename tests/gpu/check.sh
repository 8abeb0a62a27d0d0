#!/usr/bin/env bash
# The prepared GPU check (tests/gpu/README.md): every phase of tests/gpu/check.py, figures into OUTDIR.
#   bash tests/gpu/check.sh OUTDIR                  on the lent GPU machine, from any folder
#   bash tests/gpu/check.sh OUTDIR --cpu-dry-run    the whole script on a CPU, tiny shapes
# PYTHON picks the interpreter (default python3: on the GPU machine, the one that has torch).
set -u
cd "$(dirname "$0")/../.." || exit 2
exec "${PYTHON:-python3}" tests/gpu/check.py run "$@"
