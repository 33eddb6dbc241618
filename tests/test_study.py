"""Studies: validation with key paths, one plan over every cell (counts), the same numbers as
separate sweeps, resume, shards and merge, the report from results.jsonl alone, progress."""

from __future__ import annotations

import copy
import csv
import importlib
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from lmcompose.compose import load_edits
from lmcompose.errors import ConfigError, UsageError
from lmcompose.results import read_rows
from lmcompose.studies import Study, StudyError
from lmcompose.studies.runner import merge_studies, run_study
from lmcompose.sweep import sweep
from lmcompose.testing import sample_file as sample
from lmcompose_cli.main import app
from typer.testing import CliRunner

MEMIT = "memit:layers=0+1,context_templates=0,stats_samples=8,stats_seqlen=64,v_num_grad_steps=5"
NUMBERS = (
    "perplexity",
    "general_nll",
    "avg_bits",
    "sparsity",
    "edit_success",
    "generalization",
    "locality",
    "locality_preservation",
    "edit_nll",
    "topk",
)


def quick(model: str, **over) -> dict:
    """Two compressors x two strengths x two datasets, both orders, one replicate (the shape of studies/quick.yaml)."""
    data = {
        "name": "tiny-quick",
        "model": model,
        "datasets": [
            {"name": "counterfact", "source": sample("counterfact", "counterfact_sample.json")},
            {"name": "zsre", "source": sample("zsre", "zsre_sample.json")},
        ],
        "editors": [MEMIT],
        "compressors": [
            {"step": "magnitude", "vary": {"sparsity": [0.25, 0.5]}},
            {"step": "rtn:group_size=32", "vary": {"bits": [8, 4]}},
        ],
        "replicates": 1,
        "edits": 2,
        "metrics": ["edit", "perplexity", "avg_bits"],
        "budgets": {"ppl_tokens": 128, "ppl_seqlen": 64, "calibration_samples": 4, "calibration_seqlen": 32},
    }
    data.update(over)
    return data


def key(row):
    return (row["cell"], row["position"])


def numbers(row):
    return {k: row.get(k) for k in NUMBERS}


@pytest.fixture(scope="module")
def full(tiny_folder, tmp_path_factory):
    """One complete local run of the quick-shaped study (1 thread), shared by the tests that read it."""
    out = tmp_path_factory.mktemp("study") / "full"
    events = []
    result = run_study(Study.from_mapping(quick(tiny_folder)), out=out, threads=1, on_progress=events.append)
    return result, read_rows(out / "results.jsonl"), events


def test_the_plan_computes_each_distinct_state_once(tiny_folder, full):
    study = Study.from_mapping(quick(tiny_folder))
    c = study.counts()
    assert (c["study"].edits, c["study"].compressions) == (10, 12)
    assert (c["separate_sweeps"].edits, c["separate_sweeps"].compressions) == (12, 16)
    assert (c["independent_cells"].edits, c["independent_cells"].compressions) == (16, 16)
    # what the run did is exactly the plan: every state and every evaluation once
    result, rows, _ = full
    assert result.executed.states == c["study"].states
    assert result.executed.evaluations == c["study"].evaluations
    assert c["study"].evaluations < c["separate_sweeps"].evaluations < c["independent_cells"].evaluations
    # the compressed model's perplexity is evaluated once, not once per dataset
    first = [r for r in rows if r["position"] == 1 and r["order"][0] == "magnitude" and r["strength"] == 0.5]
    assert {r["dataset"] for r in first} == {"counterfact", "zsre"} and len({r["perplexity"] for r in first}) == 1
    assert {r["shared_by_cells"] for r in first} == {2}


def test_every_row_once_with_its_dataset_and_study(full):
    result, rows, _ = full
    assert result.complete and len(rows) == 16 * 3
    assert len({key(r) for r in rows}) == len(rows)
    assert {r["dataset"] for r in rows} == {"counterfact", "zsre"}
    assert {r["study"] for r in rows} == {"tiny-quick"} and {r["run_id"] for r in rows} == {result.study.id}
    assert {(r["entry"], r["family"]) for r in rows} == {("magnitude", "prune"), ("rtn", "quantize")}


