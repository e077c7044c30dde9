"""MTCNN's three networks (P-Net, R-Net, O-Net) and their pinned, sha256-checked weights.

The network definitions are copied from facenet-pytorch 2.6.0 (``facenet_pytorch/models/
mtcnn.py``), MIT licence, Copyright (c) 2019 Timothy Esler; MTCNN is Zhang et al., 2016. Layer
names are kept so the package's state dicts load unchanged; only the weight loading differs:
the weights are the assets ``mtcnn_pnet``, ``mtcnn_rnet`` and ``mtcnn_onet``
(``facenet_pytorch/data/{pnet,rnet,onet}.pt`` from the pinned facenet-pytorch wheel, see
:mod:`maskjob.assets`), read with ``torch.load(..., weights_only=True)``: they are plain state
dicts of float32 tensors, so no pickled code runs.

Example:
    >>> nets = load_nets(settings)                       # doctest: +SKIP
    >>> reg, probs = nets.pnet(torch.zeros(1, 3, 12, 12))  # doctest: +SKIP
    >>> tuple(probs.shape)                               # doctest: +SKIP
    (1, 2, 1, 1)
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from maskjob.config import Settings
from maskjob.errors import MaskjobError

__all__ = ["NET_ASSETS", "MtcnnNets", "ONet", "PNet", "RNet", "load_nets", "load_state_dict", "nets_from_files"]

# Network -> asset name in maskjob.assets.ASSETS.
NET_ASSETS = {"pnet": "mtcnn_pnet", "rnet": "mtcnn_rnet", "onet": "mtcnn_onet"}


class PNet(nn.Module):
    """Proposal net: fully convolutional, a face probability and box offsets per 12 px cell."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(box offsets (N, 4, h, w), probabilities (N, 2, h, w))``."""
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))


class RNet(nn.Module):
    """Refinement net: 24 px crops -> face probability and box offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(box offsets (N, 4), probabilities (N, 2))``."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # The weights came from TensorFlow: flatten in its (W, H, C) order.
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class ONet(nn.Module):
    """Output net: 48 px crops -> face probability, box offsets and five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(box offsets (N, 4), landmarks (N, 10): five x then five y as fractions of the
        box, probabilities (N, 2))``."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


class MtcnnNets(NamedTuple):
    """The three networks, in eval mode, without gradients."""

    pnet: PNet
    rnet: RNet
    onet: ONet


def load_state_dict(net: nn.Module, path: Path) -> nn.Module:
    """Load a state dict file into ``net`` (strict) with ``weights_only=True``.

    Raises:
        MaskjobError: the file is unreadable, holds anything but tensors (refused unloaded),
            or is not a state dict of this network.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}, not a state dict")
        net.load_state_dict(state, strict=True)
    except pickle.UnpicklingError:
        reason = "it holds objects other than tensors; refused by weights_only"
    except (OSError, RuntimeError, TypeError, EOFError) as exc:
        reason = " ".join(str(exc).split())[:200]
    else:
        return net
    raise MaskjobError(f"cannot load MTCNN weights from {path} ({reason}); delete it and run `maskjob assets fetch`")


def load_nets(settings: Settings, channels_last: bool = False) -> MtcnnNets:
    """P-Net, R-Net and O-Net with the sha256-checked weights from ``settings.assets_dir``.

    Args:
        settings: where the assets are.
        channels_last: store the weights channels-last; the cascade then runs ~1.4x faster on
            CPU (boxes agree to ~1e-4 px with the default layout, not bit for bit).

    Raises:
        MaskjobError: a weights file is missing, tampered (names `maskjob assets fetch`) or
            not a state dict of these networks.
    """
    from maskjob.assets import asset_path

    return nets_from_files([asset_path(settings, name) for name in NET_ASSETS.values()], channels_last)


def nets_from_files(paths: Sequence[Path], channels_last: bool = False) -> MtcnnNets:
    """The three networks from state dict files ``(pnet, rnet, onet)``, e.g. verified asset paths."""
    nets = []
    for cls, path in zip((PNet, RNet, ONet), paths, strict=True):
        net = load_state_dict(cls(), path).eval().requires_grad_(False)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        nets.append(net)
    return MtcnnNets(*nets)
