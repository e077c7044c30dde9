"""The model factory, two-phase freezing, and pretrained-weight resolution."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from maskjob import vocab
from maskjob.cli import main
from maskjob.errors import MaskjobError
from maskjob.imageio import sha256_file
from maskjob.ml.models import (
    ARCH_DEFAULTS,
    ARCHS,
    create_model,
    install_weights,
    resolve_weights,
    set_trainable,
    weights_cache_dir,
)
from tests.fixtures.paths import REPO_TORCH_HOME

MOBILENET_FILE = "mobilenet_v2-b0353104.pth"


def test_factory_registry_is_the_shared_architecture_list():
    assert tuple(ARCHS) == vocab.ARCHS
    assert {a for a, spec in ARCHS.items() if spec.weights is not None} == set(vocab.TRANSFER_ARCHS)
    assert {a for a, spec in ARCHS.items() if spec.weights is None} == set(vocab.CUSTOM_ARCHS)
    from maskjob.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    arch_action = next(a for a in train._actions if a.dest == "arch")
    assert tuple(arch_action.choices) == vocab.ARCHS
    assert ARCH_DEFAULTS["cnn"]["image_size"] == 64
    assert ARCH_DEFAULTS["cnn"]["epochs"] > ARCH_DEFAULTS["mobilenet_v2"]["epochs"]
    assert all(d["image_size"] <= 112 for d in ARCH_DEFAULTS.values())


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_arch_gives_three_logits(arch):
    model = create_model(arch, pretrained=False).eval()
    size = ARCH_DEFAULTS[arch]["image_size"]
    with torch.inference_mode():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 3)
    assert model.pretrained_weights is None


def test_unknown_arch_lists_choices():
    with pytest.raises(MaskjobError, match="choose one of"):
        create_model("vgg16")


def test_cnn_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = create_model("cnn").train()
    x = torch.randn(12, 3, 32, 32)
    y = torch.arange(12) % 3
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1
    model.eval()
    assert torch.equal(model(x).argmax(1), y)


def test_two_phase_freezing_for_mobilenet():
    model = create_model("mobilenet_v2", pretrained=False)
    set_trainable(model, "mobilenet_v2", "head")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.1.weight", "classifier.1.bias"}
    set_trainable(model, "mobilenet_v2", "last_stage")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "features.18.0.weight" in trainable and "features.14.conv.0.0.weight" in trainable
    assert "features.13.conv.0.0.weight" not in trainable and "features.0.0.weight" not in trainable
    set_trainable(model, "mobilenet_v2", "all")
    assert all(p.requires_grad for p in model.parameters())


def test_real_mobilenet_weights_from_repo_cache():
    weights = resolve_weights("mobilenet_v2", torch_home=REPO_TORCH_HOME, allow_download=False)
    assert weights.source == "cache"
    assert weights.sha256.startswith("b0353104")
    model = create_model("mobilenet_v2", torch_home=REPO_TORCH_HOME, allow_download=False)
    reference = torch.load(weights.path, map_location="cpu", weights_only=True)
    assert torch.equal(model.features[0][0].weight, reference["features.0.0.weight"])
    assert model.classifier[1].out_features == 3
    assert model.pretrained_weights == {"file": MOBILENET_FILE, "sha256": weights.sha256, "source": "cache"}


@dataclasses.dataclass(frozen=True)
class _FakeWeights:
    url: str


@pytest.fixture
def fake_resnet18(tmp_path, monkeypatch) -> Path:
    """resnet18 ImageNet weights stand-in: a random resnet18 state dict saved under a
    torchvision-style name that embeds its real sha256 prefix; the registry points at it."""
    torch.manual_seed(1)
    source = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), source)
    named = tmp_path / "files" / f"resnet18-{sha256_file(source)[:8]}.pth"
    named.parent.mkdir()
    shutil.move(source, named)
    spec = dataclasses.replace(ARCHS["resnet18"], weights=_FakeWeights(f"https://example.invalid/{named.name}"))
    monkeypatch.setitem(ARCHS, "resnet18", spec)
    return named


def test_weights_cache_hit(fake_resnet18, tmp_path):
    home = tmp_path / "torch"
    cached = weights_cache_dir(home) / fake_resnet18.name
    cached.parent.mkdir(parents=True)
    shutil.copy(fake_resnet18, cached)
    model = create_model("resnet18", torch_home=home, allow_download=False)
    reference = torch.load(cached, weights_only=True)
    assert torch.equal(model.conv1.weight, reference["conv1.weight"])
    assert model.pretrained_weights["source"] == "cache"
    assert model.fc.out_features == 3


def test_explicit_weights_file_wins_over_cache(fake_resnet18, tmp_path):
    home = tmp_path / "torch"
    cached = weights_cache_dir(home) / fake_resnet18.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"tampered cache that must not be read")
    weights = resolve_weights("resnet18", weights_path=fake_resnet18, torch_home=home, allow_download=False)
    assert weights.source == "explicit" and weights.path == fake_resnet18


def test_missing_weights_fail_with_options(fake_resnet18, tmp_path, monkeypatch):
    import maskjob.ml.models as models

    def offline(url, dest, timeout_s):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(models, "_download", offline)
    home = tmp_path / "empty-torch"
    with pytest.raises(MaskjobError) as info:
        create_model("resnet18", torch_home=home)
    message = str(info.value)
    assert fake_resnet18.name in message
    assert str(weights_cache_dir(home)) in message
    assert "maskjob weights install resnet18 --from FILE" in message and "--weights PATH" in message
    assert "Network is unreachable" in message


def test_download_goes_into_cache_and_is_verified(fake_resnet18, tmp_path, monkeypatch):
    import maskjob.ml.models as models

    monkeypatch.setattr(models, "_download", lambda url, dest, timeout_s: shutil.copy(fake_resnet18, dest))
    home = tmp_path / "torch"
    weights = resolve_weights("resnet18", torch_home=home)
    assert weights.source == "download"
    assert weights.path == weights_cache_dir(home) / fake_resnet18.name and weights.path.is_file()


def test_wrong_sha_is_rejected(fake_resnet18, tmp_path):
    home = tmp_path / "torch"
    cached = weights_cache_dir(home) / fake_resnet18.name
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), cached)
    with pytest.raises(MaskjobError, match="does not start with"):
        create_model("resnet18", torch_home=home, allow_download=False)
    wrong = tmp_path / "wrong.pth"
    shutil.copy(cached, wrong)
    with pytest.raises(MaskjobError, match="wrong, corrupt or tampered"):
        resolve_weights("resnet18", weights_path=wrong, torch_home=home)
    with pytest.raises(MaskjobError, match="no such file"):
        resolve_weights("resnet18", weights_path=tmp_path / "nope.pth", torch_home=home)


def test_install_weights_copies_verified_file(tmp_path):
    home = tmp_path / "torch"
    source = weights_cache_dir(REPO_TORCH_HOME) / MOBILENET_FILE
    dest = install_weights("mobilenet_v2", home, source)
    assert dest == weights_cache_dir(home) / MOBILENET_FILE
    assert sha256_file(dest) == sha256_file(source)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"x" * 100)
    with pytest.raises(MaskjobError):
        install_weights("mobilenet_v2", tmp_path / "other", bad)
    assert not (weights_cache_dir(tmp_path / "other") / MOBILENET_FILE).exists()


def test_weights_install_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MASKJOB_TORCH_HOME", str(tmp_path / "torch"))
    source = weights_cache_dir(REPO_TORCH_HOME) / MOBILENET_FILE
    assert main(["--data-dir", str(tmp_path), "weights", "install", "mobilenet_v2", "--from", str(source)]) == 0
    assert (weights_cache_dir(tmp_path / "torch") / MOBILENET_FILE).is_file()
    assert main(["--data-dir", str(tmp_path), "weights", "install", "resnet50"]) == 2
    err = capsys.readouterr().err
    assert "no offline source" in err and "--from FILE" in err
