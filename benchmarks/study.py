"""A study against the ways it used to be run: wall time, model states and evaluations.

    .venv/bin/python benchmarks/study.py                         # studies/quick.yaml, all four ways
    .venv/bin/python benchmarks/study.py --ways study,ray        # some of them
    .venv/bin/python benchmarks/study.py --plan studies/paper.yaml   # counts from the plan alone

The four ways, each in a fresh process with a fresh statistics cache (so none reuses another's
MEMIT covariances or tokenized corpus), on the same study file:

* ``study`` — ``lmcompose study`` with the local executor: one plan over every cell;
* ``sweeps`` — one ``sweep()`` per (compressor, dataset), as the replication ran before it was one study:
  sharing inside a sweep only;
* ``cells`` — every cell on its own (``compose()`` on a freshly loaded model), as the paper's
  code ran: no sharing;
* ``ray`` — the study on the Ray executor against a local cluster of this machine's cores
  (1 CPU and 1 torch thread per task).

Model states and evaluations are counted by the executor that computed them. Run it alone:
two cores are easily shared, and the ratios are only meaningful in one quiet run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WAYS = ("study", "sweeps", "cells", "ray")


def _fresh_cache(base: Path) -> Path:
    """A cache folder holding the converted models (shared, read-only use) and nothing else."""
    from lmcompose.models.loading import cache_dir

    real = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    for sub in ("models", "gguf", "datasets"):
        if (real / sub).exists() and not (base / sub).exists():
            (base / sub).symlink_to(real / sub, target_is_directory=True)
    return base


def _count_executors():
    """Patch the executor so every instance is kept; returns the list."""
    from lmcompose.engine import executor as ex

    made = []
    original = ex.Executor.__init__

    def init(self, *a, **k):
        original(self, *a, **k)
        made.append(self)

    ex.Executor.__init__ = init
    return made


def _totals(executors) -> dict:
    states: dict[str, int] = {}
    evals = refs = 0
    for e in executors:
        for k, n in e.states.items():
            states[k] = states.get(k, 0) + n
        evals += e.evaluations
        refs += e.references
    return {"states": states, "evaluations": evals, "references": refs}


def run_way(way: str, study_path: str, out: Path) -> dict:
    """One way, in this process (called in a fresh subprocess by main)."""
    from lmcompose.studies import load_study

    study = load_study(study_path)
    made = _count_executors()
    start = time.perf_counter()
    if way == "study":
        from lmcompose.studies.runner import run_study

        result = run_study(study, out=out, report=False)
        counts = _totals(made)
    elif way == "ray":
        from lmcompose.studies.runner import run_study

        result = run_study(study, out=out, executor="ray", cpus_per_task=1, report=False)
        counts = {**result.executed.as_dict(), "references": result.references}
        if result.failures:
            raise SystemExit("; ".join(f.line() for f in result.failures))
    elif way == "sweeps":
        _sweeps(study, out)
        counts = _totals(made)
    elif way == "cells":
        _cells(study, out)
        counts = _totals(made)
    else:
        raise SystemExit(f"unknown way {way!r}; one of {', '.join(WAYS)}")
    return {"way": way, "wall_s": time.perf_counter() - start, **counts}


def _setup(study):
    from lmcompose.engine.threads import set_threads
    from lmcompose.studies.runner import study_context, study_metrics

    set_threads(None)
    from lmcompose.api import Progress

    ctx = study_context(study, Progress())
    return ctx, study.load_edits(ctx), study_metrics(study)


def _sweeps(study, out: Path) -> None:
    """One sweep per (entry, dataset), each on a freshly loaded model, as separate commands."""
    from lmcompose.models.loading import load_model
    from lmcompose.sweep import sweep

    for entry in study.entries:
        for ds in study.datasets:
            ctx, edits, metrics = _setup(study)
            lm = load_model(study.model, dtype=study.dtype, device=study.device)
            batches = [edits[(ds.name, r)] for r in range(study.replicates)]
            sweep(
                lm,
                entry.steps,
                vary=str(entry.vary),
                orders=[[entry.steps[i].name for i in o] for o in entry.orders],
                edits=batches,
                replicates=study.replicates,
                out=out / f"{entry.label}-{ds.name}",
                policy=study.policy,
                metrics=metrics,
                seed=study.seed,
                ctx=ctx,
                snapshots=study.snapshots,
                topk=study.topk,
            )


def _cells(study, out: Path) -> None:
    """Every cell on its own: load the model, apply the cell's steps, evaluate every position."""
    from lmcompose.compose import compose
    from lmcompose.models.loading import load_model
    from lmcompose.steps import StepSpec

    for i, cell in enumerate(study.cells()):
        ctx, edits, metrics = _setup(study)
        lm = load_model(study.model, dtype=study.dtype, device=study.device)
        steps = [StepSpec(a.name, dict(a.overrides)) for a in cell.actions if not a.again]
        compose(
            lm,
            steps,
            edits=edits[cell.group],
            out=out / f"cell-{i}",
            policy=study.policy,
            metrics=metrics,
            seed=study.seed,
            ctx=ctx,
            replicate=cell.replicate,
        )