def test_the_study_gives_the_numbers_of_separate_sweeps(tiny_folder, full, tmp_path):
    import torch
    from lmcompose.models.loading import load_model

    _, rows, _ = full
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        edits = load_edits("zsre", sample("zsre", "zsre_sample.json"), 2, 0)
        ref = sweep(
            load_model(tiny_folder),
            [MEMIT, "rtn:group_size=32"],
            vary="rtn.bits=8,4",
            edits=edits,
            metrics=["edit", "perplexity", "avg_bits"],
            ctx=None,
            seed=0,
            metric_options={"perplexity": {"max_tokens": 128, "seqlen": 64}},
        )
    finally:
        torch.set_num_threads(before)
    mine = {
        (r["cell"].split("|", 2)[2], r["position"]): r for r in rows if r["dataset"] == "zsre" and r["entry"] == "rtn"
    }
    assert len(ref) == len(mine) == 12
    for r in ref:
        assert numbers(mine[key(r)]) == numbers(r), key(r)


def test_progress_callback_sees_every_state(full):
    _, _, events = full
    assert [e.done for e in events] == list(range(1, len(events) + 1))
    assert events[-1].total == len(events) == 23  # 22 states + the base model
    assert events[-1].eta_s == pytest.approx(0.0, abs=1e-6)
    assert all(e.label for e in events)


def test_resume_after_a_kill_is_exact(tiny_folder, full, tmp_path, monkeypatch):
    from lmcompose.interventions.rtn import RTN

    _, rows, _ = full
    calls = {"n": 0}
    original = RTN.apply

    def dying(self, lm, ctx):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return original(self, lm, ctx)

    monkeypatch.setattr(RTN, "apply", dying)
    study = Study.from_mapping(quick(tiny_folder))
    with pytest.raises(KeyboardInterrupt):
        run_study(study, out=tmp_path, threads=1)
    partial = read_rows(tmp_path / "results.jsonl")
    assert 0 < len(partial) < len(rows)
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"run_id": "torn')
    monkeypatch.setattr(RTN, "apply", original)
    again = run_study(study, out=tmp_path, threads=1)
    assert again.complete and again.rows == len(rows) - len(partial)
    got = read_rows(tmp_path / "results.jsonl")
    assert len({key(r) for r in got}) == len(got) == len(rows)
    ref = {key(r): numbers(r) for r in rows}
    assert {key(r): numbers(r) for r in got} == ref
    assert run_study(study, out=tmp_path, threads=1).rows == 0


def test_a_changed_study_is_refused_naming_what_changed(tiny_folder, full):
    result, _, _ = full
    changed = quick(tiny_folder, edits=3)
    with pytest.raises(UsageError, match=r"another run.*edits: 2 → 3"):
        run_study(Study.from_mapping(changed), out=result.folder, threads=1)


def test_shards_merge_into_the_full_study(tiny_folder, full, tmp_path):
    result, rows, _ = full
    study = Study.from_mapping(quick(tiny_folder))
    parts = []
    for i in (1, 2):
        part = run_study(study, out=tmp_path / f"s{i}", shard=f"{i}/2", threads=1)
        assert part.report is None and part.rows > 0
        parts.append(tmp_path / f"s{i}")
    one = {key(r) for r in read_rows(parts[0] / "results.jsonl")}
    two = {key(r) for r in read_rows(parts[1] / "results.jsonl")}
    assert one and two and not (one & two)  # each cell lives in one shard, base row included
    added, missing, rep = merge_studies(parts, tmp_path / "merged", plots=False)
    assert not missing and added == len(rows) and rep is not None
    merged = {key(r): numbers(r) for r in read_rows(tmp_path / "merged" / "results.jsonl")}
    assert merged == {key(r): numbers(r) for r in rows}
    assert merge_studies(parts, tmp_path / "merged", plots=False)[0] == 0  # merging again adds nothing
    # shards of another study are refused, and so are rows that disagree
    other = run_study(Study.from_mapping(quick(tiny_folder, seed=1)), out=tmp_path / "other", shard="1/2", threads=1)
    with pytest.raises(UsageError, match="merge combines shards of one study"):
        merge_studies([parts[0], other.folder], tmp_path / "bad")
    forged = tmp_path / "forged"
    shutil.copytree(parts[0], forged)
    text = (forged / "results.jsonl").read_text().splitlines()
    row = json.loads(text[-1])
    row["perplexity"] = 1.0
    text[-1] = json.dumps(row)
    (forged / "results.jsonl").write_text("\n".join(text) + "\n")
    with pytest.raises(UsageError, match="disagrees"):
        merge_studies([parts[0], forged], tmp_path / "bad2")


