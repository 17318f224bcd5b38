"""The model zoo: official state-dict layouts, ModelSpec descriptions, and linear interpreters.

Key -> shape tables are written here from docs (shared/notes/checkpoints.md, upstream READMEs),
independently of the modules under test. Interpreter checks run in float64 on small inputs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from oracles import bicubic_matrix_1d
from precompute.interpreter import LinearInterpreter
from precompute.models import ARCHS, ModelError, ModelSpec, Prepared, known_archs, load_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SHIPPED = EXAMPLES / "weights" / "pixelshuffle_x3.pt"
TOL = 1e-10


def shapes(module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def assert_interpreter_ok(module, x0, tol=TOL):
    """Requirement (3), F·x0 + r = f(x0), linearity and the adjoint identity (li.check())."""
    li = LinearInterpreter(module, x0, batch=8)
    with torch.no_grad():
        y = module(x0)
    assert torch.allclose(li.output, y[0], rtol=0, atol=tol * max(1.0, y.abs().max().item()))
    c = li.check()
    assert c["requirement3_rel"] <= tol, c
    assert c["reconstruction_rel"] <= tol, c
    assert c["linearity_rel"] <= tol * 100, c
    assert c["adjoint_rel"] <= tol * 100, c
    return li


def rand_image(h, w, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


# --- registry -------------------------------------------------------------------------------------

def test_registry_lists_every_family():
    ids = known_archs()
    for a in ("bicubic", "pixelshuffle", "edsr", "edsr-baseline", "cyclegan"):
        assert a in ids and a in ARCHS
    table4 = (["alexnet"] + [f"vgg{d}{b}" for d in (11, 13, 16, 19) for b in ("", "_bn")]
              + [f"resnet{d}" for d in (18, 34, 50, 101, 152)] + ["squeezenet1_0", "squeezenet1_1"]
              + [f"densenet{d}" for d in (121, 161, 169, 201)] + ["inception_v3"])
    assert sorted(i[len("torchvision:"):] for i in ids if i.startswith("torchvision:")) == sorted(table4)


@pytest.mark.parametrize("arch, kw, msg", [
    ("resnet", {}, "unknown model id 'resnet'"),
    ("torchvision:googlenet", {}, "not one of the supported classifiers"),
    ("bicubic", {}, "bicubic needs a scale"),
    ("bicubic", {"scale": 0}, "scale must be a positive integer"),
    ("edsr", {"scale": 5, "random_weights": True}, "scale 5 is not available"),
    ("cyclegan", {"scale": 2}, "cyclegan keeps the image size"),
    ("pixelshuffle", {"weights": "IMAGENET1K_V1"}, "'weights' applies to torchvision"),
    ("torchvision:resnet18", {"scale": 2}, "is a classifier"),
    ("python:nocolon", {}, "bad model id"),
    ("torchvision:vgg16", {"weights": "IMAGENET1K_FEATURES"}, "have no ImageNet classifier"),
])
def test_bad_ids_and_options(arch, kw, msg):
    with pytest.raises(ModelError, match=msg):
        load_model(arch, **kw)


def test_modules_are_in_eval_mode():
    for arch, kw in [("bicubic", {"scale": 2}), ("pixelshuffle", {"checkpoint": SHIPPED}),
                     ("edsr-baseline", {"scale": 2, "random_weights": True}),
                     ("cyclegan", {"random_weights": True})]:
        spec = load_model(arch, **kw)
        assert isinstance(spec, ModelSpec)
        assert not any(m.training for m in spec.module.modules()), arch


# --- bicubic --------------------------------------------------------------------------------------

def keys_cubic_matrix(n_in: int, s: int) -> np.ndarray:
    """1-D bicubic (Keys, a = −0.75) upscaling matrix, half-pixel centres, clamped taps."""
    return bicubic_matrix_1d(n_in, s).numpy()


def test_bicubic_filter_matrix_is_the_interpolation_matrix():
    spec = load_model("bicubic", scale=3)
    assert (spec.kind, spec.scale, spec.offset, spec.in_channels) == ("image", 3.0, 0.0, 3)
    x0 = spec.prepare(rand_image(5, 4)).x0.double()
    assert x0.shape == (1, 3, 5, 4)
    li = assert_interpreter_ok(spec.module, x0)
    assert torch.count_nonzero(li.residual) == 0
    Fd = li.dense().numpy().reshape(3, 15, 12, 3, 5, 4)
    K = np.kron(keys_cubic_matrix(5, 3), keys_cubic_matrix(4, 3)).reshape(15, 12, 5, 4)
    for c in range(3):
        for c2 in range(3):
            expect = K if c == c2 else np.zeros_like(K)
            np.testing.assert_allclose(Fd[c, :, :, c2], expect, atol=1e-12)


def test_bicubic_display_is_rgb_uint8():
    spec = load_model("bicubic", scale=2)
    img = rand_image(6, 7)
    p = spec.prepare(img)
    assert np.array_equal(spec.display_input(p), np.asarray(img))
    out = spec.display_output(spec.module(p.x0), p)
    assert out.shape == (12, 14, 3) and out.dtype == np.uint8


# --- PixelShuffle ---------------------------------------------------------------------------------

def pixelshuffle_table(r: int) -> dict[str, tuple]:
    return {"conv1.weight": (64, 1, 5, 5), "conv1.bias": (64,), "conv2.weight": (64, 64, 3, 3),
            "conv2.bias": (64,), "conv3.weight": (32, 64, 3, 3), "conv3.bias": (32,),
            "conv4.weight": (r * r, 32, 3, 3), "conv4.bias": (r * r,)}


@pytest.mark.parametrize("r", [2, 3, 4])
def test_pixelshuffle_official_layout_loads_strictly(tmp_path, r):
    g = torch.Generator().manual_seed(r)
    sd = {k: torch.randn(s, generator=g) for k, s in pixelshuffle_table(r).items()}
    torch.save(sd, tmp_path / "sr.pth")
    spec = load_model("pixelshuffle", checkpoint=tmp_path / "sr.pth")
    assert shapes(spec.module) == pixelshuffle_table(r) and spec.scale == r
    assert all(torch.equal(v, sd[k]) for k, v in spec.module.state_dict().items())
    if r == 3:
        assert sum(p.numel() for p in spec.module.parameters()) == 59_657


def test_pixelshuffle_reuses_one_relu_three_times():
    from precompute.models.pixelshuffle import PixelShuffleSR

    m = PixelShuffleSR(3)
    relus = [n for n, x in m.named_modules() if isinstance(x, torch.nn.ReLU)]
    assert relus == ["relu"]
    calls = []
    m.relu.register_forward_hook(lambda *a: calls.append(1))
    m(torch.rand(1, 1, 4, 4))
    assert len(calls) == 3


def test_pixelshuffle_spec_is_the_y_to_y_system():
    spec = load_model("pixelshuffle", checkpoint=SHIPPED)
    assert (spec.in_channels, spec.scale, spec.value_range) == (1, 3.0, (0.0, 1.0))
    assert spec.checkpoint_sha256 and len(spec.checkpoint_sha256) == 64
    img = Image.open(EXAMPLES / "images" / "astronaut-32.png")
    p = spec.prepare(img)
    y = np.asarray(img.convert("YCbCr"))[:, :, 0] / 255.0
    assert p.x0.shape == (1, 1, 32, 32) and p.x0.dtype == torch.float32
    np.testing.assert_allclose(p.x0[0, 0].numpy(), y, atol=1e-7)
    assert p.extra["cbcr_up"].shape == (96, 96, 2)
    with torch.no_grad():
        out = spec.module(p.x0)
    rgb = spec.display_output(out, p)
    assert rgb.shape == (96, 96, 3) and rgb.dtype == np.uint8
    # colour comes back from Cb/Cr; luminance from the network output
    assert np.abs(rgb[..., 0].astype(int) - rgb[..., 2].astype(int)).max() > 20
    y_back = np.asarray(Image.fromarray(rgb).convert("YCbCr"))[:, :, 0].astype(int)
    y_net = (out[0, 0].clamp(0, 1) * 255).round().numpy().astype(int)
    diff = np.abs(y_back - y_net)  # PIL's 8-bit YCbCr<->RGB round trip, clipped in RGB
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 3
    shown = spec.display_input(p)
    assert shown.shape == (32, 32, 3) and np.abs(shown.astype(int) - np.asarray(img.convert("RGB"))).max() <= 3


def test_pixelshuffle_interpreters():
    from precompute.models.pixelshuffle import PixelShuffleSR

    torch.manual_seed(1)
    assert_interpreter_ok(PixelShuffleSR(2).double().eval(), torch.rand(1, 1, 9, 10, dtype=torch.float64))
    spec = load_model("pixelshuffle", checkpoint=SHIPPED)
    x0 = spec.prepare(Image.open(EXAMPLES / "images" / "astronaut-32.png")).x0[..., :12, :12]
    li = assert_interpreter_ok(spec.module.double(), x0.double())
    assert li.out_shape == (1, 36, 36)


# --- the shipped, trained PixelShuffle ×3 ------------------------------------------------------------

def luminance_psnr(a: torch.Tensor, b: torch.Tensor, border: int) -> float:
    a = a[..., border:-border, border:-border].double()
    b = b[..., border:-border, border:-border].double()
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean()))


@pytest.mark.parametrize("name", ["astronaut-144.png", "chelsea-144.png"])
def test_shipped_pixelshuffle_beats_bicubic_on_held_out_images(name):
    """The documented degradation (Y, antialiased bicubic ↓3, 8-bit), PSNR computed here."""
    assert SHIPPED.stat().st_size < 2_000_000
    spec = load_model("pixelshuffle", scale=3, checkpoint=SHIPPED)
    y = np.asarray(Image.open(EXAMPLES / "images" / name).convert("YCbCr"))[:, :, 0]
    hr = torch.from_numpy(y.astype(np.float32) / 255)[None, None]
    h, w = hr.shape[-2:]
    lr = F.interpolate(hr, size=(h // 3, w // 3), mode="bicubic", antialias=True, align_corners=False)
    lr = (lr.clamp(0, 1) * 255).round() / 255
    with torch.no_grad():
        net = spec.module(lr).clamp(0, 1)
    bic = F.interpolate(lr, scale_factor=3, mode="bicubic", align_corners=False).clamp(0, 1)
    p_net, p_bic = luminance_psnr(net, hr, 3), luminance_psnr(bic, hr, 3)
    assert p_net > p_bic + 0.2, (p_net, p_bic)


def test_held_out_images_are_not_training_images():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_ps", EXAMPLES / "train_pixelshuffle.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert set(mod.HELD_OUT) == {"astronaut", "chelsea"}
    assert not set(mod.TRAIN) & set(mod.HELD_OUT)
    attribution = (EXAMPLES / "images" / "ATTRIBUTION.md").read_text()
    for n in mod.TRAIN + mod.HELD_OUT:
        assert f"{n}()`" in attribution
    for png in (EXAMPLES / "images").glob("*.png"):
        assert png.name in attribution


# --- EDSR -----------------------------------------------------------------------------------------

def edsr_table(F: int, R: int, scale: int) -> dict[str, tuple]:
    t = {"sub_mean.weight": (3, 3, 1, 1), "sub_mean.bias": (3,), "head.0.weight": (F, 3, 3, 3),
         "head.0.bias": (F,)}
    for i in range(R):
        t.update({f"body.{i}.body.0.weight": (F, F, 3, 3), f"body.{i}.body.0.bias": (F,),
                  f"body.{i}.body.2.weight": (F, F, 3, 3), f"body.{i}.body.2.bias": (F,)})
    t.update({f"body.{R}.weight": (F, F, 3, 3), f"body.{R}.bias": (F,)})
    up = {2: [4 * F], 3: [9 * F], 4: [4 * F, 4 * F]}[scale]
    for j, c in enumerate(up):
        t.update({f"tail.0.{2 * j}.weight": (c, F, 3, 3), f"tail.0.{2 * j}.bias": (c,)})
    t.update({"tail.1.weight": (3, F, 3, 3), "tail.1.bias": (3,),
              "add_mean.weight": (3, 3, 1, 1), "add_mean.bias": (3,)})
    return t


@pytest.mark.parametrize("scale, params", [(2, 1_369_883), (3, 1_554_523), (4, 1_517_595)])
def test_edsr_baseline_layout_and_strict_file_load(tmp_path, scale, params):
    """README: 1.37/1.55/1.52 M parameters; x4 = 1,517,595 from the module tree."""
    table = edsr_table(64, 16, scale)
    g = torch.Generator().manual_seed(scale)
    sd = {k: torch.randn(s, generator=g) for k, s in table.items()}
    path = tmp_path / f"edsr_baseline_x{scale}.pt"
    torch.save(sd, path)
    spec = load_model("edsr-baseline", checkpoint=path)  # scale inferred from the file
    assert spec.scale == scale and shapes(spec.module) == table
    assert sum(p.numel() for p in spec.module.parameters()) == params
    assert all(torch.equal(v, sd[k]) for k, v in spec.module.state_dict().items())
    assert load_model("edsr-baseline", scale=scale, checkpoint=path).scale == scale


def test_edsr_x4_layout():
    from precompute.models.edsr import EDSR

    m = EDSR(4, 32, 256, 0.1)
    assert shapes(m) == edsr_table(256, 32, 4)
    assert sum(p.numel() for p in m.parameters()) == 43_089_947
    spec = load_model("edsr", scale=3, random_weights=True)
    assert shapes(spec.module) == edsr_table(256, 32, 3) and spec.module.res_scale == 0.1


def test_edsr_mean_shift_and_shared_relu():
    from precompute.models.edsr import EDSR

    m = EDSR(2, 3, 8)
    np.testing.assert_allclose(m.sub_mean.bias.numpy(), [-114.444, -111.4605, -103.02], atol=1e-3)
    np.testing.assert_allclose(m.add_mean.bias.numpy(), [114.444, 111.4605, 103.02], atol=1e-3)
    assert torch.equal(m.sub_mean.weight[:, :, 0, 0], torch.eye(3))
    relus = [n for n, x in m.named_modules() if isinstance(x, torch.nn.ReLU)]
    assert relus == ["body.0.body.1"]  # one object shared by all blocks, as upstream
    calls = []
    m.body[0].body[1].register_forward_hook(lambda *a: calls.append(1))
    m(torch.rand(1, 3, 4, 4) * 255)
    assert len(calls) == 3


def test_edsr_spec_works_in_0_255():
    spec = load_model("edsr-baseline", scale=2, random_weights=True)
    assert spec.value_range == (0.0, 255.0) and spec.offset == 0.0
    img = rand_image(6, 5)
    p = spec.prepare(img)
    assert torch.equal(p.x0[0].permute(1, 2, 0), torch.from_numpy(np.array(img)).float())
    assert np.array_equal(spec.display_input(p), np.asarray(img))
    with torch.no_grad():
        out = spec.display_output(spec.module(p.x0), p)
    assert out.shape == (12, 10, 3)


def test_edsr_interpreters():
    from precompute.models.edsr import EDSR

    torch.manual_seed(0)
    x0 = torch.rand(1, 3, 8, 8, dtype=torch.float64) * 255
    spec = load_model("edsr-baseline", scale=2, random_weights=True)  # the real size
    assert_interpreter_ok(spec.module.double(), x0)
    for s in (3, 4):  # reduced width/depth, full EDSR's res_scale
        assert_interpreter_ok(EDSR(s, 2, 16, 0.1).double().eval(), x0[..., :7, :6])


# --- CycleGAN -------------------------------------------------------------------------------------

def cyclegan_table() -> dict[str, tuple]:
    t = {"model.1.weight": (64, 3, 7, 7), "model.1.bias": (64,),
         "model.4.weight": (128, 64, 3, 3), "model.4.bias": (128,),
         "model.7.weight": (256, 128, 3, 3), "model.7.bias": (256,)}
    for b in range(10, 19):
        for j in (1, 5):
            t[f"model.{b}.conv_block.{j}.weight"] = (256, 256, 3, 3)
            t[f"model.{b}.conv_block.{j}.bias"] = (256,)
    t.update({"model.19.weight": (256, 128, 3, 3), "model.19.bias": (128,),
              "model.22.weight": (128, 64, 3, 3), "model.22.bias": (64,),
              "model.26.weight": (3, 64, 7, 7), "model.26.bias": (3,)})
    return t


def old_instance_norm_stats() -> dict[str, torch.Tensor]:
    """running_* keys of the 23 IN layers, as old official files carry them."""
    layers = [(2, 64), (5, 128), (8, 256), (20, 128), (23, 64)]
    layers += [(f"{b}.conv_block.{j}", 256) for b in range(10, 19) for j in (2, 6)]
    extra = {}
    for name, c in layers:
        extra[f"model.{name}.running_mean"] = torch.full((c,), 5.0)
        extra[f"model.{name}.running_var"] = torch.full((c,), 9.0)
        extra[f"model.{name}.num_batches_tracked"] = torch.tensor(100)
    return extra


def test_cyclegan_official_file_with_running_stats_loads(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) * 0.05 for k, s in cyclegan_table().items()}
    extra = old_instance_norm_stats()
    assert len(extra) == 3 * 23
    torch.save({**sd, **extra}, tmp_path / "style_ukiyoe.pth")
    spec = load_model("cyclegan", checkpoint=tmp_path / "style_ukiyoe.pth")
    assert shapes(spec.module) == cyclegan_table()
    assert sum(p.numel() for p in spec.module.parameters()) == 11_378_179
    assert all(torch.equal(v, sd[k]) for k, v in spec.module.state_dict().items())
    norms = [m for m in spec.module.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert len(norms) == 23 and not any(m.affine or m.track_running_stats for m in norms)
    assert sum(isinstance(m, torch.nn.ReLU) for m in spec.module.modules()) == 14
    # the stale statistics are not used: train and eval mode give the same output
    x = spec.prepare(rand_image(16, 12)).x0
    with torch.no_grad():
        y_eval = spec.module(x)
        y_train = spec.module.train()(x)
    assert torch.equal(y_eval, y_train)


def test_cyclegan_interpreter_reduced():
    """Same module code (reflection pads, IN, stride-2 and transposed convs) at ngf 8, 2 blocks."""
    from precompute.models.cyclegan import ResnetGenerator

    torch.manual_seed(0)
    m = ResnetGenerator(ngf=8, n_blocks=2).double().eval()
    li = assert_interpreter_ok(m, torch.rand(1, 3, 16, 12, dtype=torch.float64) * 2 - 1)
    assert li.out_shape == (3, 16, 12)


def test_cyclegan_spec_range_and_sizes():
    spec = load_model("cyclegan", random_weights=True)
    assert (spec.value_range, spec.size_multiple, spec.scale) == ((-1.0, 1.0), 4, 1.0)
    img = rand_image(8, 12)
    p = spec.prepare(img)
    assert p.x0.min() >= -1 and p.x0.max() <= 1
    assert np.array_equal(spec.display_input(p), np.asarray(img))
    spec.check_input_size(8, 12)
    with pytest.raises(ModelError, match="multiples of 4, got 18×20 \\(crop to 16×20\\)"):
        spec.check_input_size(18, 20)
    with pytest.raises(ModelError, match="at least 8×8"):
        spec.check_input_size(4, 4)


# --- torchvision classifiers ------------------------------------------------------------------------

@functools.cache
def meta_keys(name: str) -> set[str]:
    from precompute.models.classifiers import build_module

    with torch.device("meta"):
        return set(build_module(name).state_dict())


def _params(prefixes, names=("weight", "bias")):
    return {f"{p}.{n}" for p in prefixes for n in names}


def test_classifier_key_patterns():
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    assert meta_keys("alexnet") == _params([f"features.{i}" for i in (0, 3, 6, 8, 10)]
                                           + [f"classifier.{i}" for i in (1, 4, 6)])
    convs16 = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    cls = [f"classifier.{i}" for i in (0, 3, 6)]
    assert meta_keys("vgg16") == _params([f"features.{i}" for i in convs16] + cls)
    k = meta_keys("vgg16_bn")
    assert {x for x in k if x.startswith("features.")} >= _params(["features.1"], bn)
    assert len([x for x in k if x.endswith("running_var")]) == 13
    r50 = meta_keys("resnet50")
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight",
            "layer1.0.downsample.1.weight", "layer4.2.conv3.weight", "fc.weight", "fc.bias"} <= r50
    assert not any(x.startswith("layer") and x.endswith("conv1.bias") for x in r50)
    for name, fires in (("squeezenet1_0", (3, 4, 5, 7, 8, 9, 10, 12)),
                        ("squeezenet1_1", (3, 4, 6, 7, 9, 10, 11, 12))):
        expect = _params(["features.0", "classifier.1"]) | _params(
            [f"features.{i}.{p}" for i in fires for p in ("squeeze", "expand1x1", "expand3x3")])
        assert meta_keys(name) == expect
    d = meta_keys("densenet121")
    assert {"features.denseblock1.denselayer1.norm1.weight", "features.denseblock4.denselayer16.conv2.weight",
            "features.transition3.norm.running_var", "features.norm5.weight", "classifier.weight"} <= d
    inc = meta_keys("inception_v3")
    assert {"Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.running_var", "Mixed_5b.branch1x1.conv.weight",
            "AuxLogits.conv0.conv.weight", "AuxLogits.fc.weight", "fc.weight"} <= inc
    # VGG: 8/10/13/16 convs (+ as many BNs), classifier 0/3/6
    for depth, n in ((11, 8), (13, 10), (16, 13), (19, 16)):
        for bn in ("", "_bn"):
            k = meta_keys(f"vgg{depth}{bn}")
            convs = [x for x in k if x.startswith("features.") and x.endswith(".weight")
                     and f"{x[:-7]}.running_mean" not in k]
            assert len(convs) == n and len([x for x in k if x.endswith("running_mean")]) == (n if bn else 0)
            assert {x.rsplit(".", 1)[0] for x in k if x.startswith("classifier.")} == set(cls)
    # ResNet: blocks per stage (BasicBlock 2 convs, Bottleneck 3)
    for depth, blocks, convs in ((18, (2, 2, 2, 2), 2), (34, (3, 4, 6, 3), 2), (50, (3, 4, 6, 3), 3),
                                 (101, (3, 4, 23, 3), 3), (152, (3, 8, 36, 3), 3)):
        k = meta_keys(f"resnet{depth}")
        for stage, nb in enumerate(blocks, 1):
            assert f"layer{stage}.{nb - 1}.conv{convs}.weight" in k and f"layer{stage}.{nb}.conv1.weight" not in k
        assert f"layer1.0.conv{convs + 1}.weight" not in k
    # DenseNet: layers per dense block
    for depth, layers in ((121, (6, 12, 24, 16)), (161, (6, 12, 36, 24)), (169, (6, 12, 32, 32)),
                          (201, (6, 12, 48, 32))):
        k = meta_keys(f"densenet{depth}")
        for b, n in enumerate(layers, 1):
            assert f"features.denseblock{b}.denselayer{n}.conv2.weight" in k
            assert f"features.denseblock{b}.denselayer{n + 1}.conv2.weight" not in k


def test_densenet_old_style_file_loads(tmp_path):
    """The published .pth files say denselayer1.norm.1.weight; loading by hand renames them."""
    import re

    from precompute.models.classifiers import build_module

    torch.manual_seed(0)
    sd = build_module("densenet121").state_dict()
    old = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue  # 2017 files have none
        old[re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k)] = v
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, tmp_path / "densenet121-a639ec97.pth")
    spec = load_model("torchvision:densenet121", checkpoint=tmp_path / "densenet121-a639ec97.pth")
    got = spec.module.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    # built on the meta device and filled from the file: nothing may stay on meta
    assert all(t.device.type == "cpu" for t in got.values())
    assert got["features.norm5.num_batches_tracked"].item() == 0
    with torch.no_grad():
        assert torch.isfinite(spec.module(torch.rand(1, 3, 32, 32))).all()


def test_inception_file_with_aux_logits_loads_and_drops_them(tmp_path):
    from precompute.models.classifiers import build_module

    sd = build_module("inception_v3").state_dict()
    assert any(k.startswith("AuxLogits.") for k in sd)
    torch.save(sd, tmp_path / "inception_v3_google-0cc3c7bd.pth")
    spec = load_model("torchvision:inception_v3", checkpoint=tmp_path / "inception_v3_google-0cc3c7bd.pth")
    assert spec.module.AuxLogits is None and spec.module.transform_input
    assert spec.min_size == 75
    img = rand_image(300, 320)
    p = spec.prepare(img)
    assert p.x0.shape == (1, 3, 299, 299) and p.extra["imagenet_resized"]
    # float32, three passes: requirement (3) and F·x0 + r = f(x0) on the smallest input
    x0 = p.x0[..., :75, :75]
    li = LinearInterpreter(spec.module, x0)
    y = li.output
    scale = y.abs().max()
    assert ((li.affine(x0)[0] - y).abs().max() / scale) < 1e-5
    assert ((li.apply(x0)[0] + li.residual - y).abs().max() / scale) < 1e-4


def test_hub_cache_lookup_and_missing_weights_message(tmp_path, monkeypatch):
    import torchvision.models as tvm

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ModelError) as e:
        load_model("torchvision:resnet50")
    msg = str(e.value)
    assert "resnet50-0676ba61.pth" in msg and "IMAGENET1K_V1" in msg  # not DEFAULT (= V2)
    assert str(tmp_path / "checkpoints") in msg and "https://download.pytorch.org/models/" in msg
    with pytest.raises(ModelError, match="resnet50-11ad3fa6.pth"):
        load_model("torchvision:resnet50", weights="IMAGENET1K_V2")
    with pytest.raises(ModelError, match="no weights 'IMAGENET1K_V9'; choose one of IMAGENET1K_V1, IMAGENET1K_V2"):
        load_model("torchvision:resnet50", weights="IMAGENET1K_V9")
    torch.manual_seed(0)
    sd = tvm.resnet18().state_dict()
    (tmp_path / "checkpoints").mkdir()
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    torch.save(half, tmp_path / "checkpoints" / "resnet18-5c106cde.pth")  # the 2019-era name
    spec = load_model("torchvision:resnet18")
    assert spec.module.fc.weight.dtype == torch.float32
    sd = {k: v.float() if v.is_floating_point() else v for k, v in half.items()}
    assert spec.checkpoint.endswith("resnet18-5c106cde.pth") and spec.options["weights"] == "IMAGENET1K_V1"
    assert torch.equal(spec.module.fc.weight, sd["fc.weight"])


def test_classifier_spec_labels_and_preprocessing():
    from torchvision.models import ResNet18_Weights

    spec = load_model("torchvision:resnet18", random_weights=True)
    assert (spec.kind, spec.scale, spec.in_channels) == ("vector", None, 3)
    assert len(spec.labels) == 1000 and spec.labels[0] == "tench" and spec.labels[207] == "golden retriever"
    small = rand_image(64, 48)
    p = spec.prepare(small)  # auto: already smaller than the crop, kept as is
    assert p.x0.shape == (1, 3, 64, 48) and not p.extra["imagenet_resized"]
    assert np.array_equal(spec.display_input(p), np.asarray(small))
    big = rand_image(300, 260, seed=1)
    p = spec.prepare(big)
    ref = ResNet18_Weights.IMAGENET1K_V1.transforms()(big)
    assert torch.allclose(p.x0[0], ref, atol=1e-6)
    assert load_model("torchvision:resnet18", random_weights=True,
                      preprocess="imagenet").prepare(small).x0.shape == (1, 3, 224, 224)
    assert load_model("torchvision:resnet18", random_weights=True,
                      preprocess="none").prepare(big).x0.shape == (1, 3, 300, 260)
    with pytest.raises(ModelError, match="preprocess must be one of"):
        load_model("torchvision:resnet18", random_weights=True, preprocess="crop")
    with pytest.raises(ModelError, match="no image output"):
        spec.display_output(torch.zeros(1, 1000), p)
    with pytest.raises(ModelError, match="at least 63×63"):
        load_model("torchvision:alexnet", random_weights=True).check_input_size(32, 64)


@pytest.mark.parametrize("name, size", [("resnet18", 16), ("squeezenet1_1", 19)])
def test_classifier_interpreters(name, size):
    from precompute.models.classifiers import build_module

    torch.manual_seed(0)
    m = build_module(name).double().eval()
    assert_interpreter_ok(m, torch.randn(1, 3, size, size, dtype=torch.float64))


def test_densenet_interpreter_reduced():
    """torchvision's DenseNet class (functional ReLU, cat, adaptive pool) at reduced size."""
    from torchvision.models.densenet import DenseNet

    torch.manual_seed(0)
    m = DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2,
                 num_classes=10)
    for mod in m.modules():  # non-trivial frozen statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    assert_interpreter_ok(m.double().eval(), torch.randn(1, 3, 32, 32, dtype=torch.float64))


