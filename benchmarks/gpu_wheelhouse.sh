#!/usr/bin/env bash
# Wheels that gpu_full_size.py needs on the lent GPU machine and its image lacks, into .whl/ at the
# repository root (git-ignored). That image has Python 3.12 with torch, transformers, safetensors,
# filelock, tqdm, pillow, numpy, pandas, matplotlib, requests and packaging, but not:
#   pydantic (+ pydantic-core, annotated-types, typing-inspection, and typing-extensions >= 4.16,
#     newer than the image may hold): `capexp.spec`, whose Spec `fit` and `build_model` read;
#   bert-score: `fit` scores each epoch's validation captions with BERTScore (`capexp.metrics`).
# Pure-Python wheels except pydantic-core (cp312, manylinux x86_64). Versions are the development
# venv's; pydantic pins pydantic-core exactly. Usage: bash benchmarks/gpu_wheelhouse.sh [python]
# PYVER=3.11 WHEELS=/tmp/whl311 fetch the same set for another Python into another folder (to try the
# install on a machine whose Python is not the GPU image's 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
WHEELS=${WHEELS:-.whl}
rm -rf "$WHEELS" && mkdir -p "$WHEELS"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing-extensions==4.16.0 bert-score==0.3.13
ls -l "$WHEELS"
du -sh "$WHEELS" | awk -v d="$WHEELS" '{print "wheelhouse " d ": " $1 " (the device carry limit is 64 MiB)"}'
