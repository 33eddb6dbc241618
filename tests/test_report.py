"""`lmcompose sweep` and `lmcompose report`: report.md, plots, rebuilding from results.jsonl
alone, and one clear error for bad --vary / --orders input."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from lmcompose.report import build_report
from lmcompose_cli.main import app
from typer.testing import CliRunner

runner = CliRunner()
FAST = ["--ppl-tokens", "128", "--ppl-seqlen", "64", "--metrics", "perplexity,avg_bits,edit"]
PNG = b"\x89PNG\r\n\x1a\n"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "160"})


def sweep_into(tiny_folder, out):
    """The module's sweep (magnitude with RTN at 8 and 3 bits, 2 edits) into ``out``."""
    return invoke(
        "sweep", tiny_folder, "magnitude", "rtn:group_size=32", "--vary", "rtn.bits=8,3",
        "--dataset", "records", "--edits", "2", "--out", out, *FAST,
    )  # fmt: skip


@pytest.fixture(scope="module")
def swept(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "run"
    res = sweep_into(tiny_folder, out)
    assert res.exit_code == 0, res.output
    return out, res.output


def ap_rows(markdown: str, first: bool = False) -> list[str]:
    """The rows of the A/P tables in a report.md (``first``: the first table only, the one
    the terminal shows)."""
    rows, inside = [], False
    for line in markdown.splitlines():
        if line.startswith("### Composability"):
            if first and rows:
                break
            inside = True
        elif line.startswith("### "):
            inside = False
        elif inside and line.startswith("| ") and not line.startswith("| criterion"):
            rows.append(line)
    return rows


def test_sweep_writes_results_report_and_plots(swept):
    out, output = swept
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 3  # orders x strengths x positions
    md = (out / "report.md").read_text()
    # P ÷ w: P on the paper's [0, 1] scale beside the raw area (issue 42)
    assert "| criterion | A | P | P ÷ w | x interval | replicates |" in md
    # the base checkpoint's storage format, in every row and in the header (issue 42)
    assert {r["base_format"] for r in rows} == {"safetensors:fp32"}
    assert "- base checkpoint: `safetensors:fp32`\n" in md and "quantized checkpoint" not in md
    assert len(ap_rows(md)) >= 4  # perplexity + edit criteria (x = strength, and x = average bits)
    pngs = sorted((out / "plots").glob("*.png"))
    assert {p.name for p in pngs} >= {"curves.png", "composability.png", "nll.png", "topk.png"}
    for p in pngs:
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, p
    for p in pngs:
        assert f"plots/{p.name}" in md
    assert "report.md" in output and "Composability A and P" in output
    assert all(r["topk"]["prompt"] and len(r["topk"]["tokens"]) == 5 for r in rows)


def test_report_rebuilds_from_results_jsonl_alone(swept, tmp_path):
    out, sweep_output = swept
    alone = tmp_path / "copy"
    alone.mkdir()
    shutil.copy(out / "results.jsonl", alone / "results.jsonl")
    shutil.copy(out / "per_edit.jsonl", alone / "per_edit.jsonl")  # the A/P intervals' per-edit scores
    res = invoke("report", alone)
    assert res.exit_code == 0, res.output
    original, rebuilt = (out / "report.md").read_text(), (alone / "report.md").read_text()
    assert ap_rows(rebuilt) == ap_rows(original)
    assert len(list((alone / "plots").glob("*.png"))) >= 3
    # the terminal shows the same A/P numbers as the file
    for row in ap_rows(original, first=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        line = next(ln for ln in res.output.splitlines() if re.search(rf"\b{cells[0]}\b", ln))
        assert cells[1] in line and cells[2] in line
    as_json = invoke("report", alone, "--json", "--no-plots")
    data = json.loads(as_json.output)
    assert set(data["strength"]["criteria"]) >= {"perplexity", "edit_success"}
    width = data["strength"]["width"]
    lo, hi = data["strength"]["interval"]
    assert width == pytest.approx(hi - lo)
    es = data["strength"]["criteria"]["edit_success"]
    assert es["P_normalized"] == pytest.approx(es["P"] / width)
    iv = data["strength"]["intervals"]["edit_success"]
    assert iv["P_normalized"] == pytest.approx([iv["P"][0] / width, iv["P"][1] / width])
    assert build_report(alone).data.complete


def test_rerunning_the_sweep_resumes_and_adds_nothing(swept, tiny_folder):
    out, _ = swept
    before = (out / "results.jsonl").read_text()
    res = sweep_into(tiny_folder, out)
    assert res.exit_code == 0, res.output
    assert "already in its results.jsonl" in res.output
    assert (out / "results.jsonl").read_text() == before


@pytest.mark.parametrize(
    "args,message",
    [
        (["--vary", "rtn.bits"], "STEP.FIELD=v1"),
        (["--vary", "rnt.bits=4,8"], "Did you mean 'rtn'"),
        (["--vary", "rtn.bitz=4,8"], "Did you mean 'bits'"),
        (["--vary", "rtn.bits=4,12"], "out of range"),
        (["--vary", "rtn.bits=4,8", "--orders", "rtn,magnitude;rtn"], "not a permutation"),
        (["--vary", "rtn.bits=4,8", "--orders", "rtn,magnitud"], "Did you mean 'magnitude'"),
        (["--vary", "rtn.bits=4,8", "--replicates", "0"], "replicates: 0 is below 1; give a whole number >= 1"),
        (["--vary", "rtn.bits=4,8", "--snapshots", "tape"], "memory, disk"),
        ([], "no --vary given"),
    ],
)
def test_bad_sweep_input_is_one_message_and_exit_2(tiny_folder, tmp_path, args, message):
    out = tmp_path / "never"
    res = invoke("sweep", tiny_folder, "magnitude", "rtn", "--out", out, *args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    assert not out.exists()


def test_report_of_a_folder_without_a_sweep(tmp_path):
    res = invoke("report", tmp_path / "nope")
    assert res.exit_code == 2 and "does not exist" in res.output
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.jsonl").write_text('{"run_id": "x", "position": 0}\n')
    res = invoke("report", tmp_path / "run")
    assert res.exit_code == 2 and "no sweep rows" in res.output


def test_validate_a_sweep_config(tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(
        "model: smollm2-135m\nsteps: [magnitude, rtn]\nvary: rtn.bits=8,4\norders: all\nreplicates: 2\n"
        "dataset: records\nedits: 2\n"
    )
    res = invoke("validate", cfg)
    assert res.exit_code == 0, res.output
    assert "sweep of 8 cells" in res.output  # 2 orders x 2 strengths x 2 replicates
    cfg.write_text("model: smollm2-135m\nsteps: [magnitude, rtn]\nvary: rtn.bits=8,4\norders: [[rtn, magnitude]]\n")
    res = invoke("validate", cfg)
    assert res.exit_code == 0 and "sweep of 2 cells" in res.output, res.output
    cfg.write_text("model: smollm2-135m\nsteps: [magnitude, rtn]\nvary: rtn.bits=8,40\n")
    res = invoke("validate", cfg)
    assert res.exit_code == 2 and "bits=40" in res.output


def test_a_folder_without_per_edit_scores_reports_without_intervals_and_says_so(swept, tmp_path):
    out, _ = swept
    original = (out / "report.md").read_text()
    assert "95% bootstrap interval over the edits" in original
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(out / "results.jsonl", old / "results.jsonl")  # as a folder written before per_edit.jsonl
    res = invoke("report", old, "--no-plots")
    assert res.exit_code == 0, res.output
    assert "no per-edit scores" in res.output and "rerun the sweep into a new folder" in res.output
    rebuilt = (old / "report.md").read_text()
    assert rebuilt.count("no per-edit scores") == 1 and "95% bootstrap interval over the edits" not in rebuilt

    def without_intervals(row):  # the A, P and P ÷ w cells less their "[lo, hi]" (and "n.d.")
        cells = row.split("|")
        cells[2:5] = [re.sub(r" \[[-0-9.]+, [-0-9.]+\]( n\.d\.)?", "", c) for c in cells[2:5]]
        return "|".join(cells)

    assert any("[" in row.split("|")[2] for row in ap_rows(original))
    assert ap_rows(rebuilt) == [without_intervals(row) for row in ap_rows(original)]
    shutil.copy(out / "per_edit.jsonl", old / "per_edit.jsonl")
    data = json.loads(invoke("report", old, "--json", "--no-plots").output)
    lo, hi = data["strength"]["intervals"]["edit_success"]["A"]
    assert lo <= hi and data["strength"]["intervals"]["edit_success"]["resamples"] == 1000
    assert "perplexity" not in data["strength"]["intervals"]  # not scored per edit


def test_report_at_picks_the_order_effect_strength_and_refuses_bad_input(swept, tmp_path):
    """``--at`` sets the strength of a study's E_OF / E_OS tables; a field no paired entry
    varies, an item that is not FIELD=VALUE, and ``--at`` on a sweep are one message each,
    and none writes a report."""
    from pathlib import Path

    study = tmp_path / "study"
    shutil.copytree(Path(__file__).parent.parent / "docs" / "replication" / "run", study)
    (study / "report.md").unlink()
    res = invoke("report", study, "--at", "sparsity=0.65", "--no-plots")
    assert res.exit_code == 0, res.output
    md = (study / "report.md").read_text()
    section = md.split("### Order effects at one strength, editing × compression: counterfact")[1].split("###")[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| memit |")]
    strengths = {ln.split(" | ")[2] for ln in rows}
    assert "sparsity=0.65" in strengths and "bits=4" in strengths  # GPTQ/AWQ keep their middle value
    (study / "report.md").unlink()
    for args, match in (
        (["--at", "sparsty=0.65"], "at: no entry paired in both orders varies 'sparsty'; give one of bits, sparsity"),
        (["--at", "sparsity"], "--at: 'sparsity' is not FIELD=VALUE"),
    ):
        res = invoke("report", study, *args, "--no-plots")
        assert res.exit_code == 2 and match in res.output and "Traceback" not in res.output, res.output
        assert not (study / "report.md").exists()
    res = invoke("report", swept[0], "--at", "bits=8", "--no-plots")
    assert res.exit_code == 2 and "a sweep's report has no such table" in res.output, res.output


def test_a_pipe_in_a_table_cell_stays_one_cell():
    from lmcompose.reports.tables import Table

    table = Table("noise", ["criterion", "|ΔA|"], [["counterfact|gptq", "0.006"]])
    lines = [line for line in table.markdown().splitlines() if line.startswith("|")]
    assert {len(re.split(r"(?<!\\)\|", line)) for line in lines} == {4}
    assert "\\|ΔA\\|" in lines[0]
