"""Peak memory of SparseGPT and MEMIT on SmolLM2-135M: in memory against offloaded with
accelerate (``device_map="auto"`` with a CPU memory cap, the rest on disk), one decoder layer
onloaded at a time (lmcompose.models.offload).

Each configuration runs in a fresh process. The model is loaded and the calibration corpus
tokenized first; then the process's anonymous resident memory (RssAnon, sampled every 20 ms:
what the process itself allocated, not the file pages of weights mapped from safetensors or
from the offload folder) is read, and the step's peak above it is the step's own memory: the
weights it changes (copied out of the mapping in memory; one layer at a time offloaded),
statistics and activations. Also reported: the process's peak RSS (file pages included),
wall time of the step, perplexity after it (wikitext-2 test when LMCOMPOSE_DATA_DIR has it,
else the bundled sample), MEMIT's edit success, and whether the offloaded run ends with the
in-memory run's weights (fingerprints). MEMIT computes its covariance statistics in both runs
(a fresh statistics folder each).

    .venv/bin/python benchmarks/offload_memory.py [--cpu-cap 200MB] [--edits 10]

On a GPU machine the same split applies with the GPU as the execution device and
``--max-memory 0=...`` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, tempfile, threading, time
from pathlib import Path
import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, build_metrics, load_edits, parse_step
from lmcompose.data import calibration_windows
from lmcompose.models.loading import load_model

cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
anon = {"now": 0, "peak": 0}


def sample_anon():  # anonymous resident memory (not file pages: weights mapped from safetensors or offload files)
    while True:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    anon["now"] = int(line.split()[1])
                    anon["peak"] = max(anon["peak"], anon["now"])
        time.sleep(0.02)


threading.Thread(target=sample_anon, daemon=True).start()
placement = {"device_map": "auto", "max_memory": cfg["cap"]} if cfg["offload"] else {}
lm = load_model("smollm2-135m", **placement)
ctx = Context(calibration_samples=cfg["samples"], calibration_seqlen=cfg["seqlen"], seed=0)
ctx.cache_dir = Path(tempfile.mkdtemp(prefix="bench-stats-"))  # MEMIT computes its statistics in both runs
if cfg["edits"]:
    ctx.edits = load_edits("counterfact", None, limit=cfg["edits"], seed=0, ctx=ctx)
ctx.calibration_batches(lm)  # the corpus read and tokenized before the step: not the step's memory
calibration_windows(lm.tokenizer, 8, 64, 0, ctx)
time.sleep(0.1)
base = anon["now"]
anon["peak"] = base
start = time.perf_counter()
build_intervention(parse_step(cfg["step"])).apply(lm, ctx)
step_s = time.perf_counter() - start
time.sleep(0.1)
step_peak = anon["peak"]
names = ["perplexity"] + (["edit"] if cfg["edits"] else [])
metrics = build_metrics(names, {"perplexity": {"max_tokens": 4096, "seqlen": 512}})
values = {k: v for m in metrics for k, v in m.compute(lm, ctx).items() if isinstance(v, float)}
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "base_mb": base / 1024,
                  "step_mb": (step_peak - base) / 1024, "step_s": step_s, "offloaded": lm.offloaded,
                  "fingerprint": lm.fingerprint(), **values}))
"""


def run(cfg: dict) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{cfg['step']} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-cap", default="200MB", help="max_memory for the CPU when offloaded (the rest goes to disk)")
    ap.add_argument("--edits", type=int, default=10)
    ap.add_argument("--samples", type=int, default=32, help="calibration windows for SparseGPT")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="sparsegpt,memit", help="comma-separated: sparsegpt, memit")
    args = ap.parse_args()
    steps = [
        s
        for s in [("sparsegpt 0.5", "sparsegpt:sparsity=0.5", 0), ("memit", "memit:stats_samples=64", args.edits)]
        if s[0].split()[0] in args.methods.split(",")
    ]
    print(
        "| method | placement | anonymous MB before the step | the step's peak above that, MB | process peak RSS MB "
        "| step s | perplexity | edit success | same weights |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for label, step, edits in steps:
        got = {}
        for offload in (False, True):
            cfg = {
                "step": step,
                "edits": edits,
                "offload": offload,
                "cap": f"cpu={args.cpu_cap}",
                "samples": args.samples,
                "seqlen": args.seqlen,
                "threads": args.threads,
            }
            got[offload] = run(cfg)
        for offload in (False, True):
            r = got[offload]
            where = f"offloaded (cpu={args.cpu_cap}, rest on disk)" if offload else "in memory"
            same = "yes" if got[True]["fingerprint"] == got[False]["fingerprint"] else "NO"
            succ = f"{r['edit_success']:.3f}" if "edit_success" in r else ""
            print(
                f"| {label} | {where} | {r['base_mb']:.0f} | {r['step_mb']:.0f} | {r['peak_mb']:.0f} | "
                f"{r['step_s']:.1f} | {r['perplexity']:.3f} | {succ} | "
                f"{same if offload else ''} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
