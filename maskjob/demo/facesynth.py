"""Face compositing for the demo: real source faces with synthesized masks, hands and scarves.

MTCNN finds five landmarks on each source face once (:func:`load_faces`); every sample is
then a cheap OpenCV composite (:func:`render_face`): a pose-jittered crop, a mask drawn along
the landmarks (``with_mask``: nose bridge to chin; ``partial_mask``: the same mask pulled
down below the nose tip), or a bare face, sometimes with a hand over the mouth or a scarf
below the chin (still ``without_mask``). The same seeded generator gives the same pixels.
A :class:`MaskStyle` says which shapes, fabrics, colours and partial-mask geometry a split
draws: :data:`SEEN_STYLE` for train and test, the disjoint :data:`UNSEEN_STYLE` for
``test_unseen``, so that split measures masks the training never saw.

Example:
    >>> faces = load_faces(settings)                                            # doctest: +SKIP
    >>> rng = np.random.default_rng(0)                                          # doctest: +SKIP
    >>> img, _, drawn = render_face(faces[0], "with_mask", rng, textures, 128, 0.7)  # doctest: +SKIP
    >>> photometric(img, rng).shape                                             # doctest: +SKIP
    (128, 128, 3)
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from maskjob.assets import asset_path
from maskjob.config import Settings
from maskjob.errors import MaskjobError
from maskjob.imageio import read_rgb

__all__ = [
    "FABRICS", "PHOTO_ASSETS", "SEEN_STYLE", "UNSEEN_STYLE", "Drawn", "Face", "FaceCoords", "MaskStyle", "load_faces",
    "paste_face", "photometric", "render_face",
]

logger = logging.getLogger(__name__)

# Source photos by identity prefix -> asset name (see maskjob.assets); LFW crops come on top.
PHOTO_ASSETS = {"t1": "insightface_t1", "tom-hanks": "insightface_tom_hanks", "messi": "messi5",
                "grace-hopper": "grace_hopper", "astronaut": "astronaut"}
# MTCNN looks for faces down to this size (px) on the sources (facenet-pytorch's default).
MIN_FACE_PX = 20
# Mean MTCNN landmarks of the LFW crops (25 px): used for the crops MTCNN misses.
LFW_CANONICAL = np.array([[5.3, 8.6], [14.6, 8.2], [9.7, 13.6], [6.4, 18.4], [14.3, 18.1]])
# The face box in face coordinates (unit = eye distance, origin between the eyes, y down):
# ear to ear, forehead to chin, like a face detector's box.
FACE_X, FACE_TOP = 1.0, -0.85
SOLIDS = np.array([
    [150, 195, 225], [235, 238, 240], [40, 42, 48], [95, 105, 120], [70, 90, 150], [140, 90, 160],
    [120, 160, 130], [200, 60, 60], [70, 140, 140], [60, 60, 90], [180, 180, 185], [20, 60, 110],
], dtype=np.float32)
# The fabric photos (assets ``mask_<name>``) masks and scarves are cut from.
FABRICS = ("black", "blue", "green", "white")
SKIN = np.array([[1.0, 0.84, 0.72], [1.0, 0.8, 0.66], [0.92, 0.74, 0.6], [1.0, 0.9, 0.82], [0.8, 0.6, 0.47]])


@dataclass(frozen=True)
class MaskStyle:
    """The mask styles a split may draw: the demo reserves some of each for ``test_unseen``.

    ``bands`` are where a partial mask's top edge sits, as fractions of the way from the nose
    tip down to the mouth (one band is drawn per face); ``slip`` is the chance that a partial
    mask also slips on one side (its edge tilted by up to ``max_slip`` of that distance).
    """

    shapes: tuple[str, ...]
    textures: tuple[str, ...]  # "photo", "solid", "stripes", "checks", "dots"
    texture_p: tuple[float, ...]
    fabrics: tuple[str, ...]  # names in FABRICS
    colours: tuple[int, ...]  # indices into SOLIDS
    bands: tuple[tuple[float, float], ...]
    slip: float = 0.0
    max_slip: float = 0.0


# train and test: surgical and cloth masks, photo/solid/striped fabric, 8 of the 12 colours,
# partial masks pulled straight down to between 25% and 60% of the way from nose to mouth.
SEEN_STYLE = MaskStyle(("surgical", "cloth"), ("photo", "solid", "stripes"), (0.4, 0.4, 0.2),
                       ("black", "blue", "white"), (0, 1, 2, 3, 6, 9, 10, 11), ((0.25, 0.6),))
# test_unseen: KN95 cups, gaiters and bandanas, checked/dotted and the green fabric, the other
# 4 colours, partial masks just under the nose tip or down at the lip, often slipping on one side.
UNSEEN_STYLE = MaskStyle(("kn95", "gaiter", "bandana"), ("photo", "checks", "dots"), (0.3, 0.35, 0.35),
                         ("green",), (4, 5, 7, 8), ((0.1, 0.25), (0.6, 0.9)), slip=0.6, max_slip=0.35)


@dataclass(frozen=True)
class Drawn:
    """What :func:`render_face` drew over the face (the demo manifest's style columns)."""

    shape: str  # a mask shape, or "none", "hand", "scarf" on a bare face
    texture: str = ""
    colour: str = ""  # "#rrggbb" of a drawn colour, "" for a fabric photo or no mask
    band: str = ""  # the partial band "lo-hi" (and "+slip"), "" when not a partial mask


@dataclass
class Face:
    """One source face: the photo it sits in and its five MTCNN landmarks."""

    identity: str
    group: str  # "lfw" or "photo": split separately so both sides get both kinds
    rgb: np.ndarray
    landmarks: np.ndarray  # (5, 2): eyes, nose tip, mouth corners (subject's right first)
    grey: bool = False


def _keep(boxes: np.ndarray, probs: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and landmarks of one frame's faces with probability >= 0.95, largest box first
    (the order of facenet-pytorch's ``detect``)."""
    order = np.argsort((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[::-1]
    keep = order[np.asarray(probs[order], dtype=float) >= 0.95]
    return np.asarray(boxes, float)[keep], np.asarray(points, float)[keep]


def _source_images(lfw_path: Path, photo_paths: tuple[Path, ...],
                   up: int) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """The LFW crops (grey, upscaled ``up`` times) and the photos, keyed like :data:`PHOTO_ASSETS`."""
    lfw_rgb = [
        np.repeat(cv2.resize((f * 255).round().astype(np.uint8), (25 * up, 25 * up),
                             interpolation=cv2.INTER_CUBIC)[:, :, None], 3, axis=2)
        for f in np.load(lfw_path)[:100]
    ]
    photos = dict(zip(PHOTO_ASSETS, (read_rgb(p) for p in photo_paths)))
    photos["tom-hanks"] = cv2.resize(photos["tom-hanks"], None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    return lfw_rgb, photos


def _find(net_paths: tuple[Path, ...], lfw_rgb: list[np.ndarray],
          photos: dict[str, np.ndarray]) -> tuple[list[tuple[np.ndarray, np.ndarray]], ...]:
    """MTCNN's confident faces on the LFW crops (one batch) and on each photo."""
    import torch

    from maskjob.scoring.mtcnn import detect_faces
    from maskjob.scoring.mtcnn_nets import nets_from_files

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # MTCNN's many small convolutions slow down badly on shared cores
    try:  # faithful: facenet-pytorch's detect bit for bit, so the demo data stays as it was
        nets = nets_from_files(net_paths)
        lfw_found = [_keep(*f) for f in detect_faces(np.stack(lfw_rgb), nets, MIN_FACE_PX, faithful=True)]
        photo_found = [_keep(*detect_faces(np.stack([rgb]), nets, MIN_FACE_PX, faithful=True)[0])
                       for rgb in photos.values()]
    finally:
        torch.set_num_threads(threads)
    return lfw_found, photo_found


@functools.lru_cache(maxsize=2)
def _detect_faces(lfw_path: Path, photo_paths: tuple[Path, ...], net_paths: tuple[Path, ...]) -> tuple[Face, ...]:
    """Landmarks of every source face; cached because the files are sha256-pinned."""
    up = 4
    lfw_rgb, photos = _source_images(lfw_path, photo_paths, up)
    lfw_found, photo_found = _find(net_paths, lfw_rgb, photos)
    faces: list[Face] = []
    misses = 0
    for i, (rgb, (_, points)) in enumerate(zip(lfw_rgb, lfw_found)):
        misses += not len(points)
        landmarks = points[0] if len(points) else LFW_CANONICAL * up
        faces.append(Face(f"lfw-{i:03d}", "lfw", rgb, np.round(landmarks, 1), grey=True))
    for (name, rgb), (boxes, points) in zip(photos.items(), photo_found):
        if not len(points):
            raise MaskjobError(f"no face found in the {name} photo; the asset is not the pinned file. "
                               f"Run `maskjob assets fetch`.")
        order = np.argsort(boxes[:, 0]) if name == "t1" else [0]
        for k, j in enumerate(order):
            identity = f"t1-{k}" if name == "t1" else name
            faces.append(Face(identity, "photo", rgb, np.round(points[j], 1), grey=name == "tom-hanks"))
    for face in faces:
        face.rgb.flags.writeable = False
    logger.info("%d source faces (%d LFW crops on canonical landmarks)", len(faces), misses)
    return tuple(faces)


def load_faces(settings: Settings) -> list[Face]:
    """Every source face (100 LFW crops, then the photos) with landmarks, from ``settings.assets_dir``.

    Raises:
        MaskjobError: an asset (photo or MTCNN weights) is missing or tampered, or a photo
            shows no face (not the pinned file).
    """
    from maskjob.scoring.mtcnn_nets import NET_ASSETS

    photo_paths = tuple(asset_path(settings, name) for name in PHOTO_ASSETS.values())
    net_paths = tuple(asset_path(settings, name) for name in NET_ASSETS.values())
    return list(_detect_faces(asset_path(settings, "lfw_subset"), photo_paths, net_paths))


class FaceCoords:
    """Face coordinates in an image: unit = eye distance, origin between the eyes, y down."""

    def __init__(self, points: np.ndarray) -> None:
        eye_l, eye_r = points[0], points[1]
        self.origin = (eye_l + eye_r) / 2
        self.right = eye_r - eye_l  # scaled by eye distance
        self.down = np.array([-self.right[1], self.right[0]])
        inv = np.linalg.inv(np.stack([self.right, self.down], axis=1))
        self.nose = inv @ (points[2] - self.origin)
        self.mouth = inv @ ((points[3] + points[4]) / 2 - self.origin)
        self.chin = 1.6 * self.mouth[1]
        self.scale = float(np.hypot(*self.right))

    def to_px(self, xy: np.ndarray) -> np.ndarray:
        xy = np.atleast_2d(xy)
        return self.origin + xy[:, :1] * self.right + xy[:, 1:2] * self.down

    def grid(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Face coordinates of every pixel of a ``size``-square image."""
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        inv = np.linalg.inv(np.stack([self.right, self.down], axis=1)).astype(np.float32)
        dx, dy = xs - self.origin[0], ys - self.origin[1]
        return inv[0, 0] * dx + inv[0, 1] * dy, inv[1, 0] * dx + inv[1, 1] * dy

    def box(self) -> np.ndarray:
        corners = np.array([[-FACE_X, FACE_TOP], [FACE_X, FACE_TOP], [FACE_X, self.chin], [-FACE_X, self.chin]])
        pts = self.to_px(corners)
        return np.concatenate([pts.min(0), pts.max(0)])


def _bezier(p0: np.ndarray, mid: np.ndarray, p2: np.ndarray, n: int = 12) -> np.ndarray:
    """Quadratic curve from p0 to p2 passing through ``mid`` at its half-way point."""
    ctrl = 2 * mid - (p0 + p2) / 2
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * ctrl + t ** 2 * p2


def _fill(shape: tuple[int, int], polygon_px: np.ndarray, soft: float = 0.7) -> np.ndarray:
    alpha = np.zeros(shape, np.uint8)
    cv2.fillPoly(alpha, [np.round(polygon_px * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    return cv2.GaussianBlur(alpha.astype(np.float32) / 255, (0, 0), soft)


def _hex(colour: np.ndarray) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in colour)


def _texture(rng: np.random.Generator, textures: dict[str, np.ndarray], frame: FaceCoords, size: int,
             box: tuple[float, float, float, float], style: MaskStyle) -> tuple[np.ndarray, str, str]:
    """A fabric image for the whole crop, laid out in face coordinates over ``box``, with the
    texture's name and its colour (``""`` for a fabric photo)."""
    gx, gy = frame.grid(size)
    kind = str(rng.choice(style.textures, p=style.texture_p))
    if kind == "photo":
        name = style.fabrics[int(rng.integers(len(style.fabrics)))]
        tex = textures[name]
        h, w = tex.shape[:2]
        x0, y0, x1, y1 = box
        u = ((gx - x0) / (x1 - x0) * (w - 1)).astype(np.float32)
        v = ((gy - y0) / (y1 - y0) * (h - 1)).astype(np.float32)
        img = cv2.remap(tex, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101).astype(np.float32)
        return img * rng.uniform(0.85, 1.15, 3).astype(np.float32), f"photo-{name}", ""
    colour = SOLIDS[style.colours[int(rng.integers(len(style.colours)))]]
    img = np.broadcast_to(colour * rng.uniform(0.85, 1.1), (size, size, 3)).copy()
    if kind != "solid":
        other = SOLIDS[style.colours[int(rng.integers(len(style.colours)))]]
        period = rng.uniform(0.15, 0.35)
        if kind == "stripes":
            on = np.sin((gy if rng.random() < 0.5 else gx) / period * np.pi) > 0
        elif kind == "checks":
            on = (np.floor(gx / period) + np.floor(gy / period)) % 2 == 0
        else:
            on = (np.mod(gx, period) - period / 2) ** 2 + (np.mod(gy, period) - period / 2) ** 2 < (period / 4) ** 2
        img[on] = other
    return img + rng.normal(0, 4, (size, size, 1)).astype(np.float32), kind, _hex(colour)


def _outline(shape: str, nose_x: float, half_w: float, top_side: float, top_mid: float, low_w: float,
             low_y: float, bottom: float, chin: float) -> np.ndarray:
    """The mask's outline in face coordinates: top edge over the nose, then down the sides."""
    top = _bezier(np.array([-half_w, top_side]), np.array([nose_x, top_mid]), np.array([half_w, top_side]))
    if shape == "gaiter":  # a tube from the nose down over the neck, wider than the face
        neck = chin + 0.7
        return np.concatenate([top, [[half_w * 1.08, neck], [-half_w * 1.08, neck]]])
    if shape == "bandana":  # a triangle of cloth hanging to a point below the chin
        return np.concatenate([top, _bezier(np.array([half_w, top_side]), np.array([half_w * 0.9, low_y]),
                                            np.array([nose_x * 0.5, chin + 0.95]), 8),
                               _bezier(np.array([nose_x * 0.5, chin + 0.95]), np.array([-half_w * 0.9, low_y]),
                                       np.array([-half_w, top_side]), 8)])
    mid_bottom = np.array([nose_x * 0.5, bottom + (0.1 if shape == "kn95" else 0.0)])
    return np.concatenate([
        top,
        _bezier(np.array([half_w, top_side]), np.array([half_w * 0.95, (top_side + low_y) / 2]),
                np.array([low_w, low_y]), 6),
        _bezier(np.array([low_w, low_y]), mid_bottom, np.array([-low_w, low_y])),
        _bezier(np.array([-low_w, low_y]), np.array([-half_w * 0.95, (top_side + low_y) / 2]),
                np.array([-half_w, top_side]), 6),
    ])


def _mask_layer(rng: np.random.Generator, textures: dict[str, np.ndarray], frame: FaceCoords, size: int,
                partial: bool, style: MaskStyle) -> tuple[np.ndarray, np.ndarray, Drawn]:
    """A mask (colour image, alpha, what was drawn) along the landmarks, in one of ``style``'s shapes."""
    nose_x, nose_y = frame.nose
    mouth_y = frame.mouth[1]
    half_w = rng.uniform(1.0, 1.15)
    top_side = nose_y * rng.uniform(0.6, 0.85)
    top_mid = nose_y * rng.uniform(0.2, 0.45)
    bottom = frame.chin + rng.uniform(0.0, 0.15)
    shift = slip = 0.0
    band = ""
    if partial:
        lo, hi = style.bands[int(rng.integers(len(style.bands)))]
        new_top = nose_y + rng.uniform(lo, hi) * (mouth_y - nose_y)
        top_mid = top_side - rng.uniform(0.0, 0.1)
        shift = new_top - top_mid
        band = f"{lo:.2f}-{hi:.2f}"
        if rng.random() < style.slip:
            slip = rng.choice([-1.0, 1.0]) * rng.uniform(0.1, style.max_slip) * (mouth_y - nose_y)
            band += "+slip"
    low_w, low_y = half_w * rng.uniform(0.72, 0.85), mouth_y + 0.35 * (frame.chin - mouth_y)
    shape = str(rng.choice(style.shapes))
    local = _outline(shape, nose_x, half_w, top_side, top_mid, low_w, low_y, bottom, frame.chin)
    local[:, 1] += shift + slip * np.clip(local[:, 0] / half_w, -1, 1)  # slipping: one side lower
    alpha = _fill((size, size), frame.to_px(local))
    color, texture, colour = _texture(rng, textures, frame, size, (-half_w, top_mid + shift, half_w, bottom + shift),
                                      style)
    gx, gy = frame.grid(size)
    shade = 1.0 - 0.3 * np.clip(np.abs(gx - nose_x) / half_w, 0, 1) ** 2
    if shape == "surgical":
        for k in range(3):
            line_y = top_side + shift + (k + 1) * (low_y - top_side) / 4 + 0.08
            shade -= 0.12 * np.exp(-((gy - line_y) / 0.03) ** 2)
    elif shape in ("cloth", "kn95"):
        shade -= 0.1 * np.exp(-((gx - nose_x * 0.5) / 0.03) ** 2)
    shade += 0.05 * np.sin(gy * rng.uniform(8, 20) + rng.uniform(0, 6))
    color *= shade[:, :, None]
    drawn = Drawn(shape, texture, colour, band)
    if shape in ("gaiter", "bandana"):  # worn round the head: no ear loops
        return color, alpha, drawn
    if rng.random() < 0.5:
        strap = SOLIDS[1]
    else:
        strap = (color * alpha[..., None]).sum(axis=(0, 1)) / max(float(alpha.sum()), 1.0)
    lines = np.zeros((size, size), np.uint8)
    thick = max(1, round(frame.scale * 0.04))
    for side in (-1, 1):
        for start, ear in (((half_w, top_side + 0.05), (1.2, 0.25)), ((low_w, low_y), (1.15, 1.05))):
            a = frame.to_px(np.array([side * start[0], start[1] + shift + side * slip]))[0]
            b = frame.to_px(np.array([side * ear[0], ear[1]]))[0]
            cv2.line(lines, tuple(np.round(a).astype(int)), tuple(np.round(b).astype(int)), 255, thick, cv2.LINE_AA)
    strap_alpha = (lines.astype(np.float32) / 255) * (1 - alpha)
    total = alpha + strap_alpha
    color = (color * alpha[..., None] + strap * 0.9 * strap_alpha[..., None]) / np.maximum(total, 1e-6)[..., None]
    return color, total, drawn


def _hand_layer(rng: np.random.Generator, img: np.ndarray, frame: FaceCoords,
                size: int) -> tuple[np.ndarray, np.ndarray]:
    """A hand over the mouth: skin from the cheek, fingers across the mouth, nose free."""
    cheek = frame.to_px(np.array([[-0.45, frame.nose[1]], [0.45, frame.nose[1]]]))
    ci = np.clip(np.round(cheek).astype(int), 0, size - 1)
    skin = np.median(np.stack([img[y, x] for x, y in ci]), axis=0) * rng.uniform(0.9, 1.15)
    side = rng.choice([-1.0, 1.0])
    mouth_y, nose_y = frame.mouth[1], frame.nose[1]
    top = nose_y + 0.25 * (mouth_y - nose_y)
    layer = np.zeros((size, size), np.float32)
    thick = max(2, round(frame.scale * 0.26))
    palm = frame.to_px(np.array([side * 1.25, mouth_y + 0.45]))[0]
    cv2.circle(layer, tuple(int(v) for v in np.round(palm)), max(3, round(frame.scale * 0.75)), 0.85, -1, cv2.LINE_AA)
    for k in range(4):
        y = top + 0.12 + k * 0.22
        a = tuple(int(v) for v in np.round(frame.to_px(np.array([side * 1.2, y + 0.1]))[0]))
        b = tuple(int(v) for v in np.round(frame.to_px(np.array([-side * (0.7 - 0.08 * abs(k - 1.5)), y]))[0]))
        cv2.line(layer, a, b, 0.8, thick, cv2.LINE_AA)
        cv2.line(layer, a, b, 1.0, max(1, thick // 2), cv2.LINE_AA)
    alpha = cv2.GaussianBlur((layer > 0).astype(np.float32), (0, 0), 0.8)
    color = skin[None, None, :] * cv2.GaussianBlur(np.where(layer > 0, layer, 0.8), (0, 0), 0.7)[..., None]
    return color.astype(np.float32), alpha


def _scarf_layer(rng: np.random.Generator, textures: dict[str, np.ndarray], frame: FaceCoords,
                 size: int, style: MaskStyle) -> tuple[np.ndarray, np.ndarray, Drawn]:
    """A scarf or collar below the chin: fabric, but mouth and chin bare."""
    top = frame.chin + rng.uniform(0.0, 0.2)
    xs = np.linspace(-2.2, 2.2, 24)
    edge = top + 0.06 * np.sin(xs * rng.uniform(3, 7)) - 0.12 * (1 - (xs / 2.2) ** 2) * rng.uniform(-1, 1)
    local = np.concatenate([np.stack([xs, edge], 1), np.array([[2.2, 6.0], [-2.2, 6.0]])])
    alpha = _fill((size, size), frame.to_px(local))
    color, texture, colour = _texture(rng, textures, frame, size, (-1.5, top, 1.5, top + 1.2), style)
    return color, alpha, Drawn("scarf", texture, colour)


def render_face(face: Face, label: str, rng: np.random.Generator, textures: dict[str, np.ndarray],
                size: int, fill: float, style: MaskStyle = SEEN_STYLE) -> tuple[np.ndarray, FaceCoords, Drawn]:
    """One face of class ``label`` in a ``size``-square crop whose face box spans ``fill``.

    Args:
        face: the source face.
        label: one of :data:`maskjob.CLASSES`; decides mask, partial mask or bare face.
        rng: every random choice (pose, mask shape, fabric, hand or scarf) comes from it.
        textures: RGB fabric photos for masks and scarves, by name (:data:`FABRICS`).
        size: side of the square crop in pixels.
        fill: face box height as a fraction of ``size``.
        style: the mask shapes, fabrics, colours and partial-mask geometry to draw from.

    Returns:
        The crop as (size, size, 3) float32 RGB, unclipped, its face coordinates, and what was drawn.
    """
    src = FaceCoords(face.landmarks)
    centre = src.to_px(np.array([src.nose[0] * 0.3, (FACE_TOP + src.chin) / 2]))[0]
    face_px = (src.chin - FACE_TOP) * src.scale
    scale = size * fill / face_px
    angle = np.degrees(np.arctan2(src.right[1], src.right[0])) + rng.normal(0, 7)
    mat = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(angle), float(scale))
    mat[:, 2] += np.array([size / 2, size / 2]) - centre + rng.normal(0, 0.03 * size, 2)
    if rng.random() < 0.5:
        mat = np.array([[-1, 0, size - 1], [0, 1, 0]], float) @ np.vstack([mat, [0, 0, 1]])
    img = cv2.warpAffine(face.rgb, mat, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    inside = cv2.warpAffine(np.ones(face.rgb.shape[:2], np.float32), mat, (size, size), flags=cv2.INTER_LINEAR)
    if inside.min() < 1.0:
        # Beyond the source photo: a defocused background instead of mirrored ghost faces.
        inside = cv2.GaussianBlur(inside, (0, 0), 1.5)[..., None]
        img = img * inside + cv2.GaussianBlur(img, (0, 0), size * 0.08) * (1 - inside)
    points = face.landmarks @ mat[:, :2].T + mat[:, 2]
    if mat[0, 0] * mat[1, 1] - mat[0, 1] * mat[1, 0] < 0:
        points = points[[1, 0, 2, 4, 3]]
    frame = FaceCoords(points)
    if face.grey and rng.random() < 0.75:
        img *= SKIN[rng.integers(len(SKIN))].astype(np.float32) * rng.uniform(0.95, 1.1)
    layer = None
    if label in ("with_mask", "partial_mask"):
        layer = _mask_layer(rng, textures, frame, size, label == "partial_mask", style)
    else:
        hard = rng.random()
        if hard < 0.15:
            layer = (*_hand_layer(rng, img, frame, size), Drawn("hand"))
        elif hard < 0.3:
            layer = _scarf_layer(rng, textures, frame, size, style)
    if layer is None:
        return img, frame, Drawn("none")
    color, alpha, drawn = layer
    return img * (1 - alpha[..., None]) + color * alpha[..., None], frame, drawn

def photometric(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Seeded brightness, white balance, contrast, gamma, blur and noise; returns uint8 RGB."""
    img = img * rng.uniform(1 - 0.3 * strength, 1 + 0.25 * strength) * rng.uniform(0.93, 1.07, 3)
    mean = img.mean()
    img = (img - mean) * rng.uniform(1 - 0.25 * strength, 1 + 0.2 * strength) + mean
    img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** rng.uniform(0.8, 1.25)
    if rng.random() < 0.3 * strength:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.3))
    if rng.random() < 0.3 * strength:
        img = img + rng.normal(0, rng.uniform(2, 6), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def paste_face(canvas: np.ndarray, face: Face, label: str, rng: np.random.Generator, textures: dict[str, np.ndarray],
               x0: int, y0: int, patch_px: int, box_px: int) -> np.ndarray:
    """Render a face and blend it into ``canvas`` (float32, modified in place) at ``(x0, y0)``.

    Args:
        canvas: the frame, (H, W, 3) float32.
        face, label, rng, textures: as for :func:`render_face`.
        x0, y0: top-left corner of the ``patch_px``-square patch in the frame.
        patch_px: side of the rendered patch; the face box spans about ``box_px`` of it.

    Returns:
        The face box ``(x1, y1, x2, y2)`` in frame pixels, unrounded and unclipped.
    """
    img, coords, _ = render_face(face, label, rng, textures, patch_px, box_px / patch_px * 0.95)
    img = photometric(img, rng, strength=0.5).astype(np.float32)
    box = coords.box()
    centre = (box[:2] + box[2:]) / 2
    radii = (box[2:] - box[:2]) / 2 * np.array([1.3, 1.35])
    blend = np.zeros((patch_px, patch_px), np.float32)
    cv2.ellipse(blend, tuple(int(v) for v in np.round(centre)), tuple(int(v) for v in np.round(radii)),
                0, 0, 360, 1.0, -1, cv2.LINE_AA)
    blend = cv2.GaussianBlur(blend, (0, 0), patch_px * 0.035)[..., None]
    region = canvas[y0:y0 + patch_px, x0:x0 + patch_px]
    img = img + 0.15 * (region.mean() - img.mean())
    canvas[y0:y0 + patch_px, x0:x0 + patch_px] = region * (1 - blend) + img * blend
    return np.concatenate([box[:2] + [x0, y0], box[2:] + [x0, y0]])
