"""The `amoeba` CLI: listings, inspect, prune end to end on a saved tiny model, and bad inputs that
must each fail with exit status 2, one `error: ... Fix: ...` line, no traceback and no output."""
import json

import pytest
import torch
from click.testing import CliRunner

from amoeba_plugin.cli.main import cli
from amoeba_plugin.testing import make_tiny, save_tiny, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny-llama")


def run(*args):
    args = [str(a) for a in args]
    if args[:1] == ["prune"] and "--method" not in args:  # the CLI, not a method, is under test here: the
        args[2:2] = ["--method", "uniform-magnitude"]       # host's own method, so tests/ pass without plugins
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Fix:" in lines[0], lines[0]
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------- listings
def test_help_lists_commands():
    result = run("--help")
    assert result.exit_code == 0
    for name in ("plugins", "methods", "inspect", "prune", "eval", "export", "fetch"):
        assert name in result.stdout


def test_plugins_lists_builtins():
    result = run("plugins")
    assert result.exit_code == 0, result.output
    assert "amoeba_plugin.builtin.methods" in result.stdout
    assert "uniform-magnitude" in result.stdout and "magnitude" in result.stdout
    data = json.loads(run("plugins", "--json").stdout)
    by_name = {r["name"]: r for r in data}
    assert "magnitude" in by_name["amoeba_plugin.builtin.metrics"]["registered"]["metrics"]
    assert by_name["amoeba_plugin.builtin.methods"]["status"] == "loaded"


def test_methods_lists_uniform_magnitude():
    result = run("methods")
    assert result.exit_code == 0
    assert "uniform-magnitude" in result.stdout and "amoeba_plugin.builtin.methods" in result.stdout
    data = {m["name"]: m for m in json.loads(run("methods", "--json").stdout)}
    assert data["uniform-magnitude"]["budget_kinds"] == ["params", "nonembed", "count", "macs"]


def test_plugin_commands_are_added_and_broken_ones_skipped():
    import click

    from amoeba_plugin import hookimpl
    from amoeba_plugin.testing import registered_plugin

    class Good:
        @hookimpl
        def amoeba_register_commands(self, cli):
            @cli.command(name="hello-from-plugin")
            def hello():
                click.echo("hi")

    class Broken:
        @hookimpl
        def amoeba_register_commands(self, cli):
            raise RuntimeError("boom")

    try:
        with registered_plugin(Good(), "test-good-commands"), registered_plugin(Broken(), "test-broken-commands"):
            result = CliRunner().invoke(cli, ["hello-from-plugin"])
            assert result.exit_code == 0 and result.stdout.strip() == "hi"
            assert "test-broken-commands" in result.stderr and "boom" in result.stderr
            assert run("methods").exit_code == 0  # built-ins unaffected
    finally:
        cli.commands.pop("hello-from-plugin", None)


# ---------------------------------------------------------------------- inspect / prune / export / eval
def test_inspect(tiny_dir):
    result = run("inspect", tiny_dir)
    assert result.exit_code == 0, result.output
    assert "family: llama" in result.stdout and "non-embedding" in result.stdout
    info = json.loads(run("inspect", tiny_dir, "--json").stdout)
    assert info["layers"] == 4 and info["query_heads"] == 8 and info["kv_groups"] == 2
    assert info["parameters"] > info["non_embedding_parameters"] > 0


def test_prune_writes_a_loadable_export(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pruned"
    result = run("prune", tiny_dir, "--budget", "0.6", "--calibration", "none", "--no-eval", "--output", out)
    assert result.exit_code == 0, result.output
    assert "export written to" in result.stdout and "ratio" in result.stdout
    config = json.loads((out / "pruning_config.json").read_text())
    assert config["method"] == "uniform-magnitude" and config["budget"] == "params=0.6"
    model = AutoModelForCausalLM.from_pretrained(out)
    # stock Llama when its config can express the shape (hidden % heads == 0), else the amoeba arch
    heads = model.config.num_attention_heads
    assert model.config.model_type == ("llama" if 64 % heads == 0 else "amoeba")
    full = make_tiny("llama")
    ratio = sum(p.numel() for p in model.parameters()) / sum(p.numel() for p in full.parameters())
    assert ratio <= 0.6
    with torch.no_grad():
        assert model(torch.randint(0, 128, (1, 8))).logits.shape == (1, 8, 128)
    # the same output directory again: refused without --overwrite, replaced with it
    again = run("prune", tiny_dir, "--budget", "0.6", "--calibration", "none", "--no-eval", "--output", out)
    assert_user_error(again, "not empty")
    assert run("prune", tiny_dir, "--budget", "0.7", "--calibration", "none", "--no-eval", "--output", out,
               "--overwrite").exit_code == 0
    assert json.loads((out / "pruning_config.json").read_text())["budget"] == "params=0.7"


def test_prune_with_calibration_and_eval(tiny_dir, tmp_path):
    out = tmp_path / "pruned"
    result = run("prune", tiny_dir, "--budget", "0.7", "--samples", "2", "--seq-len", "16", "--eval-windows", "2",
                 "--option", "metric=\"magnitude\"", "--output", out)
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.stdout and "->" in result.stdout


def test_export_and_eval_with_a_plan(tiny_dir, tmp_path):
    from amoeba_plugin.plan import Plan

    pruned = tmp_path / "pruned"
    assert run("prune", tiny_dir, "--budget", "0.6", "--calibration", "none", "--no-eval", "--output",
               pruned).exit_code == 0
    plan = Plan.load(pruned)  # exporters write plan.json next to the weights
    plan_file = tmp_path / "plan.json"
    plan.save(plan_file)
    out = tmp_path / "again"
    result = run("export", tiny_dir, "--plan", plan_file, "--output", out)
    assert result.exit_code == 0, result.output
    assert (out / "config.json").exists()
    result = run("eval", tiny_dir, "--plan", plan_file, "--seq-len", "16", "--windows", "2")
    assert result.exit_code == 0, result.output
    assert "with plan" in result.stdout


# ---------------------------------------------------------------------- bad inputs
def test_unsupported_family(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=128, n_positions=64)).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    out = tmp_path / "out"
    line = assert_user_error(run("prune", path, "--no-eval", "--calibration", "none", "--output", out), "gpt2")
    assert "not supported" in line
    assert not out.exists()
    assert_user_error(run("inspect", path), "gpt2")


