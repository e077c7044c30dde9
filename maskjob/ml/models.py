"""The model factory: one registry keyed by architecture name, plus pretrained-weight
resolution (explicit file > torch hub cache > download) with sha256 checks.

Example:
    >>> model = create_model("cnn", pretrained=False)
    >>> ARCH_DEFAULTS["cnn"]["image_size"]
    64
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision
from torch import nn
from torchvision.models import MobileNet_V2_Weights, ResNet18_Weights, ResNet50_Weights, WeightsEnum

from maskjob import CLASSES
from maskjob.errors import MaskjobError
from maskjob.imageio import sha256_file

__all__ = [
    "ARCHS",
    "ARCH_DEFAULTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArchSpec",
    "MaskCNN",
    "PretrainedWeights",
    "create_model",
    "install_weights",
    "resolve_weights",
    "set_trainable",
    "weights_cache_dir",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
DOWNLOAD_TIMEOUT_S = 30.0
OFFLINE_ASSETS = {"mobilenet_v2": "mobilenet_v2_imagenet"}
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.")


class MaskCNN(nn.Module):
    """A small CNN for face crops: a stride-2 stem, four conv blocks (conv-BN-ReLU x2,
    max-pool), a 2x2 average pool that keeps coarse layout (a mask's top edge above or
    below the nose is the cue), dropout and a linear head. About 1.2 M parameters.

    Args:
        num_classes: output logits.
        widths: channels of the four blocks.
        dropout: dropout before the head.
    """

    def __init__(self, num_classes: int = len(CLASSES), widths: tuple[int, ...] = (32, 64, 128, 256), dropout: float = 0.3):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        in_ch = widths[0]
        for width in widths:
            layers += [
                nn.Conv2d(in_ch, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_ch * 4, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def _cnn() -> nn.Module:
    return MaskCNN()


def _resnet(builder: Callable[..., nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return builder(weights=None)

    return build


def _replace_resnet_head(model: nn.Module) -> None:
    model.fc = nn.Linear(model.fc.in_features, len(CLASSES))


def _replace_mobilenet_head(model: nn.Module) -> None:
    model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, len(CLASSES))


@dataclass(frozen=True)
class ArchSpec:
    """One registry entry.

    ``epochs`` is the architecture's epoch budget (capped by ``settings.max_epochs``): the
    from-scratch CNN needs about three times the epochs of a pretrained backbone. ``head`` and ``last_stage`` are parameter-name prefixes: transfer models train the head
    with the backbone frozen first, then also ``last_stage`` at a lower learning rate.
    """

    build: Callable[[], nn.Module]
    image_size: int
    epochs: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: WeightsEnum | None = None
    replace_head: Callable[[nn.Module], None] | None = None
    head: tuple[str, ...] = ()
    last_stage: tuple[str, ...] = ()

    @property
    def transfer(self) -> bool:
        return self.weights is not None


def _resnet_spec(factory: Callable[..., nn.Module], weights: Any) -> ArchSpec:
    return ArchSpec(
        build=_resnet(factory),
        image_size=96,
        epochs=8,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights=weights,
        replace_head=_replace_resnet_head,
        head=("fc.",),
        last_stage=("layer4.",),
    )


ARCHS: dict[str, ArchSpec] = {
    "cnn": ArchSpec(build=_cnn, image_size=64, epochs=24, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "resnet18": _resnet_spec(torchvision.models.resnet18, ResNet18_Weights.IMAGENET1K_V1),
    "resnet50": _resnet_spec(torchvision.models.resnet50, ResNet50_Weights.IMAGENET1K_V1),
    "mobilenet_v2": ArchSpec(
        build=lambda: torchvision.models.mobilenet_v2(weights=None),
        image_size=96,
        epochs=8,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights=MobileNet_V2_Weights.IMAGENET1K_V1,
        replace_head=_replace_mobilenet_head,
        head=("classifier.",),
        last_stage=tuple(f"features.{i}." for i in range(14, 19)),
    ),
}

ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    name: {"image_size": spec.image_size, "epochs": spec.epochs, "mean": spec.mean, "std": spec.std}
    for name, spec in ARCHS.items()
}


@dataclass(frozen=True)
class PretrainedWeights:
    """A verified pretrained-weights file."""

    path: Path
    file_name: str
    sha256: str
    source: str

    def to_meta(self) -> dict[str, str]:
        return {"file": self.file_name, "sha256": self.sha256, "source": self.source}


def _spec(arch: str) -> ArchSpec:
    try:
        return ARCHS[arch]
    except KeyError:
        raise MaskjobError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHS)}") from None


def weights_cache_dir(torch_home: str | Path) -> Path:
    """The torch hub checkpoint cache under ``torch_home``, as torchvision uses it."""
    return Path(torch_home) / "hub" / "checkpoints"


def _expected_file(spec: ArchSpec) -> tuple[str, str]:
    assert spec.weights is not None
    file_name = spec.weights.url.rsplit("/", 1)[-1]
    match = _HASH_IN_NAME.search(file_name)
    if match is None:
        raise MaskjobError(f"cannot verify {file_name}: torchvision's file name has no hash prefix")
    return file_name, match.group(1)


def _verify(path: Path, file_name: str, prefix: str, what: str, fix: str) -> str:
    digest = sha256_file(path)
    if not digest.startswith(prefix):
        raise MaskjobError(
            f"{what} {path} is not the expected {file_name}: its sha256 {digest[:16]}... does not start "
            f"with {prefix} (wrong, corrupt or tampered file). {fix}"
        )
    return digest


def _missing_message(arch: str, file_name: str, cache_path: Path, reason: str) -> str:
    return (
        f"no pretrained weights for {arch}: {file_name} is not in the cache {cache_path} and {reason}. "
        f"Either run `maskjob weights install {arch} --from FILE` with a copy of {file_name}, "
        f"or pass `--weights PATH` to `maskjob train`. Training never falls back to random weights."
    )


def _download(url: str, dest: Path, timeout_s: float) -> None:
    with tempfile.NamedTemporaryFile(dir=dest.parent, suffix=".part", delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                shutil.copyfileobj(response, tmp)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
    tmp_path.replace(dest)


def resolve_weights(
    arch: str,
    weights_path: str | Path | None = None,
    torch_home: str | Path | None = None,
    allow_download: bool = True,
) -> PretrainedWeights:
    """Find and verify torchvision's ImageNet weights for a transfer architecture.

    Order: ``weights_path`` > ``<torch_home>/hub/checkpoints/<file>`` > download into that
    cache. The sha256 must start with the hash prefix in torchvision's file name.

    Args:
        arch: a transfer architecture (``resnet18``, ``resnet50``, ``mobilenet_v2``).
        weights_path: an explicit weights file.
        torch_home: the torch home (``settings.torch_home``); default ``torch.hub.get_dir()``'s parent.
        allow_download: try the download when the file is not cached.

    Returns:
        The verified file.

    Raises:
        MaskjobError: missing, unverifiable or wrong weights, with the options to fix it.
    """
    spec = _spec(arch)
    if not spec.transfer:
        raise MaskjobError(f"{arch} is trained from scratch and has no pretrained weights")
    file_name, prefix = _expected_file(spec)
    home = Path(torch_home) if torch_home is not None else Path(torch.hub.get_dir()).parent
    cache_path = weights_cache_dir(home) / file_name
    fix = f"Use the original {file_name} from {spec.weights.url}."
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise MaskjobError(f"--weights {path}: no such file. Pass the path of a copy of {file_name}.")
        digest = _verify(path, file_name, prefix, "weights file", fix)
        return PretrainedWeights(path, file_name, digest, "explicit")
    if cache_path.is_file():
        fix = f"Delete it and run `maskjob weights install {arch} --from FILE` with a good copy."
        digest = _verify(cache_path, file_name, prefix, "cached weights", fix)
        return PretrainedWeights(cache_path, file_name, digest, "cache")
    if not allow_download:
        raise MaskjobError(_missing_message(arch, file_name, cache_path, "downloads are disabled"))
    logger.info("downloading %s into %s", spec.weights.url, cache_path.parent)
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        _download(spec.weights.url, cache_path, DOWNLOAD_TIMEOUT_S)
    except OSError as exc:
        raise MaskjobError(
            _missing_message(arch, file_name, cache_path, f"the download from {spec.weights.url} failed ({exc})")
        ) from None
    try:
        digest = _verify(cache_path, file_name, prefix, "downloaded weights", fix)
    except MaskjobError:
        cache_path.unlink(missing_ok=True)
        raise
    return PretrainedWeights(cache_path, file_name, digest, "download")


def install_weights(arch: str, torch_home: str | Path, source: str | Path) -> Path:
    """Copy a verified weights file into the torch hub cache.

    Args:
        arch: a transfer architecture.
        torch_home: the torch home (``settings.torch_home``).
        source: the file to install.

    Returns:
        The path in the cache.
    """
    weights = resolve_weights(arch, weights_path=source, torch_home=torch_home, allow_download=False)
    dest = weights_cache_dir(torch_home) / weights.file_name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if weights.path.resolve() != dest.resolve():
        tmp = dest.with_suffix(".part")
        shutil.copyfile(weights.path, tmp)
        tmp.replace(dest)
    logger.info("installed %s weights at %s", arch, dest)
    return dest


def _load_pretrained(model: nn.Module, weights: PretrainedWeights) -> None:
    try:
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise MaskjobError(f"cannot load pretrained weights {weights.path}: {exc}") from None


def create_model(
    arch: str,
    pretrained: bool = True,
    weights_path: str | Path | None = None,
    torch_home: str | Path | None = None,
    allow_download: bool = True,
) -> nn.Module:
    """Build a 3-class model by name.

    Args:
        arch: a key of :data:`ARCHS`.
        pretrained: load ImageNet weights into a transfer backbone (ignored for ``cnn``).
        weights_path: an explicit weights file (see :func:`resolve_weights`).
        torch_home: where the torch hub cache lives.
        allow_download: try a download when the weights are not cached.

    Returns:
        The model, with ``model.pretrained_weights`` set to the verified file's meta (or None).

    Example:
        >>> create_model("mobilenet_v2", torch_home="data/torch")  # doctest: +SKIP
    """
    spec = _spec(arch)
    model = spec.build()
    weights_meta = None
    if spec.transfer and pretrained:
        weights = resolve_weights(arch, weights_path, torch_home, allow_download)
        _load_pretrained(model, weights)
        weights_meta = weights.to_meta()
    if spec.replace_head is not None:
        spec.replace_head(model)
    model.pretrained_weights = weights_meta
    return model


def set_trainable(model: nn.Module, arch: str, stage: str) -> list[str]:
    """Freeze or unfreeze parts of a transfer model for two-phase fine-tuning.

    Args:
        model: a model from :func:`create_model`.
        arch: its architecture.
        stage: ``all`` (everything), ``head`` (only the new head) or ``last_stage`` (head and
            the backbone's last stage).

    Returns:
        The prefixes that train (empty for ``all``).
    """
    spec = _spec(arch)
    prefixes = {"all": (), "head": spec.head, "last_stage": spec.head + spec.last_stage}[stage]
    for name, param in model.named_parameters():
        param.requires_grad = not prefixes or name.startswith(prefixes)
    return list(prefixes)
