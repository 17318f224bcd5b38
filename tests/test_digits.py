"""The shipped digits classifier: its accuracy (recomputed), its reproducibility, its interpreter.

The test accuracy is recomputed from the shipped weights on scikit-learn's bundled digits with the
training script's own preprocessing and split, and must be the figure the README reports.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from oracles import jacobian_rows
from precompute import LinearInterpreter
from precompute.models import ModelError, load_model
from precompute.models.digits import SHIPPED_WEIGHTS
from sweep_helpers import REPO

EXAMPLES = REPO / "examples"
IMAGES = EXAMPLES / "images" / "digits"


def _train_module():
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLES / "train_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_accuracy_is_the_readme_figure():
    pytest.importorskip("sklearn", reason="scikit-learn is in the test extras")
    train = _train_module()
    x, y, _, test = train.digit_images()
    model = load_model("digits").module
    correct, total = train.accuracy(model, x[test], y[test])
    readme = (REPO / "README.md").read_text()
    m = re.search(r"test accuracy (\d+)/(\d+) = ([\d.]+) %", readme)
    assert m, "the README does not report the digits test accuracy"
    assert (correct, total) == (int(m.group(1)), int(m.group(2)))
    assert f"{100 * correct / total:.2f}" == m.group(3)
    assert correct / total > 0.95  # a real classifier


def test_held_out_images_are_test_digits_and_are_classified():
    train = _train_module()
    x, y, train_idx, test_idx = train.digit_images()
    spec = load_model("digits")
    files = sorted(IMAGES.glob("*.png"))
    assert len(files) == 10
    for f in files:
        label, index = (int(v) for v in f.stem.split("-"))
        assert index in set(test_idx.tolist()) and index not in set(train_idx.tolist())
        assert int(y[index]) == label
        x0 = spec.prepare(Image.open(f)).x0
        assert torch.equal(x0[0], x[index])  # the PNG holds exactly the preprocessed digit
        assert int(spec.module(x0).argmax()) == label


def test_architecture_and_input_checks():
    spec = load_model("digits")
    kinds = {type(m) for m in spec.module.modules()}
    assert {nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Linear} <= kinds
    assert all(m.bias is not None for m in spec.module.modules() if isinstance(m, nn.Conv2d))
    assert (spec.kind, spec.labels, spec.in_channels) == ("vector", [str(k) for k in range(10)], 1)
    assert spec.image_norm() == ((0.0,), (1.0,))
    assert spec.checkpoint == str(SHIPPED_WEIGHTS) and spec.checkpoint_sha256
    # the skip connection: with conv2 and conv3 blind, the scores still depend on the input
    net = spec.module.double()
    with torch.no_grad():
        net.conv2.weight.zero_()
        net.conv3.weight.zero_()
        a, b = (torch.rand(1, 1, 32, 32, dtype=torch.float64, generator=torch.Generator()
                           .manual_seed(s)) for s in (0, 1))
        assert (net(a) - net(b)).abs().max() > 1e-3
    with pytest.raises(ModelError, match="32×32"):
        spec.prepare(Image.new("L", (28, 28)))
    with pytest.raises(ModelError, match="classifier"):
        load_model("digits", scale=2)


def test_interpreter_rows_are_the_jacobian():
    """ReLU, max pooling and eval batch norm: F(x0) is the Jacobian (float64 oracle)."""
    spec = load_model("digits")
    net = spec.module.double()
    x0 = spec.prepare(Image.open(IMAGES / "3-0045.png")).x0.double()
    li = LinearInterpreter(net, x0, batch=10)
    ref = jacobian_rows(net, x0, range(10))
    assert (li.rows(range(10)) - ref).abs().max() <= 1e-12 * ref.abs().max()
    c = li.check()
    assert c["reconstruction_rel"] < 1e-12 and c["requirement3_rel"] == 0


@pytest.mark.slow
def test_training_script_reproduces_the_shipped_weights_and_images(tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn is in the test extras")
    proc = subprocess.run([sys.executable, str(EXAMPLES / "train_digits.py"), "--weights",
                           str(tmp_path / "digits.pt"), "--images", str(tmp_path / "img")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    readme = (REPO / "README.md").read_text()
    printed = re.search(r"test accuracy: (\d+/\d+ = [\d.]+ %)", proc.stdout).group(1)
    assert f"test accuracy {printed}" in readme
    new = torch.load(tmp_path / "digits.pt", weights_only=True)
    old = torch.load(SHIPPED_WEIGHTS, weights_only=True)
    assert list(new) == list(old)
    for k in old:
        assert new[k].dtype == old[k].dtype and torch.equal(new[k], old[k]), k
    made = sorted(p.name for p in (tmp_path / "img").iterdir())
    assert made == sorted(p.name for p in IMAGES.iterdir())
    for name in made:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "img" / name)),
                              np.asarray(Image.open(IMAGES / name))), name


@pytest.mark.slow
def test_readme_digits_example_publishes_classifier_pages(tmp_path):
    """`precompute run examples/digits.yaml` then `sitegen build`, as the README's first command."""
    from click.testing import CliRunner

    from sitegen.cli import main as sitegen
    from sweep_helpers import cli_subprocess

    # one thread: two would only contend on the 2-core test machine (the result is the same)
    proc = cli_subprocess("run", EXAMPLES / "digits.yaml", "-q", cwd=tmp_path,
                          env_extra={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    runs = tmp_path / "runs"
    stores = sorted(p.name for p in runs.glob("digits-*.zarr"))
    assert stores == sorted(f"digits-{p.stem}.zarr" for p in IMAGES.glob("*.png"))
    # the dataset summary is the one examples/README.md reports
    line = re.search(r"digits\.summary\.zarr: top-1 residual share ([\d.]+ % ± [\d.]+) over 10 "
                     r"images", proc.stdout)
    assert line, proc.stdout
    assert f"top-1 residual share of {line.group(1)}" in (EXAMPLES / "README.md").read_text()
    verify = cli_subprocess("verify", runs / stores[0], "--samples", "1", cwd=tmp_path)
    assert verify.returncode == 0 and "classify: " in verify.stdout, verify.stdout + verify.stderr
    result = CliRunner().invoke(sitegen, ["build", str(runs), "-o", str(tmp_path / "site"),
                                          "--quiet"])
    assert result.exit_code == 0, result.output
    pages = sorted(p.name for p in (tmp_path / "site" / "classify").glob("*.html"))
    assert pages == sorted([s.removesuffix(".zarr") + ".html" for s in stores]
                           + ["digits.summary.html"])
    assert 'href="classify/digits.summary.html"' in (tmp_path / "site" / "index.html").read_text()
