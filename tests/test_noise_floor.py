"""The noise floor of a study: ``reseed: calibration`` (each replicate's compressors on their
own calibration windows) and ``noise_floor`` (chosen cells repeated under other calibration
seeds or another thread count), planned as states of their own, labelled in the rows, and
kept out of the main tables."""

from __future__ import annotations

import pytest
import torch
from lmcompose.api import Context
from lmcompose.engine.executor import under_variant
from lmcompose.engine.plan import Action
from lmcompose.models.tiny import tiny_model
from lmcompose.studies import Study, StudyError
from lmcompose.studies.runner import run_study
from lmcompose.testing import sample_file as sample


def study(model: str, **over) -> dict:
    """Wanda (it calibrates) x two sparsities, with FT as the editor, both orders, two replicates."""
    data = {
        "name": "tiny-noise",
        "model": model,
        "datasets": [{"name": "counterfact", "source": sample("counterfact", "counterfact_sample.json")}],
        "editors": ["ft:steps=2"],
        "compressors": [{"step": "wanda", "vary": {"sparsity": [0.25, 0.5]}}],
        "replicates": 2,
        "edits": 2,
        "metrics": ["edit", "perplexity", "avg_bits"],
        "budgets": {"ppl_tokens": 128, "ppl_seqlen": 64, "calibration_samples": 4, "calibration_seqlen": 32},
    }
    data.update(over)
    return data


def compressions(s: Study) -> int:
    return s.plan().counts().compressions


def test_reseed_gives_each_replicate_its_own_compressed_models(tiny_folder):
    plain = Study.from_mapping(study(tiny_folder))
    reseeded = Study.from_mapping(study(tiny_folder, reseed="calibration"))
    # compress -> edit: one compressed model per strength, or per strength and replicate
    # edit -> compress: one per strength and replicate either way
    assert compressions(plain) == 2 + 2 * 2
    assert compressions(reseeded) == 2 * 2 + 2 * 2
    seeds = {dict(a.variant).get("calibration_seed") for c in reseeded.cells() for a in c.actions if a.kind != "edit"}
    assert seeds == {0, 1}
    assert all(not a.variant for c in reseeded.cells() for a in c.actions if a.kind == "edit")
    assert plain.id != reseeded.id
    # a study written before these keys existed keeps its id
    assert "reseed" not in plain.resolved() and "noise_floor" not in plain.resolved()


def test_noise_floor_repeats_the_chosen_cells_under_each_variant(tiny_folder):
    s = Study.from_mapping(study(tiny_folder, noise_floor={"cells": ["wanda"], "seeds": [1, 2], "threads": 1}))
    noise = [c for c in s.cells() if "noise" in c.labels]
    main = [c for c in s.cells() if "noise" not in c.labels]
    assert len(main) == 8 and len(noise) == 3 * 8
    assert {c.labels["noise"] for c in noise} == {"seed=1", "seed=2", "threads=1"}
    assert all(c.id.split("|noise:")[0] in {m.id for m in main} for c in noise)
    for c in noise:
        variant = [dict(a.variant) for a in c.actions]
        if c.labels["noise"] == "threads=1":
            assert all(v == {"threads": 1} for v in variant)  # every step, the editor too
        else:
            seed = int(c.labels["noise"].split("=")[1])
            kinds = [a.kind for a in c.actions]
            assert [v.get("calibration_seed") for v in variant] == [None if k == "edit" else seed for k in kinds]
    # a seed's edit -> compress cells share the edited models with the main cells (compress ->
    # edit edits each new compressed model: 2 strengths x 2 replicates); threads=1 recomputes all
    plain = Study.from_mapping(study(tiny_folder))
    assert plain.plan().counts().edits == 2 + 2 * 2
    assert s.plan().counts().edits == plain.plan().counts().edits + 2 * (2 * 2) + (2 + 2 * 2)


@pytest.mark.parametrize(
    ("noise", "match"),
    [
        ({"cells": ["gptq"], "seeds": [1]}, r"noise_floor.cells\[0\]: no cell matches 'gptq'; give an entry \(wanda\)"),
        ({"cells": ["wanda"], "seeds": [0]}, r"noise_floor.seeds\[0\]: 0 is the study's own seed"),
        ({"cells": ["wanda"], "seeds": [1, 1]}, r"noise_floor.seeds\[1\]: 1 is listed twice"),
        ({"cells": ["wanda"]}, r"noise_floor: give seeds, threads or both"),
        ({"seeds": [1]}, r"noise_floor: missing cells"),
        ({"cells": ["wanda"], "seeds": [1], "repeat": 2}, r"noise_floor: unknown key 'repeat'"),
        ({"cells": ["wanda"], "threads": 0}, r"noise_floor.threads: 0 is below 1"),
    ],
)
def test_a_bad_noise_floor_is_one_message(tiny_folder, noise, match):
    with pytest.raises(StudyError, match=match):
        Study.from_mapping(study(tiny_folder, noise_floor=noise))


