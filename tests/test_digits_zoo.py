"""The digits architecture zoo (precompute/models/digits_zoo.py): shipped weights, their
accuracy and reproducibility, and the interpreter on each family against float64 oracles.

Oracles: the Jacobian by ``torch.func.jacrev`` (class rows, requirement (3)) and, for the
layer-wise contributions of Theorem 1, the bias gradients of autograd hooks (FullGrad's form,
``tests/test_classify_conservation.py``), which share no code with ``precompute.contributions``.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image
from torch import nn

from oracles import jacobian_rows
from precompute import LinearInterpreter
from precompute.contributions import decompose
from precompute.models import ModelError, load_model
from precompute.models.digits_zoo import MODELS, shipped_weights
from sweep_helpers import REPO
from test_classify_conservation import _fullgrad_terms

EXAMPLES = REPO / "examples"
IMAGES = EXAMPLES / "images" / "digits"
ZOO = list(MODELS)


def _train_module():
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLES / "train_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _x0(name: str = "3-0045.png") -> torch.Tensor:
    return load_model("digits").prepare(Image.open(IMAGES / name)).x0.double()


def test_every_family_is_what_it_says():
    kinds = {a: {type(m) for m in load_model(a).module.modules()} for a in ZOO}
    assert nn.BatchNorm2d not in kinds["digits-vgg"]
    assert nn.BatchNorm2d in kinds["digits-vgg-bn"]
    assert not any("Block" in t.__name__ or "Dense" in t.__name__
                   for a in ("digits-vgg", "digits-vgg-bn") for t in kinds[a])
    assert nn.AdaptiveAvgPool2d in kinds["digits-resnet"]
    assert nn.AvgPool2d in kinds["digits-densenet"]
    # the same module tree, with and without batch norm (Figure 8's two columns)
    plain = [n for n, m in load_model("digits-vgg").module.named_modules()
             if isinstance(m, nn.Conv2d)]
    bn = [n for n, m in load_model("digits-vgg-bn").module.named_modules()
          if isinstance(m, nn.Conv2d)]
    assert len(plain) == len(bn) == 5
    for a in ZOO:
        spec = load_model(a)
        assert (spec.kind, spec.labels, spec.model_id) == ("vector", [str(k) for k in range(10)], a)
        assert spec.checkpoint == str(shipped_weights(a)) and spec.checkpoint_sha256
        assert shipped_weights(a).stat().st_size < 2 << 20  # ≤ 2 MB shipped
    with pytest.raises(ModelError, match="is a classifier"):
        load_model("digits-resnet", scale=2)
    with pytest.raises(ModelError, match="unknown model id 'digits-alexnet'"):
        load_model("digits-alexnet")


def test_residual_and_projection_shortcuts_and_concatenation_are_used():
    """The skip connections of ResNet and DenseNet carry signal: with the convolutions of the
    residual branch (ResNet) or of the new features (DenseNet) zeroed, the scores still depend
    on the input."""
    a, b = (torch.rand(1, 1, 32, 32, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    res = load_model("digits-resnet").module.double()
    dense = load_model("digits-densenet").module.double()
    with torch.no_grad():
        for blk in (res.layer1[0], res.layer2[0]):
            blk.conv2.weight.zero_()
        for name, m in dense.features.named_modules():
            if name.startswith("denseblock") and isinstance(m, nn.Conv2d):
                m.weight.zero_()
        assert (res(a) - res(b)).abs().max() > 1e-3
        assert (dense(a) - dense(b)).abs().max() > 1e-3


def test_accuracies_are_the_readme_figures():
    """Each model's test accuracy, recomputed from the shipped weights with the training
    script's data and split, is the figure examples/README.md reports for it."""
    pytest.importorskip("sklearn", reason="scikit-learn is in the test extras")
    train = _train_module()
    x, y, _, test = train.digit_images()
    text = (EXAMPLES / "README.md").read_text()
    for a in ZOO:
        correct, total = train.accuracy(load_model(a).module, x[test], y[test])
        m = re.search(rf"^\| `{re.escape(a)}` \|.*\| (\d+)/(\d+) = ([\d.]+) % \|", text, re.M)
        assert m, f"examples/README.md does not report the test accuracy of {a}"
        assert (correct, total) == (int(m.group(1)), int(m.group(2)))
        assert f"{100 * correct / total:.2f}" == m.group(3)
        assert correct / total > 0.95, a  # a real classifier


