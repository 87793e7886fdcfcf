#!/usr/bin/env bash
# Runs the README's CLI walk-through in a fresh directory and prints each command with its
# output, so the README's figures can be regenerated: bash docs/walkthrough.sh /tmp/walk
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$(mktemp -d)}
mkdir -p "$dir" && cd "$dir"
export COLUMNS=100
show() { echo "\$ $*"; "$@" 2>&1 | grep -v "^Dask dashboard\|^labelled [0-9]*/[0-9]* chunks" || true; echo; }
python3 -c "import numpy as np; np.save('batch.npy', (np.random.default_rng(5).normal(size=(100000, 8)) * 2).astype('float32'))"
cp "$repo/distgmm/data/kmeansSamples.txt" .
show distgmm generate points.zarr --points 1000000 --features 8 --components 8 --seed 1 --chunk-rows 250000
show distgmm info points.zarr
show distgmm ingest kmeansSamples.txt samples.zarr
show distgmm fit points.zarr --components 8 --model model.npz --seed 0 --checkpoint ckpt --plot
show distgmm label model.npz points.zarr --name nightly
show distgmm label model.npz points.zarr --name nightly
show distgmm ingest batch.npy points.zarr --append
show distgmm label model.npz points.zarr --name nightly --json
show distgmm select samples.zarr --components 1..4 --covariance-type full,tied,diag,spherical --model samples.npz --seed 0
echo "\$ distgmm predict samples.npz kmeansSamples.txt --proba | head -3"
distgmm predict samples.npz kmeansSamples.txt --proba | head -3 || true; echo
show distgmm plot model.npz points.zarr --out points.png
show distgmm plot samples.npz samples.zarr --out samples.png
