"""lm-evaluation-harness integration, for real (no mocks): the packaged tasks, the in-process ``lm-eval``
evaluator, the lm-eval model ``amoeba`` (``pretrained=`` and ``base=,plan=``), the ``amoeba-lm-eval``
console script and ``amoeba eval --tasks`` / ``amoeba tasks``. The embedded model and small ``limit``s
keep the whole file at well under a minute."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

lm_eval = pytest.importorskip("lm_eval")

from amoeba_plugin.cli.main import cli
from amoeba_plugin.errors import AmoebaError, UnknownNameError
from amoeba_plugin.eval.lm_eval import (
    packaged_tasks,
    register_lm_eval_model,
    require_lm_eval,
    task_manager,
    tasks_dir,
)
from amoeba_plugin.models import load_model
from amoeba_plugin.plugins import get

PACKAGED = {"amoeba_sotu_ppl", "amoeba_brown_ppl", "amoeba_moby_ppl", "amoeba_ppl", "amoeba_sotu_cloze",
            "amoeba_sotu_cloze_calib"}
ROOT = Path(__file__).resolve().parent.parent
CLOZE_LIMIT = 4


@pytest.fixture(scope="module")
def tiny():
    return load_model("amoeba-tiny-sotu")


def evaluate(model, tokenizer, **options):
    return get("evaluators", "lm-eval")(model, tokenizer, **options)


def loglikelihoods(result, task):
    """Every log-likelihood lm-eval computed for ``task``, in document order."""
    samples = sorted(result["samples"][task], key=lambda s: int(s["doc_id"]))
    return [ll if isinstance(ll, float) else ll[0] for s in samples for ll in s["filtered_resps"]]


@pytest.fixture(scope="module")
def two_tasks(tiny):
    model, tokenizer = tiny
    # max_length=256: the embedded model was trained on 256-token windows (see its training_log.json)
    return evaluate(model, tokenizer, tasks="amoeba_sotu_ppl,amoeba_sotu_cloze", limit=1, max_length=256,
                    log_samples=True)


@pytest.fixture(scope="module")
def cloze(tiny):
    model, tokenizer = tiny
    return evaluate(model, tokenizer, tasks=["amoeba_sotu_cloze"], limit=CLOZE_LIMIT, log_samples=True)


def amoeba_model(model_args: str, limit=CLOZE_LIMIT):
    """lm-eval's own simple_evaluate with ``--model amoeba`` (the registry path the CLI takes)."""
    assert register_lm_eval_model()
    return lm_eval.simple_evaluate(model="amoeba", model_args=model_args, tasks=["amoeba_sotu_cloze"], limit=limit,
                                   batch_size=16, task_manager=task_manager(["amoeba_sotu_cloze"]), log_samples=True)


def test_the_model_and_the_evaluator_do_not_import_each_other():
    """lm_eval.py imports lm_eval_model.py (lazily); the model takes its --model_args loading from
    model_args.py and its log quieting from logs.py, never from lm_eval.py: no import cycle."""
    import ast

    def imports(module):
        tree = ast.parse((ROOT / "amoeba_plugin" / "eval" / f"{module}.py").read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1}

    assert "lm_eval" not in imports("lm_eval_model") | imports("model_args") | imports("logs")
    assert "lm_eval_model" in imports("lm_eval")
    from amoeba_plugin.eval import model_args
    from amoeba_plugin.eval.lm_eval import load_model_args

    assert load_model_args is model_args.load_model_args  # still importable where it was


# ---------------------------------------------------------------------- packaged tasks
def test_packaged_tasks_are_discovered():
    found = packaged_tasks()
    assert set(found) == PACKAGED
    assert found["amoeba_ppl"]["tasks"] == ["amoeba_sotu_ppl", "amoeba_brown_ppl", "amoeba_moby_ppl"]
    assert found["amoeba_sotu_ppl"]["output_type"] == "loglikelihood_rolling"
    assert found["amoeba_sotu_ppl"]["metrics"] == ["word_perplexity", "byte_perplexity", "bits_per_byte"]
    assert found["amoeba_sotu_cloze"]["metrics"] == ["acc", "acc_norm"]
    tm = task_manager(["amoeba_sotu_ppl", "amoeba_ppl"])
    assert PACKAGED <= set(tm.all_tasks)
    assert len(tm.all_tasks) < 50, "lm-eval's own thousands of tasks were indexed for packaged names"
    assert Path(tasks_dir(), "amoeba_sotu_ppl.yaml").is_file()


def test_package_data_ships_the_task_files():
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["amoeba_plugin"]
    package = ROOT / "amoeba_plugin"
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    assert {p for p in Path(tasks_dir()).iterdir() if p.is_file()} <= shipped