@pytest.mark.parametrize("arch", ZOO)
def test_interpreter_rows_are_the_jacobian(arch):
    """ReLU, max/average pooling, eval batch norm, shortcuts, concatenation: the class rows of
    F(x0) are the Jacobian (float64, jacrev), and F(x0)·x0 + r(x0) is the scores."""
    net = load_model(arch).module.double()
    x0 = _x0()
    li = LinearInterpreter(net, x0, batch=10)
    ref = jacobian_rows(net, x0, range(10))
    assert (li.rows(range(10)) - ref).abs().max() <= 1e-12 * ref.abs().max()
    c = li.check()
    assert c["reconstruction_rel"] < 1e-12 and c["requirement3_rel"] == 0, c


@pytest.mark.parametrize("arch", ZOO)
def test_contributions_are_the_bias_gradients_and_sum_to_the_score(arch):
    """Theorem 1 on each family: the input term plus every site's term is the score, and each
    term is ⟨∂score/∂output of the module, its bias⟩ (BN: β − γ·μ/σ) by autograd hooks."""
    net = load_model(arch).module.double()
    x0 = _x0("7-0081.png")
    with torch.no_grad():
        scores = net(x0)[0]
    labels = [int(k) for k in torch.argsort(scores, descending=True)[:3]]
    d = decompose(net, x0, labels)
    total = d.input_term + d.contributions.sum(1)
    assert (total - scores[labels]).abs().max() <= 1e-10 * scores.abs().max()
    ours = dict(zip(d.terms, d.contributions[0].tolist()))
    want = _fullgrad_terms(net, x0, labels[0])
    assert set(ours) == set(want), set(ours) ^ set(want)
    scale = max(abs(v) for v in want.values())
    for path, v in want.items():
        assert abs(ours[path] - v) <= 1e-11 * scale, (path, ours[path], v)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ZOO)
def test_training_script_reproduces_the_shipped_weights(arch, tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn is in the test extras")
    proc = subprocess.run([sys.executable, str(EXAMPLES / "train_digits.py"), "--arch", arch,
                           "--weights", str(tmp_path / "w.pt"), "--images", str(tmp_path / "img")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    printed = re.search(rf"{re.escape(arch)} test accuracy: (\d+/\d+ = [\d.]+ %)",
                        proc.stdout).group(1)
    assert re.search(rf"^\| `{re.escape(arch)}` \|.*\| {re.escape(printed)} \|",
                     (EXAMPLES / "README.md").read_text(), re.M)
    new = torch.load(tmp_path / "w.pt", weights_only=True)
    old = torch.load(shipped_weights(arch), weights_only=True)
    assert list(new) == list(old)
    for k in old:
        assert new[k].dtype == old[k].dtype and torch.equal(new[k], old[k]), k


def _zoo_rows_match_readme(runs) -> list[str]:
    """The models of examples/digits-zoo.yaml whose summaries in ``runs`` are not the residual
    shares (clean, FGSM) examples/README.md reports for them."""
    from sitegen.reader import Summary

    text = (EXAMPLES / "README.md").read_text()
    wrong = []
    for m in ["digits", *ZOO]:
        s = Summary(runs / f"{m}.summary.zarr")
        adv = s.adversarial[0]
        clean = f"{100 * s.attrs['residual_share_mean']:.1f} % ± {100 * s.attrs['residual_share_std']:.1f}"
        fgsm = f"{100 * adv['residual_share_mean']:.1f} % ± {100 * adv['residual_share_std']:.1f}"
        if not re.search(rf"^\| `{re.escape(m)}` \| [\d.]+ % \| {re.escape(clean)} \| "
                         rf"{re.escape(fgsm)} \|", text, re.M):
            wrong.append(f"{m}: {clean}, FGSM {fgsm}")
    return wrong


@pytest.mark.slow
def test_zoo_example_gives_the_readme_figures_and_one_comparison_page(tmp_path):
    """`precompute run examples/digits-zoo.yaml` then `sitegen build`: the residual shares are
    the ones examples/README.md reports, and the five models share one comparison page."""
    from click.testing import CliRunner

    from sitegen.cli import main as sitegen
    from sweep_helpers import cli_subprocess

    proc = cli_subprocess("run", EXAMPLES / "digits-zoo.yaml", "-q", cwd=tmp_path,
                          env_extra={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    runs = tmp_path / "runs"
    assert len(list(runs.glob("digits*-[0-9]-*.zarr"))) == 50
    assert not _zoo_rows_match_readme(runs)
    # its first run is examples/digits.yaml's: that config finds its ten stores done
    again = cli_subprocess("run", EXAMPLES / "digits.yaml", "-q", cwd=tmp_path,
                           env_extra={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0 and again.stdout.count("already done") == 10, again.stdout
    result = CliRunner().invoke(sitegen, ["build", str(runs), "-o", str(tmp_path / "site"),
                                          "--quiet"])
    assert result.exit_code == 0, result.output
    (page,) = (tmp_path / "site" / "classify").glob("zoo-*.html")
    html = page.read_text()
    assert html.count('<figure class="zoo-model"') == 5
