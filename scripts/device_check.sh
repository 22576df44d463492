#!/usr/bin/env bash
# One prepared GPU check (CUDA paths, overhead ratios, memory estimates); each step is time-boxed and logged.
#   bash scripts/device_check.sh [OUT_DIR]
# Needs a CUDA GPU and this repo's dependencies (on a machine without them, pip-install the wheels in .whl first).
set -uo pipefail
out="${1:-${OUT:-/tmp/outlier_lab_device_check}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
step() {  # step NAME SECONDS CMD...: run CMD with a time limit, keep its log, never stop the script
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$out/$name.log"
    echo "=== $name: rc=$rc in $((SECONDS - start))s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers, nnsight, hydra; print(torch.__version__, torch.cuda.get_device_name(0), transformers.__version__, nnsight.__version__, hydra.__version__)"
# 1. The CUDA path through the real CLI: bf16, device_map=auto, planted dims found exactly on two architectures.
step cuda_cli 100 python3 - <<'PY'
import json, subprocess, sys, tempfile
from pathlib import Path
sys.path.insert(0, "tests")
from checkpoints import EXPECTED_OUTLIERS, build_tiny_checkpoint, training_text
root = Path(tempfile.mkdtemp())
text = root / "text.txt"; text.write_text(training_text())
for arch in ("qwen3_moe", "gpt_oss"):
    ckpt = build_tiny_checkpoint(arch, root / arch)
    run = root / f"run_{arch}"
    subprocess.run([sys.executable, "run.py", "model=local", f"model.path={ckpt}", f"model.name={arch}",
                    "dataset=text_file", f"dataset.path={text}", "dataset.num_sequences=8", "dataset.seq_len=64",
                    "device=cuda", "progress=false", f"hydra.run.dir={run}"], check=True)
    r = json.loads((run / "results.json").read_text())
    found = {f["dim"] for f in r["outlier_features"]}
    print(arch, "dtype", r["model"]["dtype"], "found", sorted(found), "expected", sorted(EXPECTED_OUTLIERS),
          "OK" if found == EXPECTED_OUTLIERS else "MISMATCH", "peak", r["peak_memory_gib"], r["peak_memory_kind"])
PY
# 1b. The fused reducer kernel (torch.compile) equals its eager twin exactly on CUDA, in bf16 and fp32.
step fused_kernel 90 python3 - <<'PY'
import torch
from outlier_lab.analysis.detectors._int8_reducer import fused_site_step, site_step
fused = fused_site_step(torch.device("cuda"))
for dtype in (torch.bfloat16, torch.float32):
    for shape in ((4, 512, 4096), (3, 37, 1024)):
        x = (torch.randn(*shape, device="cuda") * 3).to(dtype)
        a = torch.zeros(shape, dtype=torch.bool, device="cuda"); b = a.clone()
        same = torch.equal(site_step(x, a, 6.0), fused(x, b, 6.0)) and torch.equal(a, b)
        print(dtype, shape, "fused == eager" if same else "MISMATCH", "compiled" if fused is not site_step else "eager")
PY
# 2. Analysis vs bare forward: the issue's mid-size config, then a larger one where GPU work dominates.
step bench_mid 110 python3 scripts/bench.py --device cuda
step bench_large 130 python3 scripts/bench.py --device cuda --hidden 4096 --blocks 16 --seq-len 1024 --batch-size 8 --sequences 32 --memory-sequences 128
# 3. Estimated vs measured peak memory on the GPU.
step bench_estimate 190 python3 scripts/bench_estimate.py --device cuda --out "$out/bench_estimate.json"
