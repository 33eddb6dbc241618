"""GPTQ and AWQ on SmolLM2-135M versus rtn and llm-compressor, with the two-pass floor.

Same model (the dequantized SmolLM2-135M folder), same calibration windows (n x seqlen
tokens of wikitext-2 train prefix + validation, seeded), same evaluation (perplexity on the
first --eval-windows windows of --eval-seqlen tokens of wikitext-2 test), all in one run,
for each compute dtype in --dtypes (fp32, and bf16 beside it). The floor is two no-grad
forward passes of the decoder (no LM head) over the calibration set, as in pruning.py.

llm-compressor is not a dependency: with --llmc, the separate venv .bench-venvs/llmcompressor
(made by benchmarks/pruning.py's recipe, torch pinned first) runs
benchmarks/_llmc_quantize.py on the same model folder and windows (GPTQModifier;
AWQModifier + QuantizationModifier with IntermediatesCache.pin_memory patched out on CPU),
and the dequantized model it saves is evaluated here with the same code. The grids match:
asymmetric (--symmetric for symmetric), group --group-size, GPTQ act-order static on both
sides (--no-act-order for neither).

    .venv/bin/python benchmarks/quantization.py [--llmc] [--bits 3,4] [--methods rtn,gptq,awq] \\
        [--dtypes float32,bfloat16]
    # any step, same protocol:
    .venv/bin/python benchmarks/quantization.py --methods "" --steps "sparsegpt:sparsity=0.5"
    .venv/bin/python benchmarks/quantization.py --quick    # a few-minute end-to-end check; not the protocol
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
from lmcompose.compose import build_intervention, parse_step
from lmcompose.metrics.compression import compression_summary
from lmcompose.models.loading import DTYPES, load_model

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from pruning import LLMC_VENV, ensure_llmc_venv, measure_floors, print_floors, setup  # noqa: E402


def step_text(method: str, bits: int, args: argparse.Namespace) -> str:
    text = f"{method}:bits={bits},group_size={args.group_size},symmetric={str(args.symmetric).lower()}"
    if method == "gptq":
        text += f",act_order={str(args.act_order).lower()}"
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="rtn,gptq,awq")
    ap.add_argument("--bits", default="3,4")
    ap.add_argument(
        "--steps",
        default="",
        help='further steps timed and evaluated on the same protocol, ";"-separated (e.g. "sparsegpt:sparsity=0.5")',
    )
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--symmetric", action="store_true")
    ap.add_argument(
        "--act-order",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="GPTQ act-order (static groups), both sides",
    )
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument(
        "--eval-dtype",
        default=None,
        choices=DTYPES,
        help="evaluate every model in this dtype (e.g. float32 after bfloat16 compute: the compute dtype's effect on "
        "the "
        "weights alone, with evaluation at fp32 speed); default: each model in its compute dtype",
    )
    ap.add_argument("--n-samples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=40)
    ap.add_argument("--eval-seqlen", type=int, default=2048)
    ap.add_argument("--llmc", action="store_true", help="also run llm-compressor (separate venv)")
    ap.add_argument("--skip-floor", action="store_true")
    ap.add_argument("--skip-statistics-floor", action="store_true", help="time the two-pass floor only")
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument("--skip-ours", action="store_true", help="run only the llm-compressor side (with --llmc)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="end-to-end check: 8 x 512 calibration, 4 eval windows of 512, fp32 only, llm-compressor only if its "
        "venv exists",
    )
    args = ap.parse_args()
    if args.eval_dtype and any(
        torch.finfo(getattr(torch, args.eval_dtype)).bits < torch.finfo(getattr(torch, d)).bits
        for d in args.dtypes.split(",")
    ):
        ap.error("--eval-dtype must be at least as wide as every compute dtype (the model is cast there and back)")
    methods = [m for m in args.methods.split(",") if m]
    extra = [t.strip() for t in args.steps.split(";") if t.strip()]
    if args.quick:
        args.n_samples, args.eval_windows, args.eval_seqlen, args.dtypes = 8, 4, 512, "float32"
        args.llmc = args.llmc or (LLMC_VENV / "bin" / "python").exists()

    rows: list[tuple[str, str, str, float, float, float | None]] = []
    floors: dict[str, float] = {}
    stat_floors: dict[str, float] = {}
    header = None
    for dtype in args.dtypes.split(","):
        lm, pristine, ctx, windows, ppl, header = setup(args, dtype)
        header += (
            f"; group {args.group_size}, {'symmetric' if args.symmetric else 'asymmetric'}, GPTQ act-order "
            f"{args.act_order}" + (f"; every model evaluated in {args.eval_dtype}" if args.eval_dtype else "")
        )

        def evaluate(model_lm, ppl=ppl, ctx=ctx, dtype=dtype) -> float:
            if not args.eval_dtype or args.eval_dtype == dtype:
                return ppl.compute(model_lm, ctx)["perplexity"]
            model_lm.model.to(getattr(torch, args.eval_dtype))  # a widening cast, so exact both ways
            try:
                return ppl.compute(model_lm, ctx)["perplexity"]
            finally:
                model_lm.model.to(getattr(torch, dtype))

        if not args.skip_dense:
            rows.append((dtype, "dense", "-", evaluate(lm), 0.0, None))
            print("measured:", rows[-1], flush=True)
        if not args.skip_floor:
            measure_floors(lm, ctx, windows, dtype, floors, None if args.skip_statistics_floor else stat_floors)
        ours = [
            (f"lmcompose {m}", str(b), step_text(m, b, args)) for m in methods for b in map(int, args.bits.split(","))
        ]
        ours += [
            (f"lmcompose {text.split(':', 1)[0]}", text.split(":", 1)[1] if ":" in text else "-", text)
            for text in extra
        ]
        for name, setting, text in ours if not args.skip_ours else []:
            lm.restore(pristine)
            step = build_intervention(parse_step(text))
            t0 = time.perf_counter()
            step.apply(lm, ctx)
            elapsed = time.perf_counter() - t0
            rows.append((dtype, name, setting, evaluate(lm), elapsed, compression_summary(lm)["avg_bits"]))
            print("measured:", rows[-1], flush=True)

        if args.llmc:
            py = ensure_llmc_venv()
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                torch.save(windows, tmp / "windows.pt")
                for method in [m for m in methods if m in ("gptq", "awq")]:
                    for bits in map(int, args.bits.split(",")):
                        out = tmp / f"{method}-{bits}"
                        cmd = [
                            str(py),
                            str(ROOT / "benchmarks" / "_llmc_quantize.py"),
                            lm.source,
                            str(tmp / "windows.pt"),
                            method,
                            str(bits),
                            str(args.group_size),
                            str(int(args.symmetric)),
                            str(int(args.act_order)),
                            dtype,
                            str(out),
                        ]
                        res = subprocess.run(
                            cmd, capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}
                        )
                        if res.returncode != 0:
                            print(f"llm-compressor {method} {bits}-bit failed:\n{res.stderr[-3000:]}", file=sys.stderr)
                            continue
                        info = json.loads(res.stdout.strip().splitlines()[-1])
                        rows.append(
                            (
                                dtype,
                                f"llm-compressor {method}",
                                str(bits),
                                evaluate(load_model(str(out), dtype=dtype)),
                                info["elapsed_s"],
                                None,
                            )
                        )
                        print("measured:", rows[-1], flush=True)

    print(header)
    print_floors(floors, stat_floors)
    width = max([7] + [len(r[2]) for r in rows])
    print(
        f"{'dtype':<9} {'method':<24} {'setting':>{width}} {'perplexity':>11} {'time s':>8} {'x floor':>8} "
        f"{'avg bits':>9}"
    )
    for dtype, name, bits, p, t, ab in rows:
        floor = floors.get(dtype)
        xf = f"{t / floor:.2f}" if floor and t else "-"
        print(
            f"{dtype:<9} {name:<24} {bits:>{width}} {p:>11.2f} {t:>8.1f} {xf:>8} {'' if ab is None else f'{ab:.3f}':>9}"
        )


if __name__ == "__main__":
    main()