def test_cloze_items_are_deterministic_and_well_formed():
    from amoeba_plugin.data import resolve_source
    from amoeba_plugin.eval.task_data import CLOZE_ITEMS, sentences, sotu_cloze

    test = sotu_cloze()["test"]
    assert len(test) == CLOZE_ITEMS and test[:] == sotu_cloze()["test"][:]
    source, split = resolve_source("sotu:validation")
    docs = [sentences(d) for d in source.documents(split)]
    for item in test:
        sents, options = docs[item["document"]], item["choices"]
        assert len(options) == len(set(options)) == 4
        true, sentence = options[item["label"]], sents[item["sentence"]]
        assert sentence.endswith(" " + true) and item["context"].endswith(sentence[: -len(true) - 1])
        assert item["context"].startswith(sents[item["sentence"] - 2])
        assert not any(s.split()[-len(o.split()):] == o.split() for o in set(options) - {true} for s in sents), \
            "a distractor that also ends a sentence of the same address"
        assert all(abs(len(o.split()) - len(true.split())) <= 1 for o in options)
    labels = [item["label"] for item in test]
    assert all(labels.count(i) > 30 for i in range(4)), "the answer position is not shuffled"


# ---------------------------------------------------------------------- in process
def test_in_process_reports_every_task(two_tasks):
    assert set(two_tasks["results"]) == {"amoeba_sotu_ppl", "amoeba_sotu_cloze"}  # not just the first
    ppl, mc = two_tasks["results"]["amoeba_sotu_ppl"], two_tasks["results"]["amoeba_sotu_cloze"]
    assert set(ppl) == {"word_perplexity", "byte_perplexity", "bits_per_byte"}
    assert math.isclose(ppl["bits_per_byte"], math.log2(ppl["byte_perplexity"]), rel_tol=1e-9)
    assert 1 < ppl["byte_perplexity"] < ppl["word_perplexity"]
    assert set(mc) == {"acc", "acc_norm"} and all(0 <= v <= 1 for v in mc.values())
    assert two_tasks["flat"]["amoeba_sotu_cloze/acc"] == mc["acc"]
    assert {(r["task"], r["metric"]) for r in two_tasks["rows"]} == {
        *(("amoeba_sotu_ppl", m) for m in ppl), *(("amoeba_sotu_cloze", m) for m in mc)}
    assert {t: n["effective"] for t, n in two_tasks["n_samples"].items()} == {"amoeba_sotu_ppl": 1,
                                                                              "amoeba_sotu_cloze": 1}


@pytest.mark.slow
def test_group_reports_each_member(tiny):
    model, tokenizer = tiny
    result = evaluate(model, tokenizer, tasks="amoeba_ppl", limit=1, max_length=256)
    members = ["amoeba_sotu_ppl", "amoeba_brown_ppl", "amoeba_moby_ppl"]
    assert result["group_tasks"] == {"amoeba_ppl": members}
    assert set(result["results"]) == set(members) and "amoeba_ppl" in result["groups"]
    assert all(set(result["results"][t]) == {"word_perplexity", "byte_perplexity", "bits_per_byte"} for t in members)
    # trained on SOTU: its own held-out text is easiest
    assert result["results"]["amoeba_sotu_ppl"]["bits_per_byte"] < result["results"]["amoeba_moby_ppl"]["bits_per_byte"]


def test_rolling_perplexity_relates_to_ours(two_tasks, tiny):
    """lm-eval scores each address with rolling windows (here of 256 tokens, the model's training length);
    our protocol cuts the same text into non-overlapping 256-token windows and does not predict the first
    token of each. Converted to per-token perplexity, the two agree closely."""
    from amoeba_plugin.data import token_windows
    from amoeba_plugin.eval import PerplexityEvaluator

    model, tokenizer = tiny
    samples = two_tasks["samples"]["amoeba_sotu_ppl"]
    docs = [s["doc"]["text"] for s in samples]
    nll = -sum(s["filtered_resps"][0] for s in samples)
    tokens = sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs)
    theirs = math.exp(nll / tokens)
    bytes_ = sum(len(d.encode()) for d in docs)
    assert math.isclose(two_tasks["results"]["amoeba_sotu_ppl"]["bits_per_byte"], nll / bytes_ / math.log(2),
                        rel_tol=1e-6)
    ours = PerplexityEvaluator().evaluate(model, tokenizer, windows=token_windows(tokenizer, docs, 256))["perplexity"]
    assert 0.95 < theirs / ours < 1.05, (theirs, ours)


