"""What one evaluation of the edit metrics costs: the per-pair path against the packed one
(the default), and both against the floor, measured in one run.

For each dataset (50 CounterFact and 50 zsRE edits by default, from LMCOMPOSE_DATA_DIR) on
SmolLM2-135M, timed after a warm-up, the best of ``--repeat``:

- ``per pair``: the earlier teacher forcing, every (prompt, target) its own sequence and the
  LM head over every position, and greedy generation through ``model.generate``
  (``EditMetrics._per_pair``);
- ``branched`` (teacher forcing only): each distinct prompt once, its targets after its
  cached keys and values in a second forward, the head only where a score reads it (the
  fallback for attention a 4D mask cannot stand for; ``Scorer(packed=False)``);
- ``packed``: each distinct prompt and its targets one row under a block mask, rows batched
  by a token budget, the head only where a score reads it, and greedy generation by the
  greedy loop (the default);
- ``floor``: one no-grad forward over each distinct prompt followed by all its targets, the
  head only at the target positions: what teacher forcing cannot go below;
- ``floor + generation``: the floor's forward with each greedy continuation the evaluation
  generates (the tokens after the first one teacher forcing's argmax already gives) appended
  to its prompt's row, the head at those positions too: every token a whole evaluation must
  pass, each once, and what the ``evaluation`` rows are also compared with
  (``time / floor + gen``). Greedy generation cannot reach it (a continuation's tokens come
  one step at a time), so it is a bound, not a path.

Teacher forcing alone (every pair an evaluation forces, once) is timed on each path, the
whole ``EditMetrics.compute`` (which adds greedy generation for the f1 scorer and multi-hop;
the floor has no such row) on per pair (the evaluation as it was before these paths, with
``neighbour_knowledge``'s greedy answers to the locality prompts, then scored by default)
and packed (today's default: no ``neighbour_knowledge``, so no generation on the locality
prompts), and packed once more with ``neighbour_knowledge: true`` (every other score the
same either way). ``tokens`` counts the token ids the
embeddings see (padding and generated tokens included), ``head`` the positions the LM head
runs on.

    .venv/bin/python benchmarks/eval_cost.py [--edits 50] [--threads 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Cost:
    seconds: float
    tokens: int
    head: int


class Counter:
    """Token ids through the input embeddings and positions through the LM head."""

    def __init__(self, lm: Any):
        self.tokens = self.head = 0
        self.handles = [
            lm.model.get_input_embeddings().register_forward_pre_hook(self._count_tokens),
            lm.model.get_output_embeddings().register_forward_pre_hook(self._count_head),
        ]

    def _count_tokens(self, _module: Any, args: tuple) -> None:
        self.tokens += args[0].numel()

    def _count_head(self, _module: Any, args: tuple) -> None:
        self.head += args[0].shape[:-1].numel()

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def measure(lm: Any, run: Callable[[], Any], repeat: int) -> Cost:
    run()  # warm-up: allocation, kernel choice
    best = float("inf")
    counter = Counter(lm)
    try:
        for _ in range(repeat):
            counter.tokens = counter.head = 0
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
    finally:
        counter.close()
    return Cost(best, counter.tokens, counter.head)


def continuations(lm: Any, edits: list[Any], batch_size: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, tokens generated after teacher forcing's) of each pair one packed
    evaluation of ``edits`` generates on: the tokens greedy generation had to produce."""
    from lmcompose.api import Context
    from lmcompose.metrics.edits import EditMetrics, Scorer, first_miss

    got: list[tuple[list[int], list[int]]] = []
    real = Scorer.generate_for

    def generate_for(self: Any, pairs: list[tuple[str, str]], forced: Any = None) -> list[list[int]]:
        outs = real(self, pairs, forced)
        for pair, f, out in zip(pairs, forced or [None] * len(pairs), outs, strict=True):
            prompt, target = self.encode(*pair)
            agree = len(target) if f is None else first_miss(f["target_argmax"], target)
            if out[agree + 1 :]:  # the argmax at the first miss is teacher forcing's too
                got.append((prompt, out[agree + 1 :]))
        return outs

    Scorer.generate_for = generate_for  # type: ignore[method-assign]
    try:
        EditMetrics.from_overrides({"batch_size": batch_size}).compute(lm, Context(edits=edits))
    finally:
        Scorer.generate_for = real  # type: ignore[method-assign]
    return got


