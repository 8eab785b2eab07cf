#!/usr/bin/env bash
# The CUDA path end to end: benchmarks/gpu_pipeline.py on a lent device machine, set up and time-limited.
# docs/benchmarks.md ("The CUDA path end to end") says how to run it; in short:
#
#   here, once, with the registry (no device time):   bash benchmarks/gpu_pipeline.sh wheels
#       -> .whl/: the packages repint needs that the device's image lacks (benchmarks/gpu_pipeline.py
#          --device-lacks reads them off /work/.library/device/KINDS.md), as cp312 manylinux wheels
#   on the device (the `run` tool):  command "bash benchmarks/gpu_pipeline.sh", carry [".whl"], timeout_s 480
#       -> installs the wheels and this checkout (--no-deps) under /tmp, runs the pipeline on CUDA, and
#          writes gpu_pipeline.md (the table), gpu_pipeline.json and gpu_pipeline.log into $OUT
#   anywhere, on the CPU, tiny:      bash benchmarks/gpu_pipeline.sh --device cpu --images 32 --image-size 32 ...
#
# Every argument goes to gpu_pipeline.py (sizes, writers, device: see its --help). The whole script,
# setup included, stops after GPU_PIPELINE_LIMIT seconds (default 450: under the 8 minutes it may take).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LIMIT=${GPU_PIPELINE_LIMIT:-450}
START=$SECONDS
SITE=${GPU_PIPELINE_SITE:-/tmp/gpu-pipeline-site}

if [ "${1:-}" = wheels ]; then
  dir=${2:-.whl}
  mkdir -p "$dir"
  if [ "$dir" = .whl ] && [ -d .git ] && ! grep -qx '/.whl/' .git/info/exclude 2>/dev/null; then
    echo /.whl/ >> .git/info/exclude
  fi
  platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
             --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64
             --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64)
  get() { "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            "${platforms[@]}" -d "$dir" "$1"; }
  "$PY" benchmarks/gpu_pipeline.py --device-lacks | while read -r req; do
    # the version installed here; where it comes only as source (grad-cam), its pure-Python wheel built
    # here; where it has no wheel for Python 3.12 (a compiled one), the newest that has one
    get "$req" 2>/dev/null && continue
    tmp=$(mktemp -d)
    if "$PY" -m pip wheel -q --no-deps -w "$tmp" "$req" >/dev/null 2>&1 && compgen -G "$tmp/*-py3-none-any.whl" >/dev/null
    then
      echo "$req: built here (pure Python)"; mv "$tmp"/*-py3-none-any.whl "$dir"/
    else
      echo "no cp312 wheel of $req: the newest one instead"; get "${req%%==*}"
    fi
    rm -rf "$tmp"
  done
  echo "$(ls "$dir"/*.whl | wc -l) wheels, $(du -sh "$dir" | cut -f1) in $dir (the working tree that travels: 64 MiB)"
  exit 0
fi

importable() { (cd /tmp && "$PY" -c "import $1" >/dev/null 2>&1); }
if ! importable repint.tasks.ingest; then  # a bare device machine: the carried wheels, then this checkout
  if ! importable prefect && compgen -G ".whl/*.whl" >/dev/null; then
    echo "[gpu-pipeline] installing $(ls .whl/*.whl | wc -l) carried wheels into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  fi
  echo "[gpu-pipeline] installing this checkout (--no-deps) into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  importable repint.tasks.ingest || { echo "repint does not import with $PY: run 'bash $0 wheels' first"; exit 3; }
fi
if [ -n "${PYTHONPATH:-}" ]; then  # carried packages beside the image's own: what pip finds at odds, for the log
  (cd /tmp && "$PY" -m pip check 2>/dev/null | grep -i -E "prefect|zarr|dask|pydantic|repint|grad-cam" | head -20) || true
fi

export PYTHONUNBUFFERED=1 REPINT_PROGRESS=${REPINT_PROGRESS:-lines}
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L || true
left=$((LIMIT - (SECONDS - START)))
if [ "$left" -lt 30 ]; then  # `timeout 0` would not limit the run at all
  echo "[gpu-pipeline] setup took $((SECONDS - START)) s of the $LIMIT s limit (GPU_PIPELINE_LIMIT): no time left to run"
  exit 124
fi
echo "[gpu-pipeline] setup took $((SECONDS - START)) s; the run may take $left s more"
out=()
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  out=(--out "$OUT")
fi
log=${OUT:-/tmp}/gpu_pipeline.log
set -o pipefail
timeout -k 10 "$left" "$PY" benchmarks/gpu_pipeline.py "$@" "${out[@]}" 2>&1 | tee "$log"