def test_unknown_task_is_a_clear_error(tiny):
    model, tokenizer = tiny
    with pytest.raises(UnknownNameError) as err:
        evaluate(model, tokenizer, tasks="amoeba_sotu_pll")
    text = str(err.value)
    assert "no lm-eval task named 'amoeba_sotu_pll'" in text and "amoeba_sotu_ppl" in text
    assert "amoeba tasks" in text and "Fix:" in text


@pytest.mark.slow
def test_unknown_lm_eval_task_suggests_close_names(tiny):
    model, tokenizer = tiny
    with pytest.raises(UnknownNameError, match="did you mean .*hellaswag"):  # lm-eval's own tasks are searched
        evaluate(model, tokenizer, tasks="amoeba_sotu_ppl,hellaswagg")


def test_missing_lm_eval_is_a_clear_error(monkeypatch):
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what an environment without lm-eval looks like
    with pytest.raises(AmoebaError, match=r"lm-evaluation-harness is not installed.*amoeba-plugin\[lm-eval\]"):
        require_lm_eval()
    assert register_lm_eval_model() is False


# ---------------------------------------------------------------------- the lm-eval model `amoeba`
def test_amoeba_model_pretrained_matches_in_process(cloze):
    raw = amoeba_model("pretrained=amoeba-tiny-sotu,device=cpu")
    assert loglikelihoods(raw, "amoeba_sotu_cloze") == pytest.approx(loglikelihoods(cloze, "amoeba_sotu_cloze"),
                                                                     rel=1e-5)
    assert raw["results"]["amoeba_sotu_cloze"]["acc,none"] == cloze["results"]["amoeba_sotu_cloze"]["acc"]
    assert raw["config"]["amoeba_load"] == "pretrained"


def test_amoeba_model_base_and_plan_matches_the_sliced_model(cloze, tmp_path):
    from amoeba_plugin.api import AmoebaPruner, PruningConfig

    pruner = AmoebaPruner.from_pretrained("amoeba-tiny-sotu")
    out = pruner.prune(PruningConfig(method="uniform-magnitude", budget="0.7", calibration=None, evaluation=None))
    plan = out.plan.save(tmp_path / "plan.json")
    sliced = evaluate(out.model, pruner.tokenizer, tasks="amoeba_sotu_cloze", limit=CLOZE_LIMIT, log_samples=True)
    raw = amoeba_model(f"base=amoeba-tiny-sotu,plan={plan},device=cpu")
    mine = loglikelihoods(raw, "amoeba_sotu_cloze")
    assert mine == pytest.approx(loglikelihoods(sliced, "amoeba_sotu_cloze"), rel=1e-5)
    assert mine != pytest.approx(loglikelihoods(cloze, "amoeba_sotu_cloze"), rel=1e-3)  # it was pruned
    assert raw["config"]["amoeba_load"] == "base+plan" and raw["config"]["amoeba_parameters_ratio"] < 0.8


def test_amoeba_model_args_errors():
    from amoeba_plugin.eval.lm_eval_model import AmoebaLM

    with pytest.raises(AmoebaError, match="pass one of pretrained="):
        AmoebaLM(device="cpu")
    with pytest.raises(AmoebaError, match="pretrained and base"):
        AmoebaLM(pretrained="amoeba-tiny-sotu", base="amoeba-tiny-sotu", device="cpu")
    with pytest.raises(AmoebaError, match="does not know model_args colour"):
        AmoebaLM(pretrained="amoeba-tiny-sotu", colour="blue", device="cpu")
    with pytest.raises(AmoebaError, match="dtype 'float33'"):
        AmoebaLM(pretrained="amoeba-tiny-sotu", dtype="float33", device="cpu")


def test_lm_eval_is_imported_lazily():
    """No module that `import amoeba_plugin` or the evaluator registration runs imports lm-eval at its top
    level, except the registry module (cheap; see register_lm_eval_model). The slow test below checks the
    same in a fresh interpreter."""
    import ast

    from lm_eval.api.registry import model_registry

    assert "amoeba" in model_registry and "hf" in model_registry  # registered by `import amoeba_plugin`
    for module in ("__init__.py", "eval/__init__.py", "eval/lm_eval.py", "eval/task_data.py",
                   "builtin/evaluators.py", "cli/main.py", "cli/lm_eval.py"):
        tree = ast.parse((ROOT / "amoeba_plugin" / module).read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom) and not n.level]
        assert not [n for n in names if n.split(".")[0] in ("lm_eval", "datasets")], (module, names)


