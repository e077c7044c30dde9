"""Looking inside a trained classifier: first-layer filters, feature maps and Grad-CAM.

Every helper works on any ``nn.Module`` with ``Conv2d`` layers (the custom CNN and the
torchvision transfer models alike) and returns plain ``uint8`` RGB arrays ready to embed
in a report.

Example:
    >>> layers = conv_layers(model)                          # doctest: +SKIP
    >>> grid = filters_grid(model)                           # first conv layer, as RGB
    >>> cams = grad_cam(model, batch, targets=[0, 1])        # (N, H, W) in [0, 1]
    >>> overlay = overlay_heatmap(face_rgb, cams[0])
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image
from torch import nn

from maskjob.errors import MaskjobError

__all__ = [
    "conv_layers",
    "depth_layers",
    "filters_grid",
    "feature_maps",
    "feature_map_grid",
    "grad_cam",
    "overlay_heatmap",
    "tile",
]

logger = logging.getLogger(__name__)


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """All ``Conv2d`` layers of ``model`` in forward-definition order, with their names.

    Raises:
        MaskjobError: the model has no convolution layer to look at.
    """
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not layers:
        raise MaskjobError(
            f"{type(model).__name__} has no Conv2d layer; interpretation needs a convolutional model"
        )
    return layers


def depth_layers(model: nn.Module) -> dict[str, str]:
    """Names of an early, a middle and a late conv layer: ``{"early": name, ...}``.

    Depthwise convolutions (``groups > 1``) are skipped where possible: their maps show one
    input channel each and say little about what the network combines.
    """
    layers = conv_layers(model)
    dense = [(n, m) for n, m in layers if m.groups == 1] or layers
    return {"early": dense[0][0], "middle": dense[len(dense) // 2][0], "late": dense[-1][0]}


def _normalise(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def tile(images: Sequence[np.ndarray], columns: int | None = None, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Arrange equally sized ``(H, W, 3)`` uint8 images in a grid with ``pad`` pixels between."""
    if not images:
        raise MaskjobError("nothing to tile: the image list is empty")
    h, w = images[0].shape[:2]
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), fill, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[y : y + h, x : x + w] = img
    return canvas


def _upscale(img: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.NEAREST))


def filters_grid(model: nn.Module, max_filters: int = 64, cell_px: int = 24) -> np.ndarray:
    """The first conv layer's kernels as a grid of RGB images (each kernel scaled on its own).

    A kernel with 3 input channels is shown in colour; any other count shows the channel mean
    in grey. Cells are upscaled with nearest-neighbour so each weight stays a visible square.
    """
    _, conv = conv_layers(model)[0]
    weights = conv.weight.detach().float().cpu().numpy()[:max_filters]
    cells = []
    for kernel in weights:
        img = kernel.transpose(1, 2, 0) if kernel.shape[0] == 3 else kernel.mean(axis=0)[:, :, None].repeat(3, axis=2)
        cells.append(_upscale((_normalise(img) * 255).astype(np.uint8), cell_px))
    return tile(cells, columns=min(len(cells), 8))


def feature_maps(model: nn.Module, batch: torch.Tensor, layer_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Outputs of the named layers for ``batch`` (one forward pass, no gradients).

    Returns:
        ``{name: Tensor (N, C, H, W)}`` on the CPU.
    """
    modules = dict(model.named_modules())
    missing = [n for n in layer_names if n not in modules]
    if missing:
        raise MaskjobError(f"layers {missing} are not in the model; pick names from conv_layers(model)")
    captured: dict[str, torch.Tensor] = {}
    handles = [
        modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out.detach().cpu().clone())
        )
        for name in layer_names
    ]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def feature_map_grid(maps: torch.Tensor, max_channels: int = 16, cell_px: int = 48) -> np.ndarray:
    """One image's ``(C, H, W)`` maps as a grid: the ``max_channels`` most active channels.

    Channels are ranked by mean activation so the grid shows what the layer responds to,
    not dead filters; each is scaled on its own and drawn with the viridis colour map.
    """
    if maps.dim() != 3:
        raise MaskjobError(f"feature_map_grid wants one image's maps (C, H, W), got shape {tuple(maps.shape)}")
    arr = maps.float().numpy()
    order = np.argsort(-arr.mean(axis=(1, 2)))[:max_channels]
    cmap = colormaps["viridis"]
    cells = []
    for ch in order:
        rgb = (cmap(_normalise(arr[ch]))[:, :, :3] * 255).astype(np.uint8)
        cells.append(np.asarray(Image.fromarray(rgb).resize((cell_px, cell_px), Image.Resampling.BILINEAR)))
    return tile(cells, columns=min(len(cells), 4))


def grad_cam(
    model: nn.Module,
    batch: torch.Tensor,
    targets: Sequence[int],
    layer_name: str | None = None,
) -> np.ndarray:
    """Grad-CAM maps (captum ``LayerGradCam``), upsampled to the input size.

    Args:
        model: the classifier in eval mode.
        batch: preprocessed images ``(N, 3, H, W)``.
        targets: the class index to explain for each image (usually the prediction).
        layer_name: the conv layer to attribute to; default the last ``Conv2d``.

    Returns:
        ``(N, H, W)`` float array, each map scaled to ``[0, 1]`` (all zeros if no positive evidence).
    """
    from captum.attr import LayerAttribution, LayerGradCam

    if len(targets) != batch.shape[0]:
        raise MaskjobError(f"grad_cam got {batch.shape[0]} images but {len(targets)} targets")
    modules = dict(model.named_modules())
    name = layer_name or conv_layers(model)[-1][0]
    if name not in modules:
        raise MaskjobError(f"layer {name!r} is not in the model; pick a name from conv_layers(model)")
    cam = LayerGradCam(model, modules[name])
    attributions = cam.attribute(batch, target=list(targets), relu_attributions=True)
    upsampled = LayerAttribution.interpolate(attributions, tuple(batch.shape[-2:]), interpolate_mode="bilinear")
    maps = upsampled.detach().cpu().numpy()[:, 0]
    peaks = maps.reshape(len(maps), -1).max(axis=1)
    logger.debug("grad-cam on %s: peak activations %s", name, np.round(peaks, 4).tolist())
    return np.stack([m / p if p > 0 else np.zeros_like(m) for m, p in zip(maps, peaks)]).clip(0.0, 1.0)


def overlay_heatmap(rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a ``[0, 1]`` heat map (resized to the image) over ``rgb`` with the jet colour map."""
    h, w = rgb.shape[:2]
    if heatmap.shape != (h, w):
        heat_img = Image.fromarray((heatmap * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)
        heatmap = np.asarray(heat_img, dtype=np.float32) / 255.0
    colour = colormaps["jet"](heatmap)[:, :, :3] * 255.0
    return (rgb.astype(np.float32) * (1.0 - alpha) + colour * alpha).clip(0, 255).astype(np.uint8)
