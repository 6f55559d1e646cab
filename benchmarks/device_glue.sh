#!/usr/bin/env bash
# The fair comparison (benchmarks/fair.py) on a device machine, in one call of at most 8 minutes.
#
#   bash benchmarks/device_glue.sh pack      # here: .device/ = MiniLM in float16 + the GLUE files
#   (device) bash benchmarks/device_glue.sh run    # there, with carry [".device"]
#
# Why float16: the device receives at most 64 MiB and sees no package index, and MiniLM's
# float32 weights are 90 MB. `pack` rounds them to float16 (45 MB) and `run` widens them back
# to float32 before training, so the device trains a base that differs from ours by that
# rounding. Measured on MiniLM: largest |weight| 7.9, relative error at most 4.8e-4 for every
# weight of magnitude >= 6.1e-5 (23,703 of 22.7M weights are smaller and become float16
# subnormals); a new head's logits on 64 SST-2 dev sentences move by at most 3.9e-5 (of 0.039).
# Its scores should agree with the CPU cells within seed noise; they are reported beside them,
# never mixed into results/fair/ (their commit says "+device-fp16-base").
#
# `run` trains each (task, method) of the protocol in its own process (grid, then seeds at the
# chosen rate, exactly as `fair.py run` plans it; ten processes share the GPU and the 16 cores
# that compile), stops starting work at the deadline, and returns the finished cells as one
# archive with their report: $OUT/device_fair.tar.gz and $OUT/fair.md.
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:-}
tasks=(${TASKS:-rte mrpc stsb cola sst2})
methods=(${METHODS:-lora full})

case "$action" in
pack)
    py=${PYTHON:-.venv/bin/python}
    glue=${LORA_JAX_GLUE_DIR:-../shared/data/glue}
    [ -d "$glue" ] || { echo "no GLUE directory at $glue (set LORA_JAX_GLUE_DIR)" >&2; exit 2; }
    rm -rf .device && mkdir -p .device/glue
    grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
    for folder in RTE MRPC STS-B CoLA SST-2; do
        mkdir -p ".device/glue/$folder"
        cp "$glue/$folder/train.tsv" "$glue/$folder/dev.tsv" ".device/glue/$folder/"
    done
    "$py" - <<'PY'
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from lora_jax.pretrained import resolve_model_dir

src, dst = resolve_model_dir("minilm"), Path(".device/minilm")
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors", "1_Pooling"))
weights = load_file(src / "model.safetensors")
big = max(float(np.abs(w).max()) for w in weights.values() if w.dtype == np.float32)
assert big < 6e4, f"a weight of {big} does not fit float16"
save_file({k: w.astype(np.float16) if w.dtype == np.float32 else w
           for k, w in weights.items()}, dst / "model.safetensors")
print(f"{dst}: float16 copy of {src.name} (largest |weight| {big:.1f})")
PY
    git rev-parse HEAD > .device/COMMIT
    du -sh .device
    ;;
run)
    [ -d .device/minilm ] || { echo "no .device/: run 'pack' here and carry .device" >&2; exit 2; }
    out=${OUT:?set by the device machine}
    budget=${BUDGET_S:-420}  # seconds of training; the report and the archive come after
    export PYTHONPATH=$PWD LORA_JAX_GLUE_DIR=$PWD/.device/glue XLA_PYTHON_CLIENT_PREALLOCATE=false
    export LORA_JAX_COMMIT="$(cat .device/COMMIT)+device-fp16-base" PYTHONUNBUFFERED=1
    py=${PYTHON:-python3}
    work=$(mktemp -d)  # the widened model, run directories, cells and logs
    export WORK=$work
    "$py" - <<'PY'
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
import shutil

src, dst = Path(".device/minilm"), Path(os.environ["WORK"]) / "minilm"
shutil.copytree(src, dst, dirs_exist_ok=True)
save_file({k: w.astype(np.float32) if w.dtype == np.float16 else w
           for k, w in load_file(src / "model.safetensors").items()}, dst / "model.safetensors")
PY
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
    mkdir -p "$work/fair/logs" "$work/fair/cells"
    for task in "${tasks[@]}"; do
        for method in "${methods[@]}"; do
            timeout "$budget" "$py" benchmarks/fair.py run --tasks "$task" --methods "$method" \
                --model "$work/minilm" --cells $work/fair/cells --runs "$work/fair/runs" \
                > "$work/fair/logs/$task-$method.log" 2>&1 &
        done
    done
    wait || true
    tail -n 3 $work/fair/logs/*.log
    "$py" benchmarks/fair.py report --cells $work/fair/cells --out $work/fair/report > /dev/null
    cp $work/fair/report/fair.md "$out/fair.md"
    tar -czf "$out/device_fair.tar.gz" -C $work/fair cells report logs
    ls -l "$out"
    ;;
*)
    echo "usage: bash benchmarks/device_glue.sh pack|run" >&2
    exit 2
    ;;
esac