def test_a_bad_noise_floor_cell_id_lists_valid_ones(tiny_folder):
    with pytest.raises(StudyError, match=r"counterfact\|wanda.*cell id \(e.g. counterfact\|wanda\|"):
        Study.from_mapping(study(tiny_folder, noise_floor={"cells": ["counterfact|wanda|x|0.5|r9"], "seeds": [1]}))


def test_reseed_must_be_known(tiny_folder):
    with pytest.raises(StudyError, match="reseed: the string 'weights' is not one of none, calibration"):
        Study.from_mapping(study(tiny_folder, reseed="weights"))


def test_a_variant_sets_the_calibration_seed_and_threads_and_restores_them():
    ctx = Context(seed=0)
    before = torch.get_num_threads()
    action = Action("wanda", {}, "prune", "wanda{}", 0).varied(calibration_seed=5, threads=1)
    assert action.tree_key != Action("wanda", {}, "prune", "wanda{}", 0).tree_key
    with under_variant(ctx, action.variant):
        assert ctx.calibration_seed == 5 and torch.get_num_threads() == 1
    assert ctx.calibration_seed is None and torch.get_num_threads() == before


def test_the_calibration_seed_picks_the_windows():
    lm = tiny_model("llama")
    a = Context(seed=0, calibration_samples=2, calibration_seqlen=16).calibration_batches(lm)
    b = Context(seed=0, calibration_samples=2, calibration_seqlen=16, calibration_seed=3).calibration_batches(lm)
    c = Context(seed=3, calibration_samples=2, calibration_seqlen=16).calibration_batches(lm)
    assert not torch.equal(a, b) and torch.equal(b, c)


def test_noise_rows_are_labelled_and_leave_the_main_rows_alone(tiny_folder, tmp_path):
    plain = run_study(Study.from_mapping(study(tiny_folder, replicates=1)), out=tmp_path / "plain", threads=1)
    noise = {"cells": ["counterfact|wanda"], "seeds": [7]}
    noisy = run_study(
        Study.from_mapping(study(tiny_folder, replicates=1, noise_floor=noise)), out=tmp_path / "noisy", threads=1
    )
    from lmcompose.results import read_rows

    p = {(r["cell"], r["position"]): r for r in read_rows(tmp_path / "plain" / "results.jsonl")}
    n = read_rows(tmp_path / "noisy" / "results.jsonl")
    main = [r for r in n if "noise" not in r]
    noise = [r for r in n if "noise" in r]
    assert len(main) == len(p) and len(noise) == len(p)
    for r in main:  # the repetitions change no row of the study itself
        q = p[(r["cell"], r["position"])]
        assert {k: r.get(k) for k in ("perplexity", "edit_success", "avg_bits")} == {
            k: q.get(k) for k in ("perplexity", "edit_success", "avg_bits")
        }
    assert {r["noise"] for r in noise} == {"seed=7"}
    final = [r for r in noise if r["position"] == r["last_position"] and r["order"][-1] == "wanda"]
    other = [p[(r["cell"].split("|noise:")[0], r["position"])] for r in final]
    assert any(a["perplexity"] != b["perplexity"] for a, b in zip(final, other, strict=True))
    assert plain.complete and noisy.complete

    from lmcompose.studies.report import build_study_report

    plain_report, noisy_report = build_study_report(tmp_path / "plain"), build_study_report(tmp_path / "noisy")
    floor = next(t for t in noisy_report.tables if t.title.startswith("Noise floor"))
    assert {r[2] for r in floor.rows} >= {"edit_success", "perplexity"}
    assert all(r[3] == "seed=7" and r[4] != "–" for r in floor.rows)  # the whole sweep was repeated: |ΔA| exists
    # Table 1 is the study's own, an A within the floor marked
    t_plain, t_noisy = plain_report.tables[0], noisy_report.tables[0]
    assert [[c.replace(" ≈noise", "") for c in r] for r in t_noisy.rows] == t_plain.rows
    assert not any(t.title.startswith("Noise floor") for t in plain_report.tables)


def test_one_repeated_cell_gives_a_cell_change_and_no_area(tiny_folder, tmp_path):
    from lmcompose.studies.report import build_study_report

    s = Study.from_mapping(study(tiny_folder, replicates=1))
    cell = next(c.id for c in s.cells() if c.names[-1] == "wanda" and c.value == 0.5)
    noise = {"cells": [cell], "seeds": [3]}
    run_study(Study.from_mapping(study(tiny_folder, replicates=1, noise_floor=noise)), out=tmp_path, threads=1)
    floor = next(t for t in build_study_report(tmp_path).tables if t.title.startswith("Noise floor"))
    assert floor.rows and all(r[4] == "–" and r[5] == "–" and r[6] != "–" for r in floor.rows)