@pytest.mark.slow
def test_import_registers_the_model_lazily():
    code = ("import sys, amoeba_plugin\n"
            "from amoeba_plugin.plugins import registry\n"
            "assert 'lm-eval' in registry('evaluators')\n"
            "from lm_eval.api.registry import model_registry\n"
            "assert 'amoeba' in model_registry and 'hf' in model_registry\n"
            "heavy = [m for m in ('lm_eval.evaluator', 'lm_eval.models.huggingface', 'lm_eval.tasks', "
            "'amoeba_plugin.eval.lm_eval_model') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "from lm_eval.api.registry import get_model\n"
            "assert get_model('amoeba').__name__ == 'AmoebaLM'\n")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------- console script and CLI
def _script() -> list[str]:
    exe = shutil.which("amoeba-lm-eval", path=str(Path(sys.executable).parent)) or shutil.which("amoeba-lm-eval")
    return [exe] if exe else [sys.executable, "-c", "from amoeba_plugin.cli.lm_eval import main; main()"]


def test_console_script_prints_lm_evals_table(cloze):
    proc = subprocess.run([*_script(), "run", "--model", "amoeba", "--model_args", "pretrained=amoeba-tiny-sotu",
                           "--tasks", "amoeba_sotu_cloze", "--limit", str(CLOZE_LIMIT), "--batch_size", "16"],
                          check=False, capture_output=True, text=True, timeout=300, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "amoeba ({'pretrained': 'amoeba-tiny-sotu'})" in proc.stdout
    row = re.search(r"\|amoeba_sotu_cloze\s*\|.*\|acc\s*\|[^|]*\|\s*([0-9.]+)\|", proc.stdout)
    assert row, proc.stdout
    assert float(row.group(1)) == pytest.approx(cloze["results"]["amoeba_sotu_cloze"]["acc"], abs=1e-4)
    assert "Including path: " + tasks_dir() in proc.stderr  # the packaged folder was added for the user


def test_console_script_argv_handling(tmp_path):
    from amoeba_plugin.cli.lm_eval import prepare_argv

    folder = tasks_dir()
    assert prepare_argv(["run", "--tasks", "x"], folder) == (["run", "--tasks", "x", "--include_path", folder], False)
    assert prepare_argv(["--model", "amoeba", "--tasks", "x"], folder)[0][-2:] == ["--include_path", folder]
    assert prepare_argv(["ls", "tasks"], folder) == (["ls", "tasks", "--include_path", folder], False)
    assert prepare_argv(["run"], folder) == (["run"], False)  # lm-eval prints run's help
    assert prepare_argv(["run", "--help"], folder) == (["run", "--help"], False)
    assert prepare_argv([], folder) == ([], False)
    mine = ["run", "--tasks", "x", "--include_path", str(tmp_path)]
    assert prepare_argv(mine, folder) == (mine, True)  # kept; the packaged folder is added to TaskManager


def test_cli_tasks_lists_and_prints_the_path():
    runner = CliRunner()
    listing = runner.invoke(cli, ["tasks"], catch_exceptions=False)
    assert listing.exit_code == 0
    for name in PACKAGED:
        assert name in listing.stdout
    path = runner.invoke(cli, ["tasks", "--path"], catch_exceptions=False)
    assert path.stdout.strip() == tasks_dir()
    data = json.loads(runner.invoke(cli, ["tasks", "--json"], catch_exceptions=False).stdout)
    assert set(data["tasks"]) == PACKAGED


def test_cli_eval_tasks_prints_one_row_per_task_and_metric(cloze, tiny, tmp_path):
    from amoeba_plugin.anatomy import anatomy_of
    from amoeba_plugin.plan import LayerPlan, Plan

    anatomy = anatomy_of(tiny[0])
    plan = Plan([LayerPlan(i) for i in range(anatomy.num_layers - 1)], source=Plan.full(anatomy).source)
    plan.save(tmp_path / "plan.json")
    result = CliRunner().invoke(cli, ["-q", "eval", "amoeba-tiny-sotu", "--tasks", "amoeba_sotu_cloze", "--limit",
                                      str(CLOZE_LIMIT), "--plan", str(tmp_path / "plan.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stdout.split()[:4] == ["task", "metric", "model", "with"]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("amoeba_sotu_cloze")]
    assert [r[1] for r in rows] == ["acc", "acc_norm"]
    assert float(rows[0][2]) == pytest.approx(cloze["results"]["amoeba_sotu_cloze"]["acc"], abs=1e-4)
    assert all(0 <= float(r[3]) <= 1 for r in rows)  # the model without its last layer


def test_cli_eval_unknown_task_fails_before_loading():
    result = CliRunner().invoke(cli, ["eval", "amoeba-tiny-sotu", "--tasks", "amoeba_sotu_pll"])
    assert result.exit_code == 2
    assert "error: no lm-eval task named 'amoeba_sotu_pll'" in result.stderr and "Fix:" in result.stderr
