from __future__ import annotations

import http.server
import json
import threading
from functools import partial

import pytest
from lmcompose.compose import load_edits
from lmcompose.errors import DataError, UsageError


def test_rome_schema_subset_has_500_records(shared_data):
    recs = load_edits("counterfact", source=shared_data / "counterfact/counterfact_500.json", seed=None)
    assert len(recs) == 500
    first = recs[0]
    assert first.case_id == "20952" and first.subject == "Angola"
    assert first.prompt == "Angola is located in" and first.template == "{} is located in"
    assert (first.target_new, first.target_true) == ("Antarctica", "Africa")
    assert len(first.rephrases) == 2 and len(first.locality) == 10
    assert all(lp.answer == "Africa" for lp in first.locality)
    assert first.raw["pararel_idx"] == 5151 and len(first.raw["attribute_prompts"]) == 10
    assert first.source["relation_id"] == "P30"


def test_easyedit_schema_has_10000_records(shared_data):
    recs = load_edits("counterfact", source=shared_data / "counterfact/counterfact-edit.json", seed=None)
    assert len(recs) == 10000
    first = recs[0]
    assert (first.case_id, first.subject, first.target_new, first.target_true) == (
        "0",
        "Danielle Darrieux",
        "English",
        "French",
    )
    assert first.rephrases == ["Where Danielle Darrieux is from, people speak the language of"]
    assert first.locality[0].prompt == "Michel Rocard is a native speaker of" and first.locality[0].answer == "French"


def test_both_files_agree_on_shared_cases(shared_data):
    rome = {
        r.case_id: r
        for r in load_edits("counterfact", source=shared_data / "counterfact/counterfact_500.json", seed=None)
    }
    easy = {
        r.case_id: r
        for r in load_edits("counterfact", source=shared_data / "counterfact/counterfact-edit.json", seed=None)
    }
    shared = rome.keys() & easy.keys()
    assert len(shared) == 239
    for cid in shared:
        a, b = rome[cid], easy[cid]
        assert (a.subject, a.prompt, a.target_new, a.target_true) == (b.subject, b.prompt, b.target_new, b.target_true)


def test_default_source_is_the_data_folder(shared_data, monkeypatch):
    monkeypatch.setenv("LMCOMPOSE_DATA_DIR", str(shared_data))
    assert len(load_edits("counterfact", seed=None)) == 500


def test_offline_without_data_uses_the_bundled_sample_and_says_so(offline_without_data):
    from lmcompose.api import Context

    ctx = Context()
    recs = load_edits("counterfact", ctx=ctx, seed=None)
    assert len(recs) == 10 and recs[0].raw["requested_rewrite"]["prompt"].count("{}") == 1
    assert any("bundled sample" in n for n in ctx.notes)


def test_selection_is_seeded_and_replicates_are_disjoint(shared_data):
    src = shared_data / "counterfact/counterfact_500.json"
    a = [r.case_id for r in load_edits("counterfact", source=src, limit=50, seed=3)]
    assert a == [r.case_id for r in load_edits("counterfact", source=src, limit=50, seed=3)]
    assert a != [r.case_id for r in load_edits("counterfact", source=src, limit=50, seed=4)]
    reps = [
        {r.case_id for r in load_edits("counterfact", source=src, limit=50, seed=3, replicate=k)} for k in range(10)
    ]
    assert all(len(s) == 50 for s in reps)
    assert len(set().union(*reps)) == 500
    with pytest.raises(UsageError, match="replicate 10"):
        load_edits("counterfact", source=src, limit=50, seed=3, replicate=10)


def rome_record(**over):
    rec = {
        "case_id": 1,
        "requested_rewrite": {
            "prompt": "{} is located in",
            "subject": "Angola",
            "target_new": {"str": "Antarctica"},
            "target_true": {"str": "Africa"},
        },
        "paraphrase_prompts": ["Angola belongs to"],
        "neighborhood_prompts": ["Ghana is in"],
    }
    rec["requested_rewrite"].update(over)
    return rec


def write(tmp_path, data, name="cf.json"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


@pytest.mark.parametrize(
    "data,message",
    [
        ("", "is empty"),
        ("{not json", "not valid JSON"),
        ({"a": 1}, "JSON array"),
        ([rome_record(prompt="Angola is located in")], "no '{}' placeholder"),
        ([rome_record(target_new={"str": " "})], "'requested_rewrite.target_new.str' is empty"),
        ([rome_record(subject="")], "'requested_rewrite.subject' is empty"),
        (
            [{"case_id": 2, "prompt": "Ghana is in", "subject": "Angola", "target_new": "Asia"}],
            "does not occur in prompt",
        ),
        ([{"case_id": 3, "foo": 1}], "neither the ROME schema"),
    ],
)
def test_bad_input_names_file_record_and_field(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(DataError) as exc:
        load_edits("counterfact", source=path)
    assert message in str(exc.value) and str(path) in str(exc.value)


def test_bad_record_error_names_its_index_and_skip_invalid_counts(tmp_path):
    from lmcompose.api import Context

    path = write(tmp_path, [rome_record(), rome_record(prompt="no placeholder"), rome_record()])
    with pytest.raises(DataError, match=r"record 1 \(case_id 1\).*--skip-invalid"):
        load_edits("counterfact", source=path)
    ctx = Context()
    recs = load_edits("counterfact", source=path, skip_invalid=True, ctx=ctx, seed=None)
    assert len(recs) == 2
    assert any("skipped 1 invalid record(s) of 3" in n for n in ctx.notes)


def test_missing_source_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_edits("counterfact", source=tmp_path / "nope.json")


@pytest.fixture
def http_server(tmp_path):
    """Serve tmp_path/www on loopback."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_urls_are_downloaded_once_with_a_checksum(http_server, tmp_path, monkeypatch):
    root, base = http_server
    monkeypatch.setenv("LMCOMPOSE_CACHE_DIR", str(tmp_path / "cache"))
    (root / "cf.json").write_text(json.dumps([rome_record()]))
    recs = load_edits("counterfact", source=f"{base}/cf.json")
    assert recs[0].target_new == "Antarctica"
    from lmcompose.edit_data import download_cache_path

    cached = download_cache_path(tmp_path / "cache" / "datasets" / "counterfact", f"{base}/cf.json")
    assert cached.name.endswith("-cf.json")  # keyed by the whole URL, the file name kept readable
    assert cached.exists() and cached.with_name(cached.name + ".sha256").exists()
    (root / "cf.json").unlink()  # offline from now on: the cache serves it
    assert load_edits("counterfact", source=f"{base}/cf.json")[0].target_new == "Antarctica"
    cached.write_text(cached.read_text().replace("Antarctica", "Antarctic"))
    with pytest.raises(DataError, match="does not match its checksum"):
        load_edits("counterfact", source=f"{base}/cf.json")


def test_a_failed_download_is_a_clear_error(http_server, tmp_path, monkeypatch):
    _root, base = http_server
    monkeypatch.setenv("LMCOMPOSE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="could not download"):
        load_edits("counterfact", source=f"{base}/missing.json")