# --- python: builders ------------------------------------------------------------------------------

BUILDERS = '''
import torch
from torch import nn
from precompute.models import ModelSpec

class Up(nn.Module):
    def forward(self, x):
        return torch.relu(nn.functional.interpolate(x, scale_factor=2, mode="nearest") - 0.3)

def build():
    return Up()

def build_scaled(scale=1, checkpoint=None):
    return nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Upsample(scale_factor=scale))

def classifier():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))

def spec():
    return ModelSpec(module=nn.Conv2d(1, 1, 3, padding=1).train(), model_id="x", in_channels=1,
                     value_range=(0.0, 255.0))

def not_a_model():
    return 3

def broken():
    raise RuntimeError("boom")
'''


@pytest.fixture
def builders(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.py").write_text(BUILDERS)
    pkg = tmp_path / "lsusr_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(BUILDERS)
    return tmp_path


def test_python_file_builder(builders):
    spec = load_model("python:sub/mine.py:build", base_dir=builders)
    assert spec.model_id == f"python:{builders / 'sub' / 'mine.py'}:build"
    assert (spec.kind, spec.scale, spec.in_channels, spec.value_range) == ("image", 2.0, 3, (0.0, 1.0))
    x0 = spec.prepare(rand_image(5, 6)).x0
    assert x0.shape == (1, 3, 5, 6) and 0 <= x0.min() and x0.max() <= 1
    assert_interpreter_ok(spec.module.double(), x0.double())
    assert load_model(f"python:{builders / 'sub' / 'mine.py'}:build_scaled", scale=3).scale == 3.0


def test_python_module_builder_and_spec_form(builders, monkeypatch):
    monkeypatch.syspath_prepend(str(builders))
    spec = load_model("python:lsusr_pkg.nets:classifier")
    assert (spec.kind, spec.scale) == ("vector", None)
    spec = load_model("python:lsusr_pkg.nets:spec")
    assert spec.model_id == "python:lsusr_pkg.nets:spec" and spec.in_channels == 1
    assert not spec.module.training and spec.value_range == (0.0, 255.0)


@pytest.mark.parametrize("arch, kw, msg", [
    ("python:sub/missing.py:build", {}, "model file not found"),
    ("python:sub/mine.py:nothere", {}, "has no function 'nothere'"),
    ("python:sub/mine.py:not_a_model", {}, "must return an nn.Module or a ModelSpec, got int"),
    ("python:sub/mine.py:broken", {}, "broken failed: RuntimeError: boom"),
    ("python:sub/mine.py:build", {"scale": 2}, "does not take scale"),
    ("python:no_such_pkg_xyz.mod:build", {}, "cannot import module"),
])
def test_python_builder_errors(builders, arch, kw, msg):
    with pytest.raises(ModelError, match=msg):
        load_model(arch, base_dir=builders, **kw)


# --- example configs --------------------------------------------------------------------------------

@pytest.mark.parametrize("config", ["pixelshuffle.yaml", "bicubic.yaml", "bicubic-x3.yaml",
                                    "custom.yaml"])
def test_runnable_example_configs_load(config):
    from precompute.config import load_config

    r = load_config(EXAMPLES / config)
    m = r.config.model
    spec = load_model(r.arch, scale=m.scale, checkpoint=r.checkpoint, weights=m.weights,
                      base_dir=r.config_path.parent)
    img = Image.open(r.images[0])
    if r.config.crop:
        t, l, h, w = r.config.crop
        img = img.crop((l, t, l + w, t + h))
    p = spec.prepare(img)
    assert isinstance(p, Prepared)
    spec.check_input_size(*p.x0.shape[-2:])
    with torch.no_grad():
        y = spec.module(p.x0)
    assert y.shape[-2:] == tuple(int(s * spec.scale) for s in p.x0.shape[-2:])
    if config == "pixelshuffle.yaml":
        assert p.x0.shape == (1, 1, 32, 32)


@pytest.mark.parametrize("config, arch, file", [
    ("edsr.yaml", "edsr", "edsr_x4-4f62e9ef.pt"),
    ("cyclegan-ukiyoe.yaml", "cyclegan", "style_ukiyoe.pth"),
])
def test_examples_name_the_published_checkpoints(config, arch, file):
    import yaml

    from precompute.config import RunConfig

    raw = yaml.safe_load((EXAMPLES / config).read_text())
    cfg = RunConfig.model_validate(raw)
    assert cfg.model.arch == arch and Path(cfg.model.checkpoint).name == file
    assert (EXAMPLES / cfg.image).is_file()
    text = (EXAMPLES / config).read_text()
    assert "download" in text and file in text


def test_custom_example_both_forms():
    """examples/custom_model.py: build -> nn.Module (default RGB [0, 1]); build_gray -> ModelSpec."""
    img = Image.open(EXAMPLES / "images" / "astronaut-32.png")
    spec = load_model("python:custom_model.py:build", scale=2, base_dir=EXAMPLES)
    assert (spec.in_channels, spec.scale, spec.value_range) == (3, 2.0, (0.0, 1.0))
    gray = load_model("python:custom_model.py:build_gray", scale=3, base_dir=EXAMPLES)
    assert gray.model_id == f"python:{EXAMPLES / 'custom_model.py'}:build_gray"
    assert (gray.in_channels, gray.scale, gray.value_range) == (1, 3.0, (0.0, 255.0))
    p = gray.prepare(img)
    assert p.x0.shape == (1, 1, 32, 32) and p.x0.max() > 1
    x0 = p.x0[..., :10, :10].double()
    li = assert_interpreter_ok(gray.module.double(), x0)
    assert li.out_shape == (1, 30, 30)
    assert gray.display_output(li.output[None], p).shape == (30, 30, 3)


def _fast_random(name: str) -> torch.nn.Module:
    """A Table-4 module with random weights, without torchvision's slow initialisation."""
    from precompute.models.classifiers import build_module

    with torch.device("meta"):
        m = build_module(name)
    m = m.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, t in m.state_dict().items():
            if not t.is_floating_point():
                t.zero_()
            elif key.endswith("running_var"):
                t.uniform_(0.5, 2.0, generator=g)
            else:
                fan_in = t[0].numel() if t.dim() > 1 else 1
                t.normal_(0.0, (2.0 / fan_in) ** 0.5 if t.dim() > 1 else 0.1, generator=g)
    return m.eval()


@pytest.mark.parametrize("name, size", [("alexnet", 63), ("vgg11_bn", 32)])
def test_alexnet_vgg_interpreters(name, size):
    """Overlapping max-pools, BN, dropout (eval), adaptive average pooling up to 6×6 / 7×7."""
    m = _fast_random(name).double()
    x0 = torch.randn(1, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert_interpreter_ok(m, x0)
