"""Does bf16 compute pay on this machine? fp32 against bf16, measured in one run.

The pruning and quantization benchmarks take ``--dtypes float32,bfloat16``: bf16 compute
means the model's weights and activations in bf16 (statistics still accumulated in
fp32/fp64), which halves the time only where the hardware multiplies bf16 natively (GPUs;
CPUs with AVX-512 BF16 or AMX). Before spending a full protocol on it, this script times,
for both dtypes, on the device torch picks here:

1. the matrix products of one SmolLM2-135M decoder layer on one calibration window
   (512 tokens: q/o 576 -> 576, k/v 576 -> 192, gate/up 576 -> 1536, down 1536 -> 576);
2. the decoder (embeddings, layers, final norm; no LM head) over a few calibration windows
   of 512 tokens: the unit the two-pass floor is made of.

    .venv/bin/python benchmarks/bf16_compute.py [--windows 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

# (name, in, out) of SmolLM2-135M's projections (hidden 576, 3 KV heads of 64, MLP 1536)
SHAPES = [("q/o", 576, 576), ("k/v", 576, 192), ("gate/up", 576, 1536), ("down", 1536, 576)]


def timed(fn, repeat: int) -> float:
    fn()  # warm-up (kernel selection, allocation)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=4, help="calibration windows of --seqlen timed through the decoder")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=20, help="repetitions of each matrix product")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dtypes = (torch.float32, torch.bfloat16)
    cap = torch.backends.cpu.get_cpu_capability() if args.device == "cpu" else torch.cuda.get_device_name()
    print(
        f"device {args.device} ({cap}), torch {torch.__version__}, threads {torch.get_num_threads()}, {args.seqlen} "
        f"tokens per window"
    )

    print(
        f"\n{'product':<10} {'in':>5} {'out':>5} {'fp32 ms':>9} {'bf16 ms':>9} {'fp32 GFLOP/s':>13} "
        f"{'bf16 GFLOP/s':>13} {'bf16/fp32 time':>15}"
    )
    gen = torch.Generator().manual_seed(0)
    for name, d_in, d_out in SHAPES:
        times = []
        for dt in dtypes:
            x = torch.randn(args.seqlen, d_in, generator=gen).to(args.device, dt)
            w = torch.randn(d_out, d_in, generator=gen).to(args.device, dt)

            def run(x=x, w=w) -> None:
                torch.nn.functional.linear(x, w)
                sync(args.device)

            times.append(timed(run, args.repeat))
        flops = 2 * args.seqlen * d_in * d_out
        print(
            f"{name:<10} {d_in:>5} {d_out:>5} {times[0] * 1e3:>9.2f} {times[1] * 1e3:>9.2f} "
            f"{flops / times[0] / 1e9:>13.1f} {flops / times[1] / 1e9:>13.1f} {times[1] / times[0]:>15.2f}"
        )

    from lmcompose.api import Context
    from lmcompose.models.loading import load_model

    decoder_s = []
    for dt in ("float32", "bfloat16"):
        lm = load_model(args.model, dtype=dt)
        lm.model.to(args.device)
        windows = (
            Context(calibration_samples=args.windows, calibration_seqlen=args.seqlen)
            .calibration_batches(lm)
            .to(args.device)
        )
        decoder = lm.model.base_model

        def forward(decoder=decoder, windows=windows) -> None:
            with torch.no_grad():
                for j in range(windows.shape[0]):
                    decoder(windows[j : j + 1], use_cache=False)
            sync(args.device)

        decoder_s.append(timed(forward, 1) / windows.shape[0])
        del lm, decoder
    print(f"\n{'decoder forward, one window':<28} {'fp32 s':>8} {'bf16 s':>8} {'bf16/fp32 time':>15}")
    print(f"{args.model:<28} {decoder_s[0]:>8.3f} {decoder_s[1]:>8.3f} {decoder_s[1] / decoder_s[0]:>15.2f}")


if __name__ == "__main__":
    main()
