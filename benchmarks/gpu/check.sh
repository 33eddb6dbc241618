#!/usr/bin/env bash
# GPU check for a lent device machine (one H200; ends within 8 minutes), one command:
#   run: bash benchmarks/gpu/check.sh      (timeout_s 540)
# 1. the test suite's device-marked tests on CUDA (tests/test_device.py);
# 2. SparseGPT, Wanda, GPTQ, AWQ and MEMIT (50 edits) on SmolLM2-135M and Gemma-3-270M shapes,
#    bf16 and fp32: wall time, perplexity, edit success (benchmarks/gpu/methods.py);
# 3. studies/quick.yaml on the GPU with the Ray executor, four tasks sharing the GPU
#    (--gpus-per-task 0.25), when ray is importable there (its wheel is larger than what travels).
# The machine's own python3 holds CUDA torch, transformers and accelerate; lmcompose is
# installed from this tree without dependencies (nothing can be fetched there).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
start=$(date +%s)
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; fi
dirs="-e ./core -e ./cli"
for d in plugins/*/; do dirs="$dirs -e ./$d"; done
python3 -m pip install -q --no-deps --no-build-isolation $dirs > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== 1. device-marked tests"
timeout 120 python3 -m pytest -q -m device tests/test_device.py -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/tests.log"
echo "== 2. methods"
timeout 240 python3 benchmarks/gpu/methods.py 2>&1 | grep -v -i warn | tee "$OUT/methods.md"
echo "== 3. studies/quick.yaml, Ray executor, GPU shared by 4 tasks"
if python3 -c "import ray" 2>/dev/null; then
  s=$(date +%s)
  timeout 90 python3 -m lmcompose_cli.main study studies/quick.yaml --out "$OUT/quick" --device cuda --executor ray \
    --gpus-per-task 0.25 --cpus-per-task 2 --no-plots 2>&1 | tail -6
  echo "quick study on the GPU with ray: $(( $(date +%s) - s )) s"
else
  echo "ray is not installed on this machine: step 3 skipped (carry its wheels in .whl to run it)"
fi
echo "total: $(( $(date +%s) - start )) s"
