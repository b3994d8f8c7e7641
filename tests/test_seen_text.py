"""Every output records the text it saw (calibration, training, recovery), and evaluation refuses it,
also through a document split or a copy of the text under another name."""
import json

import pytest

from amoeba_plugin.data import check_unseen, record_seen_text, seen_texts
from amoeba_plugin.errors import DataError
from amoeba_plugin.pipeline import inherit_texts, recorded_texts


def test_record_seen_text_appends_once_and_seen_texts_reads_calibration_too():
    record = {"data": {"calibration": {"source": "sotu:train", "samples": 4}}}
    record_seen_text(record, ["sotu:train", "brown"], "training", by="test")
    record_seen_text(record, ["sotu:train"], "training", by="test")
    record_seen_text(record, ["sotu:train"], "recovery")
    assert seen_texts(record) == [{"source": "sotu:train", "role": "calibration"},
                                  {"source": "sotu:train", "role": "training", "by": "test"},
                                  {"source": "brown:test", "role": "training", "by": "test"},
                                  {"source": "sotu:train", "role": "recovery"}]
    with pytest.raises(ValueError):
        record_seen_text(record, ["sotu:train"], "")


def test_evaluation_on_trained_text_is_refused_in_one_line_unless_allowed():
    seen = seen_texts(record_seen_text({}, ["sotu:train"], "recovery", by="recover"))
    with pytest.raises(DataError, match="trained on .*recovery by recover") as info:
        check_unseen(seen, "sotu:train")
    assert "\n" not in str(info.value) and "Fix:" in str(info.value)
    check_unseen(seen, "sotu:validation")
    check_unseen(seen, "sotu:train", allow=True)


def test_shared_documents_are_found_under_another_name(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph here\n\nthe shared paragraph\n")
    (tmp_path / "b.txt").write_text("something else\n\nthe shared paragraph\n")
    (tmp_path / "c.txt").write_text("nothing in common\n")
    seen = seen_texts(record_seen_text({}, [f"file:{tmp_path / 'a.txt'}"], "training"))
    with pytest.raises(DataError, match="shares 1 document"):
        check_unseen(seen, f"file:{tmp_path / 'b.txt'}")
    check_unseen(seen, f"file:{tmp_path / 'c.txt'}")


def test_an_export_records_its_texts_and_a_copy_made_from_it_inherits_them(tmp_path):
    export = tmp_path / "e"
    export.mkdir()
    info = record_seen_text({"data": {"calibration": {"source": "sotu:train"}}}, ["brown:test"], "training", by="x")
    (export / "amoeba_export.json").write_text(json.dumps({"info": info}))
    texts = recorded_texts(export=export)
    assert {(t["source"], t["role"]) for t in texts} == {("sotu:train", "calibration"), ("brown:test", "training")}
    child = inherit_texts({}, export)
    assert {(t["source"], t["role"], t["by"]) for t in seen_texts(child)} == {
        ("sotu:train", "calibration", "source model"), ("brown:test", "training", "x, source model")}


def test_amoeba_eval_refuses_text_an_export_trained_on(tmp_path):
    from click.testing import CliRunner

    from amoeba_plugin.cli.main import cli

    export = tmp_path / "e"
    export.mkdir()
    (export / "amoeba_export.json").write_text(json.dumps({"info": record_seen_text({}, ["moby-dick"], "training")}))
    r = CliRunner().invoke(cli, ["eval", str(export), "--evaluation", "moby-dick:test"])
    assert r.exit_code != 0 and "trained on" in r.output and len(r.output.strip().splitlines()) == 1


def test_benchmark_harness_refuses_text_its_model_trained_on(tmp_path):
    from types import SimpleNamespace

    from benchmarks.compare_methods import _check_sources

    export = tmp_path / "e"
    export.mkdir()
    (export / "amoeba_export.json").write_text(json.dumps({"info": record_seen_text({}, ["brown:test"], "training")}))
    args = SimpleNamespace(model=str(export), calibration="sotu:train", allow_eval_on_calibration=False)
    _check_sources(args, ["sotu:validation"])
    with pytest.raises(DataError, match="trained on"):
        _check_sources(args, ["sotu:validation", "brown:test"])
