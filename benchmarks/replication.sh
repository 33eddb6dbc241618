#!/usr/bin/env bash
# The sweeps behind docs/replication.md: MEMIT (50 edits x 2 replicates) with each
# compressor, both orders, on CounterFact and zsRE (SmolLM2-135M, fp32). Two lanes (one per
# dataset) run side by side with one thread each; a sweep resumes when rerun.
#   benchmarks/replication.sh            # the sweeps docs/replication.md reports
#   benchmarks/replication.sh --all      # also Wanda and AWQ, one strength each by default
#                                        # (WANDA_SPARSITIES=0.65, AWQ_BITS=3: ~35 min a lane each here)
# Then: .venv/bin/python benchmarks/replication.py runs/rep-*
set -euo pipefail
LMC=${LMC:-.venv/bin/lmcompose}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export LMCOMPOSE_DATA_DIR=${LMCOMPOSE_DATA_DIR:-../shared/data}
ALL=${1:-}
WANDA_SPARSITIES=${WANDA_SPARSITIES:-0.65}
AWQ_BITS=${AWQ_BITS:-3}
COMMON=(--replicates 2 --edits 50 --orders all --seed 0 --metrics edit,perplexity,avg_bits
        --ppl-tokens 4096 --ppl-seqlen 1024 --calibration-samples 32 --calibration-seqlen 512 --no-plots)
MEMIT="memit:context_templates=0"
mkdir -p runs

lane() {
  local ds=$1 tag=$2
  "$LMC" sweep smollm2-135m "$MEMIT" sparsegpt --vary sparsegpt.sparsity=0.4,0.65 --dataset "$ds" "${COMMON[@]}" --out "runs/rep-$tag-sparsegpt"
  "$LMC" sweep smollm2-135m "$MEMIT" gptq:group_size=64 --vary gptq.bits=3 --dataset "$ds" "${COMMON[@]}" --out "runs/rep-$tag-gptq"
  if [ "$ALL" = "--all" ]; then
    "$LMC" sweep smollm2-135m "$MEMIT" wanda --vary wanda.sparsity=$WANDA_SPARSITIES --dataset "$ds" "${COMMON[@]}" --out "runs/rep-$tag-wanda"
    "$LMC" sweep smollm2-135m "$MEMIT" awq:group_size=64 --vary awq.bits=$AWQ_BITS --dataset "$ds" "${COMMON[@]}" --out "runs/rep-$tag-awq"
  fi
  for run in runs/rep-$tag-*/; do "$LMC" report "$run" > /dev/null; done
}

lane counterfact cf > runs/rep-cf.log 2>&1 &
lane zsre zsre > runs/rep-zsre.log 2>&1 &
wait
