"""Checkpoint safety and error messages: every bad file gets one clear ModelError.

Files are built here from key tables written from docs (not from the modules under test) and saved
with torch.save; nothing is downloaded.
"""

from __future__ import annotations

import io
import os
import pickle
import re

import pytest
import torch
from torch import nn

from precompute.models import ModelError, load_model
from precompute.models.checkpoint import MAX_LISTED, read_state_dict


def edsr_table(F: int, R: int, scale: int) -> dict[str, tuple]:
    """EDSR-PyTorch key -> shape (checkpoints.md §1)."""
    t = {"sub_mean.weight": (3, 3, 1, 1), "sub_mean.bias": (3,),
         "add_mean.weight": (3, 3, 1, 1), "add_mean.bias": (3,),
         "head.0.weight": (F, 3, 3, 3), "head.0.bias": (F,)}
    for i in range(R):
        for j in (0, 2):
            t[f"body.{i}.body.{j}.weight"] = (F, F, 3, 3)
            t[f"body.{i}.body.{j}.bias"] = (F,)
    t[f"body.{R}.weight"], t[f"body.{R}.bias"] = (F, F, 3, 3), (F,)
    first = 9 * F if scale == 3 else 4 * F
    t["tail.0.0.weight"], t["tail.0.0.bias"] = (first, F, 3, 3), (first,)
    if scale == 4:
        t["tail.0.2.weight"], t["tail.0.2.bias"] = (4 * F, F, 3, 3), (4 * F,)
    t["tail.1.weight"], t["tail.1.bias"] = (3, F, 3, 3), (3,)
    return t


def random_sd(table: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.01 for k, s in table.items()}


def save(tmp_path, name, obj) -> str:
    p = tmp_path / name
    torch.save(obj, p)
    return str(p)


# --- unreadable files ---------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match=r"checkpoint file not found: .*nope\.pt"):
        load_model("pixelshuffle", checkpoint=tmp_path / "nope.pt")


def test_corrupt_bytes(tmp_path):
    p = tmp_path / "corrupt.pt"
    p.write_bytes(b"PK\x03\x04" + os.urandom(200))
    with pytest.raises(ModelError, match=r"corrupt\.pt: the file is corrupt or not a PyTorch checkpoint"):
        load_model("edsr-baseline", scale=2, checkpoint=p)


def test_truncated_real_checkpoint(tmp_path):
    good = save(tmp_path, "ps.pt", random_sd({"conv1.weight": (64, 1, 5, 5)}))
    data = open(good, "rb").read()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="corrupt or not a PyTorch checkpoint"):
        load_model("pixelshuffle", checkpoint=bad)


def test_pickled_whole_module_is_refused_with_conversion_hint(tmp_path):
    """The PyTorch SR example saves whole modules; they are refused, never unpickled."""
    from precompute.models.pixelshuffle import PixelShuffleSR

    p = save(tmp_path, "model_epoch_30.pth", PixelShuffleSR(3))
    with pytest.raises(ModelError) as e:
        load_model("pixelshuffle", checkpoint=p)
    msg = str(e.value)
    assert "pickled Python objects" in msg and "PixelShuffleSR" in msg
    assert "state_dict" in msg and "examples/README.md" in msg


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # would create a file if unpickled


def test_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Evil(str(marker))}, p)
    with pytest.raises(ModelError, match="pickled Python objects"):
        load_model("pixelshuffle", checkpoint=p)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_file_is_refused(tmp_path):
    p = tmp_path / "plain.pkl"
    p.write_bytes(pickle.dumps({"conv1.weight": [1, 2, 3]}))
    with pytest.raises(ModelError):
        load_model("pixelshuffle", checkpoint=p)


def test_non_tensor_values_are_refused(tmp_path):
    p = save(tmp_path, "opt.pt", {"epoch": 3, "conv1.weight": torch.zeros(2)})
    with pytest.raises(ModelError, match=r'not a state_dict: entries "epoch" are not tensors'):
        load_model("pixelshuffle", checkpoint=p)