def section(md: str, title: str) -> str:
    """The markdown table under the heading that starts with ``title``."""
    start = md.index(f"### {title}")
    end = md.find("\n### ", start + 4)
    return md[start : end if end > 0 else len(md)]


def test_the_report_rebuilds_from_results_jsonl_alone(full, tmp_path):
    result, rows, _ = full
    md = (result.folder / "report.md").read_text()
    assert "Table 1: composability A / P per compressor and dataset" in md
    for name in ("fig1_prune.png", "fig1_quantize.png", "fig5_nll.png"):
        assert (result.folder / "plots" / name).read_bytes().startswith(b"\x89PNG"), name
        assert f"plots/{name}" in md
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(result.folder / "results.jsonl", alone / "results.jsonl")
    shutil.copy(result.folder / "per_edit.jsonl", alone / "per_edit.jsonl")  # the A/P intervals' per-edit scores
    res = CliRunner().invoke(app, ["report", str(alone), "--no-plots"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rebuilt = (alone / "report.md").read_text()
    for title in (
        "Table 1: composability A / P",
        "Table 1 on the common interval: counterfact",
        "magnitude on zsre: final model",
    ):
        assert section(rebuilt, title) == section(md, title) and section(md, title).count("\n| ") >= 2, title
    with open(alone / "rows.csv", newline="") as f:
        flat = list(csv.DictReader(f))
    assert len(flat) == len(rows) and {"dataset", "study", "entry", "step_name", "edit_success"} <= set(flat[0])
    pd = pytest.importorskip("pandas")
    assert len(pd.read_csv(alone / "rows.csv")) == len(rows)


def test_the_cli_runs_a_study_and_logs_progress_without_a_terminal(tiny_folder, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            quick(tiny_folder, compressors=[{"step": "magnitude", "vary": {"sparsity": [0.5]}}], datasets=["records"])
        )
    )
    res = CliRunner().invoke(app, ["study", str(path), "--out", str(tmp_path / "run"), "--threads", "1", "--no-plots"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("[study] ")]
    assert len(lines) == 5 and lines[-1].startswith("[study] 5/5 states") and "ETA" in lines[-1]
    assert "report:" in res.output and "model states: this study 2 edits + 2 compressions" in res.output
    plan = CliRunner().invoke(app, ["study", str(path), "--plan"])
    assert plan.exit_code == 0 and "2 cells" in plan.output


# --------------------------------------------------------------------------------------
# bad input: one message with the key path, exit 2, nothing written
# --------------------------------------------------------------------------------------


def _set(data, path, value):
    out = copy.deepcopy(data)
    cur = out
    parts = path.split("/")
    for p in parts[:-1]:
        cur = cur[int(p)] if isinstance(cur, list) else cur[p]
    last = parts[-1]
    if value is DELETE:
        del cur[last]
    elif isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value
    return out


DELETE = object()
BAD = [
    ("compressors/1/vary", {"bist": [8]}, r"compressors\[1\]\.vary: unknown field 'bist' \(did you mean 'bits'\?\)"),
    ("compressors/0/vary", {"sparsity": []}, r"compressors\[0\]\.vary\.sparsity: the list is empty"),
    ("compressors/0/vary", {"sparsity": 0.5}, r"compressors\[0\]\.vary\.sparsity: expected a list.*got float 0.5"),
    ("compressors/0/vary", {"sparsity": [0.5, 1.5]}, r"compressors\[0\]\.vary\.sparsity: .*out of range"),
    ("compressors/0/vary", {"sparsity": [0.5, 0.5]}, r"compressors\[0\]\.vary\.sparsity: a value is given twice"),
    (
        "compressors/0/vary",
        {"sparsity": [[0.5]]},
        r"compressors\[0\]\.vary\.sparsity\[0\]: expected one value; got a list",
    ),
    (
        "compressors/0/vary",
        {"sparsity": [0.5], "structure": ["2:4"]},
        r"compressors\[0\]\.vary: vary exactly one field",
    ),
    (
        "compressors/0/step",
        "magnitud",
        r"compressors\[0\]\.step: unknown intervention 'magnitud'. Did you mean 'magnitude'",
    ),
    ("compressors/0/step", ["magnitude"], r"compressors\[0\]\.step: expected one step.*got a list"),
    ("compressors/0/step", MEMIT, r"compressors\[0\]\.step: 'memit' is an editor"),
    ("compressors/0/stepp", "x", r"compressors\[0\]: unknown key 'stepp' \(did you mean 'step'\?\)"),
    ("compressors", [], r"compressors: the list is empty"),
    ("compressors", {"step": "magnitude"}, r"compressors: expected a list.*got a mapping"),
    ("editors/0", "magnitude", r"editors\[0\]: 'magnitude' is a prune step, not an editor"),
    ("editors", MEMIT, r"editors: expected a list.*got the string"),
    (
        "datasets/0",
        "counterfakt",
        r"datasets\[0\]: unknown edit dataset 'counterfakt' \(did you mean 'counterfact'\?\)",
    ),
    ("datasets/1/name", "counterfact", r"datasets\[1\]: dataset 'counterfact' is listed twice"),
    ("datasets", "counterfact", r"datasets: expected a list.*got the string 'counterfact'"),
    ("orders", [["editor", "editor"]], r"orders\[0\]: an order lists editor and compressor once each"),
    ("orders", [["editor", "compresor"]], r"orders\[0\]: unknown role 'compresor' \(did you mean 'compressor'\?\)"),
    ("orders", "some", r"orders: expected a list"),
    ("replicates", [2], r"replicates: expected a whole number >= 1.*got a list"),
    ("replicates", 0, r"replicates: 0 is below 1"),
    ("edits", True, r"edits: expected a whole number >= 1.*got the boolean true"),
    ("edits", DELETE, r"edits: missing; the editors need"),
    ("model", ["a", "b"], r"model: expected a model name.*got a list"),
    ("metrics", "edit", r"metrics: expected a list.*got the string 'edit'"),
    ("metrics", ["edit", "perplexty"], r"metrics: unknown metric 'perplexty'. Did you mean 'perplexity'"),
    ("metric_options", "x", r"metric_options: expected a mapping"),
    ("budgets/ppl_tokens", "lots", r"budgets\.ppl_tokens: expected a whole number"),
    (
        "budgets/calibration_sampels",
        4,
        r"budgets: unknown key 'calibration_sampels' \(did you mean 'calibration_samples'\?\)",
    ),
    ("policy", "projekt", r"policy: the string 'projekt' is not one of none, project, recompress"),
    ("skip_invalid", "maybe", r"skip_invalid: expected true or false"),
    ("compresors", [], r"\(top level\): unknown key 'compresors' \(did you mean 'compressors'\?\)"),
    ("resources", {"gpus_per_task": -1}, r"resources\.gpus_per_task: -1 is out of range"),
]


@pytest.mark.parametrize("path,value,match", BAD, ids=[b[0] + ":" + str(i) for i, b in enumerate(BAD)])
def test_a_bad_study_is_one_message_with_its_key_path(tiny_folder, tmp_path, path, value, match):
    data = _set(quick(tiny_folder), path, value)
    with pytest.raises(StudyError, match=match):
        Study.from_mapping(data)
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(data))
    for args in (["validate", str(file)], ["study", str(file), "--out", str(tmp_path / "run")]):
        res = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output and "error:" in res.output
    assert not (tmp_path / "run").exists()


def test_composed_entries_and_explicit_orders(tiny_folder):
    data = quick(
        tiny_folder,
        compressors=[
            {"steps": [MEMIT, "magnitude", "rtn:group_size=32"], "vary": {"rtn.bits": [8, 4]}, "name": "three"},
            {"step": "magnitude", "vary": {"sparsity": [0.5]}},
        ],
        orders=[["compressor", "editor"]],
    )
    study = Study.from_mapping(data)
    three = [c for c in study.cells() if c.labels["entry"] == "three"]
    assert len(three) == 6 * 2 * 2  # 3! orders x 2 values x 2 datasets
    pair = [c for c in study.cells() if c.labels["entry"] == "magnitude"]
    assert {c.names for c in pair} == {("magnitude", "memit")}
    with pytest.raises(StudyError, match=r"compressors\[0\]\.vary: unknown step 'rtm' \(did you mean 'rtn'\?\)"):
        Study.from_mapping(_set(data, "compressors/0/vary", {"rtm.bits": [8]}))
    with pytest.raises(StudyError, match=r"compressors\[0\]\.orders: .*not a permutation"):
        Study.from_mapping(_set(data, "compressors/0/orders", [["memit", "magnitude"]]))


def test_a_one_order_entry_shares_the_compressed_models_and_reaches_the_report(tiny_folder, tmp_path):
    """studies/replication.yaml's shape: the paired entries, and compressor -> MEMIT once more
    with the base model's covariance (stats_from=base) on the same compressed models."""
    base_memit = MEMIT + ",stats_from=base"
    shape = quick(tiny_folder)
    paired = {**shape, "datasets": shape["datasets"][:1], "compressors": shape["compressors"][:1]}
    extra = {
        "name": "magnitude+memit(base)",
        "steps": ["magnitude", base_memit],
        "vary": {"magnitude.sparsity": [0.25, 0.5]},
        "orders": [["magnitude", "memit"]],
    }
    study = Study.from_mapping({**paired, "compressors": [*paired["compressors"], extra]})
    alone, both = Study.from_mapping(paired).counts()["study"], study.counts()["study"]
    assert both.compressions == alone.compressions and both.edits == alone.edits + 2
    result = run_study(study, out=tmp_path / "s", threads=1)
    assert result.complete
    rows = read_rows(result.folder / "results.jsonl")
    final = {
        (r["entry"], r["strength"]): r for r in rows if r["position"] == 2 and r["order"] == ["magnitude", "memit"]
    }
    assert set(final) == {(e, v) for e in ("magnitude", "magnitude+memit(base)") for v in (0.25, 0.5)}
    for v in (0.25, 0.5):  # the compressed model's own statistics against the dense model's: another update
        assert final[("magnitude", v)]["edit_nll"] != final[("magnitude+memit(base)", v)]["edit_nll"]
    md = (result.folder / "report.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("| magnitude+memit(base) |")]
    assert lines, md  # in Table 1: P, but no A (one order gives A = 0 by construction)
    cells = lines[0].split("|")[3:-3]  # the criteria's A / P cells
    assert cells and all(cell.strip().startswith("– / ") for cell in cells), lines[0]
    assert md.count("An entry run in one order has no A") == 1 + len(study.datasets)  # Table 1 and each common interval
    paired_line = next(ln for ln in md.splitlines() if ln.startswith("| magnitude |"))
    assert "– / " not in paired_line


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("compressors: *i")
    file = tmp_path / "bomb.yaml"
    file.write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(app, ["validate", str(file)])
    assert res.exit_code == 2 and "expands to more than 1,000,000 values" in res.output


def test_shipped_study_files_validate():
    root = Path(__file__).parent.parent / "studies"
    shipped = sorted(f.name for f in root.glob("*.yaml"))
    assert {"paper.yaml", "quick.yaml", "demo.yaml", "replication.yaml", "editors.yaml", "protocol.yaml"} <= set(
        shipped
    )
    for name in shipped:
        study = Study.from_mapping(yaml.safe_load((root / name).read_text()), name=Path(name).stem)
        assert study.cells()
    # protocol.yaml is replication.yaml's GPTQ part under protocol: paper, cell for cell
    rep, proto = (
        Study.from_mapping(yaml.safe_load((root / f).read_text())) for f in ("replication.yaml", "protocol.yaml")
    )
    assert (proto.protocol, proto.policy, rep.protocol, rep.policy) == ("paper", "recompress", "default", "project")
    same = ("model", "edits", "seed", "replicates", "budgets", "metrics", "dtype")
    assert all(getattr(proto, k) == getattr(rep, k) for k in same)
    assert [e.step for e in proto.editors] != [e.step for e in rep.editors]  # stats_from=base filled in
    assert [e.label for e in proto.editors] == [e.label for e in rep.editors]
    (gptq,) = proto.entries
    (twin,) = [e for e in rep.entries if e.compressor == "gptq"]
    assert gptq.vary.values == twin.vary.values and gptq.orders == twin.orders
    assert gptq.steps[1].overrides == {
        **twin.steps[1].overrides,
        "symmetric": True,
        "act_order": True,
        "true_sequential": True,
    }
    paper = Study.from_mapping(yaml.safe_load((root / "paper.yaml").read_text()))
    assert {e.compressor for e in paper.entries} == {"sparsegpt", "wanda", "gptq", "awq"}
    assert all(len(e.vary.values) >= 4 for e in paper.entries)
    assert {d.name for d in paper.datasets} == {"counterfact", "zsre", "mquake"}
    assert paper.edits == 50 and paper.replicates >= 2
    quick_study = Study.from_mapping(yaml.safe_load((root / "quick.yaml").read_text()))
    c = quick_study.counts()
    assert (c["study"].edits, c["study"].compressions) == (10, 12)
    assert (c["separate_sweeps"].edits, c["separate_sweeps"].compressions) == (12, 16)
    assert (c["independent_cells"].edits, c["independent_cells"].compressions) == (16, 16)


def test_threads_follow_the_cores_this_process_may_use(tmp_path, monkeypatch):
    import os

    import torch
    from lmcompose.engine import threads

    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a quota of 1.5 cores
    assert threads.cgroup_cpu_limit(tmp_path) == pytest.approx(1.5)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert threads.available_cores(tmp_path) == 2  # 4 cores allowed, capped by the quota (rounded up)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) is None and threads.available_cores(tmp_path) == 4
    before = torch.get_num_threads()
    with threads.threads_for(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(Exception, match="--threads 0"):
        threads.set_threads(0)


def test_a_study_reads_the_data_folder_it_is_given(tiny_folder, tmp_path, monkeypatch):
    from lmcompose.api import Progress
    from lmcompose.studies.runner import StudyWork, study_context

    monkeypatch.delenv("LMCOMPOSE_DATA_DIR", raising=False)
    data = tmp_path / "data" / "wikitext-2-raw"
    data.mkdir(parents=True)
    for name in ("wiki.test.raw", "wiki.train.raw", "wiki.valid.raw"):
        (data / name).write_text(" = Valkyria = \n\n" + "The game is a tactical role playing game .\n" * 300)
    spec = quick(
        tiny_folder,
        datasets=[{"name": "records"}],
        metrics=["perplexity"],
        edits=1,
        compressors=[{"step": "magnitude", "vary": {"sparsity": [0.5]}}],
    )
    result = run_study(Study.from_mapping(spec), out=tmp_path / "s", threads=1, data_dir=data.parent, report=False)
    assert not result.missing
    config = yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())
    assert config["inputs"]["corpora"]["test"].startswith("wiki.test.raw:")
    work = StudyWork(Study.from_mapping(spec).data, "tiny-quick", "cpu", data.parent)  # what a Ray worker gets
    assert study_context(work.study(), Progress()).data_dir == data.parent
    with pytest.raises(ConfigError, match="data folder .* does not exist"):
        run_study(Study.from_mapping(spec), out=tmp_path / "t", data_dir=tmp_path / "nope")
    assert not (tmp_path / "t").exists()


def per_edit_scores(folder):
    from lmcompose.results import read_per_edit

    return {k: (v["case_ids"], v["scores"]) for k, v in read_per_edit(folder).items()}


def test_per_edit_scores_reach_the_report_and_survive_shards_and_merge(tiny_folder, full, tmp_path):
    result, rows, _ = full
    scores = per_edit_scores(result.folder)
    assert set(scores) == {key(r) for r in rows}  # every study row evaluates its dataset's edits
    for r in rows:
        case_ids, s = scores[key(r)]
        assert case_ids == r["edit_ids"] and len(s["edit_success"]) == 2
        assert sum(s["edit_success"]) / 2 == r["edit_success"] and sum(s["locality"]) / 2 == r["locality"]
    md = (result.folder / "report.md").read_text()
    assert "95% bootstrap interval over the edits" in md and "no per-edit scores" not in md
    assert "## Comparisons" in md and "- magnitude vs rtn on counterfact" in md
    study = Study.from_mapping(quick(tiny_folder))
    parts = [run_study(study, out=tmp_path / f"s{i}", shard=f"{i}/2", threads=1).folder for i in (1, 2)]
    merge_studies(parts, tmp_path / "merged", plots=False)
    assert per_edit_scores(tmp_path / "merged") == scores


def test_a_grid_over_the_cell_cap_is_refused_naming_its_key_and_file_before_a_step_is_built(
    tiny_folder, tmp_path, monkeypatch
):
    import lmcompose.studies.spec as spec

    def never(*args, **kwargs):
        raise AssertionError("a value of a grid over the cap was built")

    monkeypatch.setattr(spec, "make_vary", never)
    values = [(i + 1) / 100_003 for i in range(100_001)]
    big = quick(tiny_folder, compressors=[{"step": "magnitude", "vary": {"sparsity": values}}])
    big["datasets"] = big["datasets"][:1]
    file = tmp_path / "big.yaml"
    file.write_text(json.dumps(big))  # JSON is YAML, and quick to write
    res = CliRunner().invoke(app, ["validate", str(file)], env={"COLUMNS": "300"})
    assert res.exit_code == 2, res.output
    assert f"{file}: compressors[0].vary.sparsity: this asks for 200,002 cells, more than the 100,000" in res.output
    assert "give fewer values" in res.output
    nine = ["magnitude", "rtn", "wanda", "sparsegpt", "gptq", "awq", MEMIT, "magnitude:sparsity=0.1", "ft"]
    cases = [
        ({"replicates": 10**12}, "replicates: this asks for"),
        ({"compressors": [{"steps": nine, "vary": {"rtn.bits": [8, 4]}}]}, "compressors[0].orders: this asks for"),
    ]
    for over, match in cases:
        with pytest.raises(StudyError, match=re.escape(match)):
            Study.from_mapping(quick(tiny_folder, **over))


def test_planning_builds_each_distinct_step_once(tiny_folder, monkeypatch):
    sweep_module = importlib.import_module("lmcompose.sweep")  # the package's `sweep` is the function
    built: list[str] = []
    real = sweep_module.build_intervention

    def counting(spec):
        built.append(str(spec))
        return real(spec)

    values = [round(0.01 * (i + 1), 2) for i in range(50)]
    study = Study.from_mapping(quick(tiny_folder, compressors=[{"step": "magnitude", "vary": {"sparsity": values}}]))
    monkeypatch.setattr(sweep_module, "build_intervention", counting)
    cells = study.cells()
    study.counts(cells=cells)
    assert len(cells) == 50 * 2 * 2  # values x orders x datasets
    # per dataset the sequence's two steps once; then the editor and each value once for the whole study
    assert len(built) == 2 * 2 + 1 + 50, sorted(built)
