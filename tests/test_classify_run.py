"""`precompute run` with `analyses.classify` on the shipped digits classifier, against oracles.

Two held-out digits (a dataset given by a glob) in float64. Every stored array is compared with
an independent computation on the plain model: scores by a forward pass, class rows by
``torch.func`` (ReLU, max pooling and eval batch norm: F is the Jacobian), layer-wise terms by
FullGrad-style autograd hooks, the back-projected masked biases by hooks that apply the
documented rule to this network by hand (its skip connection included), votes by the argmax over
all ten labels, the FGSM image by plain autograd, and the dataset summary by numpy from the
per-image stores. Then: resuming an interrupted analysis gives the same store bit for bit.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from PIL import Image

from oracles import jacobian_rows
from precompute import open_store
from precompute.models import load_model
from precompute.models.digits import SHIPPED_WEIGHTS
from sweep_helpers import REPO, cli, make_image, write_config
from test_classify_conservation import _fullgrad_terms

IMAGES = REPO / "examples" / "images" / "digits"
EPS = 0.1


def all_arrays(path) -> dict[str, np.ndarray]:
    """Every array of a store, nested groups included."""
    g = zarr.open_group(str(path), mode="r")
    return {name: a[...] for name, a in g.members(max_depth=None) if isinstance(a, zarr.Array)}


def all_attrs(path) -> dict[str, dict]:
    g = zarr.open_group(str(path), mode="r")
    out = {"": dict(g.attrs)}
    out.update({name: dict(m.attrs) for name, m in g.members(max_depth=None)})
    for k in ("timings", "created", "device"):
        out[""].pop(k, None)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    cfg = write_config(root / "digits.yaml", name="dg",
                       model={"arch": "digits", "checkpoint": str(SHIPPED_WEIGHTS)},
                       images=str(IMAGES / "[38]-*.png"), dtype="float64",
                       analyses={"classify": {"top_k": 3, "adversarial": {"fgsm_eps": EPS}}},
                       output=str(root / "runs"))
    r = cli("run", cfg, "-q")
    assert r.exit_code == 0, r.output
    stores = sorted((root / "runs").glob("dg-*.zarr"))
    assert [p.name for p in stores] == ["dg-3-0045.zarr", "dg-8-0028.zarr"]
    net = load_model("digits").module.double().eval()
    return root, cfg, stores, net


def x0_of(store):
    image = zarr.open_group(str(store), mode="r").attrs["image"]["path"]
    return load_model("digits").prepare(Image.open(image)).x0.double()


def back_projection_oracle(net, x0):
    """Σ_sites F_tᵀ b̂ by the rule of FORMAT.md applied to DigitsNet by hand, with hooks."""
    acts = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: acts.__setitem__(n, o))
             for n, m in net.named_children()]
    x = x0.clone().requires_grad_(True)
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()

    def shift(bn):
        return (bn.bias - bn.weight * bn.running_mean / torch.sqrt(bn.running_var + bn.eps)
                ).view(1, -1, 1, 1)

    def conv_bias(c):
        return c.bias.view(1, -1, 1, 1)

    def mask(name):  # ReLU's gain at x0: 1 where its input is positive
        return (acts[name] > 0).to(x0.dtype)

    chains = [  # (tensor where the chain ends, masked constant there)
        (acts["conv1"], conv_bias(net.conv1)),        # consumed by bn1: not a gain
        (acts["relu1"], mask("bn1") * shift(net.bn1)),  # bn1 → relu1 → pool1
        (acts["conv2"], conv_bias(net.conv2)),
        (acts["relu2"], mask("bn2") * shift(net.bn2)),
        (acts["conv3"], conv_bias(net.conv3)),
        (acts["bn3"], shift(net.bn3)),                # consumed by the skip's sum
        (acts["conv4"], conv_bias(net.conv4)),
        (acts["relu4"], mask("bn4") * shift(net.bn4)),
        (acts["relu5"], mask("fc1") * net.fc1.bias),  # fc1 → relu5 → fc2
    ]
    objective = sum((t * b.detach()).sum() for t, b in chains)
    (grad,) = torch.autograd.grad(objective, x)
    return grad[0], net.fc2.bias.detach()


def discussion_oracle(x0, rows, score, back, o):
    raw = x0[0] * rows + back + o * rows
    return raw * (score / raw.sum()), score / raw.sum()


@pytest.mark.slow
def test_clean_analyses_equal_the_oracles(run):
    _, _, stores, net = run
    for store in stores:
        g = zarr.open_group(str(store / "classify"), mode="r")
        assert g.attrs["complete"] is True and g.attrs["labels"] == [str(k) for k in range(10)]
        x0 = x0_of(store)
        with torch.no_grad():
            scores = net(x0)[0]
        assert np.array_equal(g["scores"][...], scores.numpy())
        top = [int(k) for k in torch.argsort(scores, descending=True)[:3]]
        assert g["top"][...].tolist() == top
        rows = jacobian_rows(net, x0, range(10)).detach()  # every label's row, (10, 1, 32, 32)
        scale = float(rows.abs().max())
        assert np.abs(g["rows"][...] - rows[top].numpy()).max() <= 1e-12 * scale
        inp = (rows[top] * x0).flatten(1).sum(1).numpy()
        assert np.allclose(g["input_term"][...], inp, atol=1e-12, rtol=0)
        r = scores[top].numpy() - inp
        assert np.allclose(g["residual"][...], r, atol=1e-11, rtol=0)
        assert np.allclose(g["residual_share"][...], np.abs(r) / (np.abs(inp) + np.abs(r)),
                           atol=1e-12, rtol=0)
        # contributions: input first, then FullGrad's bias-gradient terms by module path
        terms = g["contributions"].attrs["terms"]
        assert terms == g.attrs["terms"] == ["input", "conv1", "bn1", "conv2", "bn2", "conv3",
                                             "bn3", "conv4", "bn4", "fc1", "fc2"]
        c = g["contributions"][...]
        for i, k in enumerate(top):
            want = _fullgrad_terms(net, x0, k)
            assert abs(c[i, 0] - inp[i]) <= 1e-12
            for j, name in enumerate(terms[1:], 1):
                assert abs(c[i, j] - want[name]) <= 1e-11, (name, c[i, j], want[name])
            assert abs(c[i].sum() - float(scores[k])) <= 1e-10
        # discussions (eq. 18) with the masked biases back-projected by hand
        back, o = back_projection_oracle(net, x0)
        assert np.abs(g["back_projection"][...] - back.numpy()).max() <= 1e-11
        assert np.array_equal(g["output_constant"][...], o.numpy())
        per_label = []
        for k in range(10):
            pd, alpha = discussion_oracle(x0, rows[k], scores[k], back, o[k])
            per_label.append(pd.sum(0))
            if k in top:
                i = top.index(k)
                got = g["discussions"][i]
                assert np.abs(got - pd.numpy()).max() <= 1e-10 * float(pd.abs().max())
                assert abs(g["discussion_factor"][i] - float(alpha)) <= 1e-10 * abs(float(alpha))
                assert abs(got.sum() - float(scores[k])) <= 1e-9
        # votes: the argmax of every label's discussion, pixel by pixel
        votes = torch.stack(per_label).argmax(0).numpy()
        assert np.array_equal(g["votes"][...], votes)
        assert np.array_equal(g["vote_counts"][...], np.bincount(votes.ravel(), minlength=10))
        assert np.array_equal(g["vote_masks"][...], np.stack([votes == k for k in top]))
        assert g["vote_counts"][top[0]] > 0


@pytest.mark.slow
def test_fgsm_copy_equals_the_attack_by_hand(run):
    _, _, stores, net = run
    for store in stores:
        clean = zarr.open_group(str(store / "classify"), mode="r")
        g = zarr.open_group(str(store / "classify" / "adversarial"), mode="r")
        x0 = x0_of(store)
        label = int(clean["top"][0])
        v = x0.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(net(v), torch.tensor([label])), v)
        v_adv = (x0 + EPS * grad.sign()).clamp(0, 1)
        assert np.abs(g["image"][...] - v_adv[0].numpy()).max() <= 1e-15
        assert np.abs(g["input"][...] - v_adv[0].numpy()).max() <= 1e-15  # x0 = v for digits
        assert float((v_adv - x0).abs().max()) <= EPS + 1e-15 and bool((v_adv != x0).any())
        with torch.no_grad():
            scores = net(v_adv)[0].numpy()
        assert np.array_equal(g["scores"][...], scores)
        a = dict(g.attrs)
        assert (a["attack"], a["fgsm_eps"], a["label"], a["clean_top1"]) == ("fgsm", EPS, label,
                                                                            label)
        assert a["top1"] == int(np.argmax(scores)) and a["changed"] == (a["top1"] != label)
        assert g["display_input"].shape == (32, 32, 3) and g["display_input"].dtype == np.uint8
        c = g["contributions"][...]
        assert np.abs(c.sum(1) - scores[g["top"][...]]).max() <= 1e-10
        assert g["votes"].shape == (32, 32)


@pytest.mark.slow
def test_summary_is_the_mean_and_std_over_the_stores(run):
    root, _, stores, _ = run
    s = zarr.open_group(str(root / "runs" / "dg.summary.zarr"), mode="r")
    a = dict(s.attrs)
    assert (a["kind"], a["count"], a["stores"]) == ("summary", 2, [p.name for p in stores])
    for sub in ("", "adversarial/"):
        shares, rows = [], []
        for store in stores:
            g = zarr.open_group(str(store / f"classify/{sub}".rstrip("/")), mode="r")
            top = g["top"][...]
            shares.append(g["residual_share"][0])
            rows.append(g["contributions"][0] / g["scores"][top[0]])
        rows = np.array(rows)
        attrs = dict(s[sub.rstrip("/")].attrs) if sub else a
        assert np.isclose(attrs["residual_share_mean"], np.mean(shares), rtol=1e-14, atol=0)
        assert np.isclose(attrs["residual_share_std"], np.std(shares), rtol=1e-12, atol=1e-16)
        assert np.allclose(s[f"{sub}contributions"][...], rows, rtol=1e-14, atol=0)
        assert np.allclose(s[f"{sub}contributions_mean"][...], rows.mean(0), rtol=1e-12, atol=1e-15)
        assert np.allclose(s[f"{sub}contributions_std"][...], rows.std(0), rtol=1e-12, atol=1e-15)


@pytest.mark.slow
def test_interrupted_classify_resumes_to_the_same_store(run):
    root, cfg, stores, _ = run
    ref = root / "ref.zarr"
    shutil.copytree(stores[0], ref)
    # as if killed after writing the arrays, before the attributes that mark them complete
    g = zarr.open_group(str(stores[0] / "classify"), mode="r+")
    g.attrs.put({k: v for k, v in g.attrs.items() if k != "complete"})
    shutil.rmtree(stores[0] / "classify" / "adversarial")
    (stores[0] / "classify" / "rows" / "c").rename(stores[0] / "classify" / "rows" / "gone")
    st = open_store(stores[0])
    assert st.classify() is None and st.classify(adversarial=True) is None  # not complete
    r = cli("run", cfg, "-q")
    assert r.exit_code == 0, r.output
    assert not (stores[0] / "classify" / "rows" / "gone").exists()
    a, b = all_arrays(stores[0]), all_arrays(ref)
    assert sorted(a) == sorted(b) and "classify/adversarial/votes" in a
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
    assert all_attrs(stores[0]) == all_attrs(ref)
    c = open_store(stores[0]).classify()
    assert c["attrs"]["complete"] and np.array_equal(c["votes"], b["classify/votes"])


def test_classify_on_an_image_model_is_one_line_and_writes_nothing(tmp_path):
    make_image(tmp_path / "a.png", 8, 8)
    cfg = write_config(tmp_path / "c.yaml", name="bic", model={"arch": "bicubic", "scale": 2},
                       image="a.png", analyses={"classify": {"top_k": 2}},
                       output=str(tmp_path / "runs"))
    r = cli("run", cfg)
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [
        "error: analyses.classify applies to classifiers (vector models); bicubic is an image "
        "model"]
    assert not (tmp_path / "runs" / "bic.zarr").exists()


def test_dry_run_describes_the_classifier_analyses(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", name="d", model={"arch": "digits"},
                       image=str(IMAGES / "3-0045.png"),
                       analyses={"classify": {"top_k": 20, "adversarial": {"fgsm_eps": 0.05}}},
                       output=str(tmp_path / "runs"))
    r = cli("run", cfg, "--dry-run")
    assert r.exit_code == 0, r.output
    assert "classify: the top 10 of 10 scores" in r.stderr  # top_k is at most K
    assert "FGSM copy of x0 (ε = 0.05" in r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_torchvision_classifier_with_imagenet_normalisation(tmp_path):
    """A zoo classifier end to end: 1,000 labels voted in batched passes, FGSM through the
    ImageNet normalisation (the step is taken on the [0, 1] image), label names from torchvision."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(weights=None)
    torch.save(net.state_dict(), tmp_path / "sq.pth")
    make_image(tmp_path / "a.png", 19, 19, seed=3)
    cfg = write_config(tmp_path / "c.yaml", name="sq",
                       model={"arch": "torchvision:squeezenet1_1", "checkpoint": "sq.pth"},
                       image="a.png", dtype="float64", batch=250,
                       analyses={"classify": {"top_k": 2, "adversarial": {"fgsm_eps": 0.02,
                                                                          "label": 7}}},
                       output=str(tmp_path / "runs"))
    r = cli("run", cfg, "-q")
    assert r.exit_code == 0, r.output
    store = tmp_path / "runs" / "sq.zarr"
    root = zarr.open_group(str(store), mode="r")
    assert root.attrs["analyses"]["classify"] == {"top_k": 2, "labels": 1000, "batch": 250,
                                                  "adversarial": {"fgsm_eps": 0.02, "label": 7}}
    g = root["classify"]
    assert g.attrs["labels"][281] == "tabby" and g["vote_counts"][...].sum() == 19 * 19
    assert g["votes"][...].min() >= 0 and g["votes"].shape == (19, 19)
    c = g["contributions"][...]
    assert np.abs(c.sum(1) - g["scores"][...][g["top"][...]]).max() <= 1e-10
    # FGSM on v = x0·std + mean, the image in [0, 1]
    spec = load_model("torchvision:squeezenet1_1", checkpoint=tmp_path / "sq.pth")
    model = spec.module.double()
    mean, std = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in spec.pixel_norm)
    x0 = torch.from_numpy(root["input"][...])[None]
    v = (x0 * std + mean).clamp(0, 1).requires_grad_(True)
    loss = F.cross_entropy(model((v - mean) / std), torch.tensor([7]))
    (grad,) = torch.autograd.grad(loss, v)
    v_adv = (v.detach() + 0.02 * grad.sign()).clamp(0, 1)
    adv = root["classify/adversarial"]
    assert np.abs(adv["image"][...] - v_adv[0].numpy()).max() <= 1e-12
    assert np.abs(adv["input"][...] - ((v_adv - mean) / std)[0].numpy()).max() <= 1e-12
    assert adv.attrs["label"] == 7
    # the displayed FGSM image is v_adv in 8 bits
    assert np.abs(adv["display_input"][...].astype(float) / 255
                  - v_adv[0].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-9


@pytest.mark.slow
def test_verify_recomputes_the_classifier_analyses(run, tmp_path):
    from precompute.verify import verify_store

    _, _, stores, _ = run
    text, ok = verify_store(str(stores[1]), samples=1)
    assert ok, text
    line = next(t for t in text.splitlines() if t.startswith("classify: "))
    assert "OK" in line
    copy = tmp_path / "tampered.zarr"
    shutil.copytree(stores[1], copy)
    g = zarr.open_group(str(copy / "classify"), mode="r+")
    c = g["contributions"][...]
    c[0, 3] += 0.5
    g["contributions"][...] = c
    text, ok = verify_store(str(copy), samples=1)
    assert not ok and "MISMATCH" in text and text.endswith("verify: FAILED")


def test_terms_that_do_not_add_up_stop_the_analysis(monkeypatch):
    """Conservation is enforced: a decomposition missing a constant is refused, not stored."""
    from precompute import classify
    from precompute.contributions import decompose
    from precompute.engine import Engine
    from precompute.interpreter import LinearInterpreter

    def missing_bn1(*a, **k):
        d = decompose(*a, **k)
        d.contributions[:, d.terms.index("bn1")] = 0  # as if bn1's shift were not observed
        return d

    net = load_model("digits").module.double()
    x0 = load_model("digits").prepare(Image.open(IMAGES / "3-0045.png")).x0.double()
    with torch.no_grad():
        scores = net(x0)[0]
    eng = Engine(LinearInterpreter(net, x0, batch=10), torch.device("cpu"), torch.float64)
    ok = classify.analyse(net, x0, scores, 2, "freeze", eng, 10)
    assert ok.attrs["conservation"]["max_rel"] < 1e-12
    monkeypatch.setattr(classify, "decompose", missing_bn1)
    with pytest.raises(classify.UserError, match="do not add up to its score"):
        classify.analyse(net, x0, scores, 2, "freeze", eng, 10)


def _two_digit_config(tmp_path):
    return write_config(tmp_path / "d.yaml", name="dg",
                        model={"arch": "digits", "checkpoint": str(SHIPPED_WEIGHTS)},
                        images=str(IMAGES / "[38]-*.png"), dtype="float64",
                        analyses={"classify": {"top_k": 2}}, output=str(tmp_path / "runs"))


def test_a_folder_that_is_not_a_summary_is_never_replaced(tmp_path):
    """The summary is written in place: something else under its name stays, with one line,
    and the stores computed before are complete."""
    cfg = _two_digit_config(tmp_path)
    mine = tmp_path / "runs" / "dg.summary.zarr"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    r = cli("run", "-q", cfg)
    assert r.exit_code == 2 and "Traceback" not in r.output + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a dataset summary: not replaced" in lines[0], r.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    stores = sorted((tmp_path / "runs").glob("dg-*.zarr"))
    assert len(stores) == 2 and all(open_store(p).attrs["analyses"]["classify"] for p in stores)
    assert all(zarr.open_group(str(p), mode="r")["classify"].attrs["complete"] for p in stores)


def test_an_interrupted_summary_is_written_again_by_the_same_command(tmp_path):
    """A summary killed while being written is left marked as being created (readers refuse
    it in one line); the same command writes it whole, equal to an uninterrupted run's."""
    cfg = _two_digit_config(tmp_path)
    assert cli("run", "-q", cfg).exit_code == 0
    out = tmp_path / "runs" / "dg.summary.zarr"
    whole = zarr.open_group(str(out), mode="r")
    expected = (dict(whole.attrs), whole["contributions"][...])
    shutil.rmtree(out)
    zarr.open_group(str(out), mode="w", attributes={"linearscope_creating": True})
    info = cli("info", out)
    assert info.exit_code == 2 and "still being created" in info.stderr
    r = cli("run", "-q", cfg)
    assert r.exit_code == 0, r.stderr
    again = zarr.open_group(str(out), mode="r")
    assert dict(again.attrs) == expected[0]
    np.testing.assert_array_equal(again["contributions"][...], expected[1])