def test_missing_model_path(tmp_path):
    out = tmp_path / "out"
    assert_user_error(run("prune", tmp_path / "no" / "such-model", "--no-eval", "--output", out))
    assert not out.exists()


@pytest.mark.parametrize("budget", ["0", "1.5"])
def test_bad_budget(tiny_dir, tmp_path, budget):
    out = tmp_path / "out"
    assert_user_error(run("prune", tiny_dir, "--budget", budget, "--output", out), "budget")
    assert not out.exists()


def test_unknown_method_and_exporter(tiny_dir, tmp_path):
    out = tmp_path / "out"
    assert_user_error(run("prune", tiny_dir, "--method", "no-such-method", "--output", out), "no-such-method")
    assert_user_error(run("prune", tiny_dir, "--exporter", "no-such-exporter", "--output", out), "no-such-exporter")
    assert not out.exists()


def test_unreachable_budget_suggests_depth_pruning(tiny_dir, tmp_path):
    out = tmp_path / "out"
    line = assert_user_error(run("prune", tiny_dir, "--budget", "0.05", "--calibration", "none", "--no-eval",
                                 "--output", out))
    assert "depth" in line
    assert not out.exists()


def test_plan_of_another_model(tiny_dir, tmp_path):
    from amoeba_plugin.anatomy import anatomy_of
    from amoeba_plugin.plan import Plan

    other = make_tiny("llama", num_hidden_layers=2, hidden_size=32, num_attention_heads=4)
    plan_file = Plan.full(anatomy_of(other)).save(tmp_path / "plan.json")
    out = tmp_path / "out"
    assert_user_error(run("export", tiny_dir, "--plan", plan_file, "--output", out), "another model")
    assert not out.exists()


def test_corrupt_safetensors(tmp_path):
    path = save_tiny(tmp_path / "corrupt")
    weights = path / "model.safetensors"
    assert weights.exists()
    weights.write_bytes(b"\x00\x01 this is not a safetensors file" * 10)
    out = tmp_path / "out"
    assert_user_error(run("prune", path, "--no-eval", "--calibration", "none", "--output", out))
    assert not out.exists()


def test_debug_flag_reraises(tmp_path):
    from amoeba_plugin.errors import AmoebaError

    with pytest.raises(AmoebaError):
        CliRunner().invoke(cli, ["--debug", "prune", str(tmp_path), "--budget", "2"], catch_exceptions=False)


def test_bad_option_syntax(tiny_dir):
    assert_user_error(run("prune", tiny_dir, "--option", "novalue", "--no-eval"), "key=value")


def test_eval_refuses_the_calibration_text_of_an_export(tmp_path, calibrated_method):
    out = tmp_path / "wanda"
    assert_user_error(run("prune", "amoeba-tiny-sotu", "--method", calibrated_method, "--eval-source", "sotu:train"),
                      "is the calibration text")
    result = run("prune", "amoeba-tiny-sotu", "--method", calibrated_method, "--budget", "0.8", "--samples", "4",
                 "--seq-len", "32", "--no-eval", "--output", out)
    assert result.exit_code == 0, result.output
    assert_user_error(run("eval", out, "--source", "sotu:train", "--seq-len", "16", "--windows", "2"),
                      "is the calibration text", "--allow-eval-on-calibration")
    allowed = run("eval", out, "--source", "sotu:train", "--seq-len", "16", "--windows", "2",
                  "--allow-eval-on-calibration")
    assert allowed.exit_code == 0 and "perplexity (sotu:train)" in allowed.output
    assert run("eval", out, "--source", "brown", "--seq-len", "16", "--windows", "2").exit_code == 0