def test_wrapped_and_dataparallel_state_dicts_are_accepted(tmp_path):
    from precompute.models.pixelshuffle import PixelShuffleSR

    sd = PixelShuffleSR(3).state_dict()
    p1 = save(tmp_path, "wrapped.pt", {"state_dict": sd, "epoch": torch.tensor(7)})
    p2 = save(tmp_path, "dp.pt", {f"module.{k}": v for k, v in sd.items()})
    for p in (p1, p2):
        spec = load_model("pixelshuffle", checkpoint=p)
        for k, v in spec.module.state_dict().items():
            assert torch.equal(v, sd[k])


# --- wrong architecture / scale -------------------------------------------------------------------

def test_edsr_wrong_scale_is_an_error(tmp_path):
    p = save(tmp_path, "edsr_baseline_x2.pt", random_sd(edsr_table(64, 16, 2)))
    with pytest.raises(ModelError, match=r"is a ×2 checkpoint but scale 4 was asked; set scale: 2"):
        load_model("edsr-baseline", scale=4, checkpoint=p)
    # x4 files differ from x2 by tail.0.2 only; x3 by the shape of tail.0.0
    p3 = save(tmp_path, "edsr_baseline_x3.pt", random_sd(edsr_table(64, 16, 3)))
    with pytest.raises(ModelError, match=r"×3 checkpoint but scale 2"):
        load_model("edsr-baseline", scale=2, checkpoint=p3)


def test_edsr_baseline_file_as_full_edsr_names_the_right_arch(tmp_path):
    p = save(tmp_path, "edsr_baseline_x4.pt", random_sd(edsr_table(64, 16, 4)))
    with pytest.raises(ModelError) as e:
        load_model("edsr", scale=4, checkpoint=p)
    msg = str(e.value)
    assert "EDSR-baseline ×4" in msg and "16 blocks, 64 features" in msg
    assert "use arch: edsr-baseline" in msg


def test_edsr_strict_load_lists_missing_keys(tmp_path):
    sd = random_sd(edsr_table(64, 16, 2))
    del sd["add_mean.weight"], sd["add_mean.bias"], sd["body.3.body.2.bias"]
    sd["tail.1.weight"] = torch.zeros(3, 64, 5, 5)
    p = save(tmp_path, "damaged.pt", sd)
    with pytest.raises(ModelError) as e:
        load_model("edsr-baseline", scale=2, checkpoint=p)
    msg = str(e.value)
    assert msg.startswith(f"{p} does not match EDSR-baseline ×2:")
    assert 'missing keys (3): "body.3.body.2.bias", "add_mean.weight", "add_mean.bias"' in msg
    assert "tail.1.weight: file [3, 64, 5, 5] vs model [3, 64, 3, 3]" in msg


def test_wrong_architecture_truncates_long_key_lists(tmp_path):
    """A CycleGAN generator given to the PixelShuffle loader: clear, bounded message."""
    from precompute.models.cyclegan import ResnetGenerator

    p = save(tmp_path, "style_ukiyoe.pth", ResnetGenerator(ngf=4).state_dict())
    with pytest.raises(ModelError, match="not a PixelShuffle checkpoint"):
        load_model("pixelshuffle", checkpoint=p)
    with pytest.raises(ModelError) as e:
        load_model("pixelshuffle", scale=3, checkpoint=p)
    msg = str(e.value)
    assert "does not match pixelshuffle ×3" in msg
    assert 'missing keys (8): "conv1.weight"' in msg
    m = re.search(r"unexpected keys \((\d+)\): (.*)", msg)
    n = int(m.group(1))
    assert n == 48 and f"… and {n - MAX_LISTED} more" in m.group(2)
    assert m.group(2).count('"') == 2 * MAX_LISTED
    assert len(msg) < 1500


