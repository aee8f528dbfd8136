from typer.testing import CliRunner

import cltm
from cltm.cli import app


def test_version_flag_prints_package_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == cltm.__version__


def test_help_describes_the_pipeline():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Cross-Lingual Transfer Matrices" in result.output


def test_help_lists_stages_in_pipeline_order():
    output = CliRunner().invoke(app, ["--help"]).output
    stages = ["corpus", "extract", "store", "probe", "matrix", "finetune", "report", "demo"]
    panel = output[output.find("Commands") :]
    positions = [panel.find(f"│ {name} ") for name in stages]
    assert all(p >= 0 for p in positions), dict(zip(stages, positions, strict=True))
    assert positions == sorted(positions), dict(zip(stages, positions, strict=True))