def print_plan(path: str) -> None:
    from lmcompose.studies import load_study

    study = load_study(path)
    print(f"{path}: {len(study.cells())} cells")
    print("| way | edits | compressions | evaluations |")
    print("|---|---:|---:|---:|")
    for name, c in study.counts().items():
        print(f"| {name.replace('_', ' ')} | {c.edits} | {c.compressions} | {c.evaluations} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default=str(ROOT / "studies" / "quick.yaml"))
    ap.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated, of {', '.join(WAYS)}")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-study"))
    ap.add_argument("--plan", metavar="STUDY", help="print the plan counts of STUDY and stop")
    ap.add_argument("--one", metavar="WAY", help=argparse.SUPPRESS)  # internal: run one way here
    args = ap.parse_args()
    if args.plan:
        print_plan(args.plan)
        return
    out = Path(args.out)
    if args.one:
        print("RESULT " + json.dumps(run_way(args.one, args.study, out / args.one)), flush=True)
        return
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    bad = [w for w in ways if w not in WAYS]
    if bad:
        ap.error(f"--ways: unknown {', '.join(bad)}; choose from {', '.join(WAYS)}")
    print_plan(args.study)
    results = []
    for way in ways:
        if (out / way).exists():
            shutil.rmtree(out / way)
        cache = Path(tempfile.mkdtemp(prefix=f"lmcompose-bench-{way}-"))
        env = {**os.environ, "LMCOMPOSE_CACHE_DIR": str(_fresh_cache(cache))}
        print(f"== {way} ...", flush=True)
        proc = subprocess.run(
            [sys.executable, __file__, "--study", args.study, "--out", str(out), "--one", way],
            env=env,
            capture_output=True,
            text=True,
        )
        shutil.rmtree(cache, ignore_errors=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{way} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        results.append(json.loads(line[len("RESULT ") :]))
        print(f"   {results[-1]['wall_s']:.0f} s", flush=True)
    base = {r["way"]: r for r in results}
    print()
    print(
        "| way | wall s | edits | compressions | evaluations | reference passes | wall / study | wall / sweeps | "
        "wall / cells |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        edits = r["states"].get("edit", 0)
        comp = sum(n for k, n in r["states"].items() if k != "edit")

        def ratio(other: str, r=r) -> str:
            return f"{r['wall_s'] / base[other]['wall_s']:.2f}" if other in base else "–"

        print(
            f"| {r['way']} | {r['wall_s']:.1f} | {edits} | {comp} | {r['evaluations']} | {r.get('references', 0)} | "
            f"{ratio('study')} | {ratio('sweeps')} | {ratio('cells')} |"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