def floor(
    lm: Any,
    pairs: list[tuple[str, str]],
    batch_size: int,
    generated: Sequence[tuple[list[int], list[int]]] = (),
) -> None:
    """Each distinct prompt followed by all its targets (and the ``generated`` tokens after
    it), right-padded in batches of similar length, through the decoder; the head at the
    positions that predict those tokens."""
    from lmcompose.metrics.edits import Scorer, _HeadAbove

    sc, head = Scorer(lm, batch_size), _HeadAbove(lm)
    targets: dict[tuple[int, ...], list[int]] = {}
    for p, t in [*(sc.encode(*pair) for pair in pairs), *generated]:
        targets.setdefault(tuple(p), []).extend(t)
    seqs = sorted((([*p, *t], len(p), len(t)) for p, t in targets.items()), key=lambda s: len(s[0]))
    with torch.no_grad():
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start : start + batch_size]
            width = max(len(s) for s, _p, _t in chunk)
            ids = torch.full((len(chunk), width), sc.pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            rows, cols = [], []
            for i, (s, n_p, n_t) in enumerate(chunk):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
                rows += [i] * n_t
                cols += range(n_p - 1, n_p - 1 + n_t)
            h = head.hidden(ids, mask, torch.arange(width).expand(len(chunk), width), None)
            logits = head.logits(h[torch.tensor(rows), torch.tensor(cols)])
            torch.logsumexp(logits, -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--datasets", default="counterfact,zsre")
    ap.add_argument("--edits", type=int, default=50, help="edits per dataset")
    ap.add_argument("--batch-size", type=int, default=16, help="the edit metrics' batch_size")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each path (the best is shown)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from lmcompose import load_edits, load_model
    from lmcompose.api import Context
    from lmcompose.metrics.edits import EditMetrics, Scorer, _forced_pairs

    lm = load_model(args.model)
    print(
        f"{args.model} on {lm.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{args.edits} edits per dataset, batch size {args.batch_size}, best of {args.repeat}\n"
    )
    print(
        "| dataset | path | part | wall s | tokens | head positions | time / floor | tokens / floor | time / per pair "
        "| time / floor + gen |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for dataset in args.datasets.split(","):
        edits = load_edits(dataset, limit=args.edits)
        pairs = _forced_pairs(edits)

        def forcing(path: str, pairs=pairs) -> Callable[[], Any]:
            per_pair, packed = path == "per pair", path == "packed"
            return lambda: Scorer(lm, args.batch_size, per_pair=per_pair, packed=packed).teacher_forced(pairs, False)

        def evaluation(path: str, edits=edits) -> Callable[[], Any]:
            options: dict[str, Any] = {"batch_size": args.batch_size}
            if path in ("per pair", "packed, neighbour_knowledge on"):  # per pair: the evaluation as it was
                options["neighbour_knowledge"] = True
            metric = EditMetrics.from_overrides(options)
            metric._per_pair = path == "per pair"
            return lambda: metric.compute(lm, Context(edits=edits))

        with torch.inference_mode():
            low = measure(lm, lambda pairs=pairs: floor(lm, pairs, args.batch_size), args.repeat)
            extra = continuations(lm, edits, args.batch_size)
            bound = lambda pairs=pairs, extra=extra: floor(lm, pairs, args.batch_size, extra)  # noqa: E731
            with_gen = measure(lm, bound, args.repeat)
            rows = [("floor", "teacher forcing", low), ("floor + generation", "evaluation", with_gen)]
            for part, make, paths in (
                ("teacher forcing", forcing, ("per pair", "branched", "packed")),
                ("evaluation", evaluation, ("per pair", "packed", "packed, neighbour_knowledge on")),
            ):
                rows += [(path, part, measure(lm, make(path), args.repeat)) for path in paths]
        base = {part: cost for path, part, cost in rows if path == "per pair"}
        for path, part, cost in rows:
            per_pair = base.get(part)
            print(
                f"| {dataset} | {path} | {part} | {cost.seconds:.3f} | {cost.tokens} | {cost.head} "
                f"| {cost.seconds / low.seconds:.2f} | {cost.tokens / low.tokens:.2f} | "
                f"{cost.seconds / per_pair.seconds if per_pair else float('nan'):.2f} | "
                f"{cost.seconds / with_gen.seconds:.2f} |"
            )


if __name__ == "__main__":
    main()
