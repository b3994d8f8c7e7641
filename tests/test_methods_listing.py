"""`amoeba methods` says which methods take a metric (and its default); `amoeba methods NAME` names the
option and the registered metrics it may name."""
from click.testing import CliRunner

from amoeba_plugin.cli.main import cli


def test_methods_listing_shows_the_metric_option():
    result = CliRunner().invoke(cli, ["methods"])
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0].split()
    assert "metric" in header
    row = next(line.split() for line in result.stdout.splitlines() if line.startswith("uniform-magnitude "))
    assert row[header.index("metric")] == "magnitude"


def test_one_method_names_its_metric_option_and_the_registered_metrics():
    result = CliRunner().invoke(cli, ["methods", "uniform-magnitude"])
    assert result.exit_code == 0, result.output
    line = next(l for l in result.stdout.splitlines() if l.startswith("metric: the name of a registered metric"))
    for name in ("magnitude", "wanda-sp", "fluctuation"):
        assert name in line
    assert "--option metric=NAME" in line
