#!/usr/bin/env bash
# Runs the README's "Scheduled labeling" walk-through in a fresh directory and prints each
# command with its output (and exit code), so the README's figures can be regenerated:
#   bash docs/scheduled.sh /tmp/sched
# Nightly batches are drawn from the mixture `generate` used (seed 1); the fifth night's
# components are 1.3 times as wide: the model has gone stale.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$(mktemp -d)}
mkdir -p "$dir" && cd "$dir"
export COLUMNS=100
show() { echo "\$ $*"; "$@" 2>&1 | grep -v "^Dask dashboard\|^labelled [0-9]*/[0-9]* chunks"; echo "(exit ${PIPESTATUS[0]})"; echo; }
python3 - <<'PY'
import numpy as np
from distgmm.store import mixture_parameters

p = mixture_parameters(1, 8, 8)
chol = np.linalg.cholesky(p["covariances"])
for night, spread in enumerate([1.0, 1.0, 1.0, 1.0, 1.3], start=1):
    rng = np.random.default_rng(100 + night)
    k = rng.choice(8, size=20_000, p=p["weights"])
    x = p["means"][k] + spread * np.einsum("nd,ned->ne", rng.standard_normal((20_000, 8)), chol[k])
    np.save(f"night{night}.npy", x.astype(np.float32))
PY
show distgmm generate points.zarr --points 200000 --features 8 --components 8 --seed 1 --chunk-rows 20000
show distgmm fit points.zarr --components 8 --model model.npz --seed 0
show distgmm label model.npz points.zarr --name nightly --scores
for night in 1 2 3 4 5; do
  distgmm ingest night$night.npy points.zarr --append -q
  if [ $night = 1 ] || [ $night = 5 ]; then
    show distgmm label model.npz points.zarr --name nightly --scores --fail-on-drift
  else
    distgmm label model.npz points.zarr --name nightly --scores --fail-on-drift -q > /dev/null
    echo "night $night: exit $?"
  fi
done
show distgmm label model.npz points.zarr --name nightly --scores --fail-on-drift --json
show distgmm plot model.npz points.zarr --scores nightly --out drift.png
# The job-file way: refit only when drift is reported
mkdir -p jobwork
python3 -c "import numpy as np; x = np.loadtxt('$repo/jobs/data/new-batch.txt'); x[:, 0] += 8; np.savetxt('drifted-batch.txt', x, fmt='%.6f')"
distgmm run "$repo/jobs/quickstart.toml" --set work="$dir/jobwork" -q > /dev/null
show distgmm run "$repo/jobs/nightly-drift.toml" --set work="$dir/jobwork"
show distgmm run "$repo/jobs/nightly-drift.toml" --set work="$dir/jobwork" --set batch="$dir/drifted-batch.txt"
