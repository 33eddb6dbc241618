"""SparseGPT and Wanda on SmolLM2-135M versus llm-compressor, with the two-pass floor.

Same model (the dequantized SmolLM2-135M folder), same calibration windows (n x seqlen
tokens of wikitext-2 train prefix + validation, seeded), same evaluation (perplexity on
the first --eval-windows windows of --eval-seqlen tokens of wikitext-2 test), all in one
run, once per compute dtype in --dtypes (bfloat16: the model's weights and activations in
bf16, the statistics still accumulated in fp32/fp64). The floor is two no-grad forward
passes of the decoder (embeddings, decoder layers, final norm; no LM head) over the
calibration set: the statistics pass and the recompute pass every layer-sequential method
needs.

llm-compressor is not a dependency: with --llmc, this script creates a separate venv
(.bench-venvs/llmcompressor, torch pinned first), installs llmcompressor there, and runs
benchmarks/_llmc_oneshot.py in it on the same model folder and calibration windows; the
pruned model it saves is evaluated here with the same perplexity code.

    .venv/bin/python benchmarks/pruning.py [--llmc] [--methods sparsegpt,wanda] [--structures 0.5,2:4] \\
        [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, build_metrics, parse_step
from lmcompose.models.loading import load_model

ROOT = Path(__file__).resolve().parent.parent
LLMC_VENV = ROOT / ".bench-venvs" / "llmcompressor"
TORCH_VERSION = "2.13.0"


def ensure_llmc_venv() -> Path:
    py = LLMC_VENV / "bin" / "python"
    if not py.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(LLMC_VENV)])
        subprocess.check_call([str(py), "-m", "pip", "install", "-q", f"torch=={TORCH_VERSION}"])
        subprocess.check_call([str(py), "-m", "pip", "install", "-q", "llmcompressor"])
    return py


def two_pass_floor(lm, windows) -> float:
    """Two no-grad forward passes of the decoder (no LM head) over the calibration windows."""
    with torch.no_grad():
        start = time.perf_counter()
        decoder = lm.model.base_model  # embeddings + decoder layers + final norm, no LM head
        for _ in range(2):
            for j in range(windows.shape[0]):
                decoder(windows[j : j + 1], use_cache=False)
        return time.perf_counter() - start


def statistics_floor(lm, ctx) -> float:
    """The core pipeline's statistics pass (which ends at the last watched projection's
    input) and recompute pass plus Σxxᵀ of every distinct projection input, with no change
    to any weight: what SparseGPT and GPTQ must do before their own solves (the same
    statistics objects, the same sharing), so their time can be read against it."""
    from lmcompose.interventions.common import selected_layers
    from lmcompose_sparsegpt.intervention import SparseGPT

    class StatisticsOnly(SparseGPT):
        def process_layer(self, lm, index, names, stats_of, messages) -> None:
            for name in names:
                stats_of(name)  # gathered; nothing is solved or changed

    step = StatisticsOnly(SparseGPT.Config(sparsity=0.5))
    start = time.perf_counter()
    step.calibrate(lm, ctx, selected_layers(lm, step.config, step.name), "statistics floor")
    return time.perf_counter() - start


def measure_floors(lm, ctx, windows, dtype: str, floors: dict, stat_floors: dict | None) -> None:
    """Time the two-pass floor and (unless ``stat_floors`` is None) the statistics floor into the dicts."""
    floors[dtype] = two_pass_floor(lm, windows)
    print(f"measured: floor {dtype} {floors[dtype]:.1f} s", flush=True)
    if stat_floors is not None:
        stat_floors[dtype] = statistics_floor(lm, ctx)
        print(f"measured: statistics floor {dtype} {stat_floors[dtype]:.1f} s", flush=True)


def print_floors(floors: dict, stat_floors: dict) -> None:
    for dtype, floor in floors.items():
        print(
            f"two-pass floor, {dtype} (2 no-grad forward passes of the decoder over the calibration set): {floor:.1f} s"
        )
        if dtype in stat_floors:
            print(
                f"statistics floor, {dtype} (the pipeline's statistics + recompute passes and Σxxᵀ of each "
                f"projection input, nothing solved): "
                f"{stat_floors[dtype]:.1f} s = {stat_floors[dtype] / floor:.2f} x the two-pass floor"
            )


def setup(args, dtype: str):
    """The model in ``dtype``, its pristine weights, the calibration context and windows, the
    perplexity metric and the table's header line, from the arguments pruning.py and
    quantization.py share (model, n_samples, seqlen, eval_seqlen, eval_windows)."""
    lm = load_model(args.model, dtype=dtype)
    pristine = lm.state_copy()
    ctx = Context(calibration_samples=args.n_samples, calibration_seqlen=args.seqlen, dtype=dtype)
    windows = ctx.calibration_batches(lm)
    ppl = build_metrics(
        ["perplexity"],
        {"perplexity": {"seqlen": args.eval_seqlen, "max_tokens": args.eval_windows * args.eval_seqlen}},
    )[0]
    header = (
        f"model {args.model}, torch threads {torch.get_num_threads()}; calibration {windows.shape[0]} x "
        f"{windows.shape[1]} tokens; perplexity: wikitext-2 test, first {args.eval_windows} windows of "
        f"{min(args.eval_seqlen, lm.max_positions)}"
    )
    return lm, pristine, ctx, windows, ppl, header


def step_text(method: str, structure: str, block_size: int | None = None) -> str:
    text = f"{method}:structure={structure}" if ":" in structure else f"{method}:sparsity={structure}"
    return text + (f",blocksize={block_size}" if block_size and method == "sparsegpt" else "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="sparsegpt,wanda")
    ap.add_argument("--structures", default="0.5,2:4")
    ap.add_argument("--n-samples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=40)
    ap.add_argument("--eval-seqlen", type=int, default=2048)
    ap.add_argument("--llmc", action="store_true", help="also run llm-compressor (separate venv)")
    ap.add_argument("--skip-floor", action="store_true")
    ap.add_argument("--skip-statistics-floor", action="store_true", help="time the two-pass floor only")
    ap.add_argument("--skip-dense", action="store_true", help="do not evaluate the dense model")
    ap.add_argument("--skip-ours", action="store_true", help="run only the llm-compressor side (with --llmc)")
    ap.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="SparseGPT lazy-update block size on both sides (ours: blocksize, llm-compressor: block_size); default: "
        "each side's own (128)",
    )
    ap.add_argument(
        "--dtypes",
        default="float32",
        help="compute dtypes, run one after the other (float32,bfloat16 puts bf16 beside fp32; statistics stay "
        "float32/64)",
    )
    args = ap.parse_args()

    rows: list[tuple[str, str, str, float, float, float | None]] = []
    floors: dict[str, float] = {}
    stat_floors: dict[str, float] = {}
    header = ""
    for dtype in args.dtypes.split(","):
        lm, pristine, ctx, windows, ppl, header = setup(args, dtype)

        def evaluate(model_lm, ppl=ppl, ctx=ctx) -> float:
            return ppl.compute(model_lm, ctx)["perplexity"]

        if not args.skip_dense:
            rows.append((dtype, "dense", "-", evaluate(lm), 0.0, None))
            print("measured:", rows[-1], flush=True)

        if not args.skip_floor:
            measure_floors(lm, ctx, windows, dtype, floors, None if args.skip_statistics_floor else stat_floors)

        for method in args.methods.split(",") if not args.skip_ours else []:
            for structure in args.structures.split(","):
                lm.restore(pristine)
                step = build_intervention(parse_step(step_text(method, structure, args.block_size)))
                t0 = time.perf_counter()
                report = step.apply(lm, ctx)
                elapsed = time.perf_counter() - t0
                rows.append(
                    (dtype, f"lmcompose {method}", structure, evaluate(lm), elapsed, report.details["sparsity"])
                )
                print("measured:", rows[-1], flush=True)

        if args.llmc:
            py = ensure_llmc_venv()
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                torch.save(windows, tmp / "windows.pt")
                for method in args.methods.split(","):
                    for structure in args.structures.split(","):
                        out = tmp / f"{method}-{structure.replace(':', '_')}"
                        res = subprocess.run(
                            [
                                str(py),
                                str(ROOT / "benchmarks" / "_llmc_oneshot.py"),
                                lm.source,
                                str(tmp / "windows.pt"),
                                method,
                                structure,
                                str(out),
                                dtype,
                                str(args.block_size or 0),
                            ],
                            capture_output=True,
                            text=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
                        )
                        if res.returncode != 0:
                            print(f"llm-compressor {method} {structure} failed:\n{res.stderr[-3000:]}", file=sys.stderr)
                            continue
                        info = json.loads(res.stdout.strip().splitlines()[-1])
                        pruned = load_model(str(out), dtype=dtype)
                        rows.append(
                            (
                                dtype,
                                f"llm-compressor {method}",
                                structure,
                                evaluate(pruned),
                                info["elapsed_s"],
                                info["sparsity"],
                            )
                        )
                        print("measured:", rows[-1], flush=True)

    print(header)
    print_floors(floors, stat_floors)
    print(f"{'dtype':<9} {'method':<26} {'setting':>8} {'perplexity':>11} {'time s':>8} {'x floor':>8} {'sparsity':>9}")
    for dtype, name, setting, p, t, sp in rows:
        floor = floors.get(dtype)
        xf = f"{t / floor:.2f}" if floor and t else "-"
        print(f"{dtype:<9} {name:<26} {setting:>8} {p:>11.2f} {t:>8.1f} {xf:>8} {'' if sp is None else f'{sp:.4f}':>9}")


if __name__ == "__main__":
    main()