def test_pixelshuffle_scale_mismatch(tmp_path):
    from precompute.models.pixelshuffle import PixelShuffleSR

    p = save(tmp_path, "ps2.pt", PixelShuffleSR(2).state_dict())
    with pytest.raises(ModelError, match=r"×2 PixelShuffle checkpoint .* but scale 3 was asked"):
        load_model("pixelshuffle", scale=3, checkpoint=p)
    assert load_model("pixelshuffle", checkpoint=p).scale == 2.0  # inferred


def test_cyclegan_with_dropout_and_unet_files(tmp_path):
    sd = {f"model.{b}.conv_block.{j}.{w}": torch.zeros(1) for b in range(10, 19)
          for j in (1, 6) for w in ("weight", "bias")}
    p = save(tmp_path, "dropout.pth", sd)
    with pytest.raises(ModelError, match="trained with dropout") as e:
        load_model("cyclegan", checkpoint=p)
    assert '"model.10.conv_block.5.weight"' in str(e.value)
    p = save(tmp_path, "unet.pth", {"model.model.0.weight": torch.zeros(64, 3, 4, 4)})
    with pytest.raises(ModelError, match="U-Net"):
        load_model("cyclegan", checkpoint=p)


def test_classifier_wrong_file(tmp_path):
    import torchvision.models as tvm

    p = save(tmp_path, "resnet18.pth", tvm.squeezenet1_1(weights=None).state_dict())
    with pytest.raises(ModelError, match=r"does not match torchvision resnet18: 102 missing keys, "
                       r"52 unexpected keys \(--verbose lists them\)\n  missing keys \(102\)"):
        load_model("torchvision:resnet18", checkpoint=p)


def test_no_checkpoint_messages_say_what_to_supply():
    with pytest.raises(ModelError, match=r"edsr_x4-4f62e9ef\.pt from https://cv\.snu\.ac\.kr"):
        load_model("edsr", scale=4)
    with pytest.raises(ModelError, match=r"edsr_baseline_x3-abf2a44e\.pt"):
        load_model("edsr-baseline", scale=3)
    with pytest.raises(ModelError, match=r"style_ukiyoe\.pth from http://efrosgans"):
        load_model("cyclegan")
    with pytest.raises(ModelError, match=r"examples/weights/pixelshuffle_x3\.pt"):
        load_model("pixelshuffle")


def test_read_state_dict_returns_tensors_only(tmp_path):
    buf = io.BytesIO()
    torch.save({"a": torch.ones(2)}, buf)
    p = tmp_path / "a.pt"
    p.write_bytes(buf.getvalue())
    assert set(read_state_dict(p)) == {"a"}
    with pytest.raises(ModelError, match="holds a list"):
        read_state_dict(save(tmp_path, "l.pt", [torch.ones(1)]))


def test_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ModelError, match="not a file"):
        load_model("pixelshuffle", checkpoint=tmp_path)


def test_safetensors_without_package_or_bad_file(tmp_path):
    p = tmp_path / "w.safetensors"
    p.write_bytes(b"\x00" * 16)
    with pytest.raises(ModelError, match="safetensors"):
        load_model("pixelshuffle", checkpoint=p)


def test_weights_only_is_what_reads_files(monkeypatch, tmp_path):
    """Every torch.load in the zoo passes weights_only=True and map_location='cpu'."""
    seen = []
    real = torch.load

    def spy(*a, **k):
        seen.append(k)
        return real(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    from precompute.models.pixelshuffle import PixelShuffleSR

    p = save(tmp_path, "ps.pt", PixelShuffleSR(3).state_dict())
    load_model("pixelshuffle", checkpoint=p)
    assert seen and all(k.get("weights_only") is True and k.get("map_location") == "cpu" for k in seen)


def test_modules_are_plain_nn_modules():
    from precompute.models.edsr import EDSR

    assert isinstance(EDSR(2, 1, 4), nn.Module)
