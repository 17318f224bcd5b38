"""`precompute audit` and models the LinearScope cannot freeze: one clear line, nothing written."""

from __future__ import annotations

from sweep_helpers import cli, cli_subprocess, make_image, write_config

EXP_NET = '''
import torch
from torch import nn


class ExpNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())

    def forward(self, x):
        return torch.exp(self.body(x))


def build():
    return ExpNet().eval()
'''


def test_audit_lists_the_intercepted_calls(tmp_path):
    make_image(tmp_path / "img.png", 6, 6)
    (tmp_path / "reused.py").write_text('''
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return F.max_pool2d(self.relu(self.conv(self.relu(self.conv(x)))), 2)


def build():
    return Net().eval()
''')
    cfg = write_config(tmp_path / "a.yaml", name="a", model={"arch": "python:reused.py:build"},
                       image="img.png", interpreter="taylor",
                       output=str(tmp_path / "runs"))
    result = cli("audit", cfg)
    assert result.exit_code == 0, result.output
    lines = [ln.split() for ln in result.stdout.splitlines() if not ln.startswith("#")]
    assert [ln[1:] for ln in lines] == [
        ["conv", "torch.nn.functional.conv2d", "#0", "affine"],
        ["relu", "torch.nn.functional.relu", "#0", "taylor:piecewise_linear"],
        ["conv", "torch.nn.functional.conv2d", "#1", "affine"],
        ["relu", "torch.nn.functional.relu", "#1", "taylor:piecewise_linear"],
        ["(root)", "torch.nn.functional.max_pool2d", "#0", "taylor:max_pool"],
    ]
    assert not (tmp_path / "runs").exists()


def test_unknown_op_stops_the_run_with_one_line_and_writes_nothing(tmp_path):
    make_image(tmp_path / "img.png", 6, 6)
    (tmp_path / "expnet.py").write_text(EXP_NET)
    cfg = write_config(tmp_path / "e.yaml", name="e", model={"arch": "python:expnet.py:build"},
                       image="img.png", analyses={"residual": True, "columns": {"window": "full"}},
                       output=str(tmp_path / "runs"))
    proc = cli_subprocess("run", cfg, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no LinearScope rule for `torch.exp`")
    assert "Traceback" not in proc.stderr + proc.stdout
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(p.suffix == ".zarr" for p in runs.iterdir())


def test_preprocess_key_is_validated(tmp_path):
    make_image(tmp_path / "img.png", 6, 6)
    cfg = write_config(tmp_path / "p.yaml", name="p",
                       model={"arch": "torchvision:resnet18", "preprocess": "imagnet"},
                       image="img.png", output=str(tmp_path / "runs"))
    result = cli("run", cfg, "--dry-run")
    assert result.exit_code == 2
    assert "preprocess" in result.stderr and "imagenet" in result.stderr
    assert "Traceback" not in result.output + result.stderr
