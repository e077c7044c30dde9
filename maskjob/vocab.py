"""The names and limits every area shares, in one torch-free place.

The CLI's choices, the DAG's param enums and bounds, the database's check constraints, the
reports' labels and colours and the model factory all read these, so a new architecture,
class, status, colour or limit is one edit here. Importing this module is cheap (the DAG
imports it at parse time); ``tests/ml/test_models.py`` asserts that :data:`ARCHS` equals the
model factory's registry.
"""

from __future__ import annotations

import re

__all__ = [
    "ALL_SPLITS", "ARCHS", "CLASSES", "CLASS_COLOURS", "CUSTOM_ARCHS", "DEFAULT_MAX_IMAGE_PIXELS", "DETECTORS",
    "HELDOUT_SPLIT", "IMAGE_EXTENSIONS", "IMAGE_STATUSES", "MAX_IMAGE_SIZE", "MIN_IMAGE_SIZE", "MODEL_STATUSES",
    "NOT_A_FACE", "OPTIONAL_SPLITS", "REVIEW_LABELS", "REVIEW_ROLES", "RUN_STATUSES", "SITE_TEST_SPLIT", "SPLITS",
    "TRANSFER_ARCHS", "VIOLATIONS", "class_colour_hex", "slug",
]

# The canonical class order everywhere: model outputs, probability columns, confusion matrices.
CLASSES: tuple[str, ...] = ("with_mask", "without_mask", "partial_mask")
# The classes that break the rule: the report's gallery, images.top_violation_confidence.
VIOLATIONS: tuple[str, ...] = ("without_mask", "partial_mask")

# One colour per class (RGB): boxes drawn on frames, report charts and the pages' CSS.
# Dark enough for white text on them and for lines on a white page.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "with_mask": (26, 127, 55),
    "without_mask": (198, 40, 40),
    "partial_mask": (178, 106, 0),
}

# Architectures the model factory builds: the custom CNN family and the transfer family.
CUSTOM_ARCHS: tuple[str, ...] = ("cnn",)
TRANSFER_ARCHS: tuple[str, ...] = ("resnet18", "resnet50", "mobilenet_v2")
ARCHS: tuple[str, ...] = CUSTOM_ARCHS + TRANSFER_ARCHS

# Face detectors the detector factory builds (maskjob.scoring.detectors.DETECTORS).
DETECTORS: tuple[str, ...] = ("mtcnn", "res10", "ultralight")

# Five 2x downsamplings (cnn stem + four blocks; the torchvision backbones) need >= 32 px.
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 512

MODEL_STATUSES: tuple[str, ...] = ("candidate", "champion", "retired", "rejected")
RUN_STATUSES: tuple[str, ...] = ("running", "succeeded", "failed")
IMAGE_STATUSES: tuple[str, ...] = ("ok", "no_face", "unreadable")

# A reviewer's decision on a face (face_reviews.label): a class, or "not a face" (a detector
# error: the face drops out of every count and never becomes training data).
NOT_A_FACE = "not_a_face"
REVIEW_LABELS: tuple[str, ...] = CLASSES + (NOT_A_FACE,)
# Review page roles, least to most: viewers read (faces blurred when blur_faces is on),
# reviewers also decide (identities visible), admins as reviewers (users are managed with
# `maskjob review user`).
REVIEW_ROLES: tuple[str, ...] = ("viewer", "reviewer", "admin")
# The dataset's splits: train and test are required. Optional (absent, or a class folder of
# them missing or empty, is fine): test_unseen holds faces in mask styles and of identities the
# training never sees (the demo builder reserves them; the gate's generalisation split), and
# test_site holds reviewed site faces kept out of training (the gate's site split).
HELDOUT_SPLIT = "test_unseen"
SITE_TEST_SPLIT = "test_site"
SPLITS: tuple[str, ...] = ("train", "test")
OPTIONAL_SPLITS: tuple[str, ...] = (HELDOUT_SPLIT, SITE_TEST_SPLIT)
ALL_SPLITS: tuple[str, ...] = SPLITS + OPTIONAL_SPLITS

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
# Larger images are refused before decoding (decompression bombs); setting max_image_pixels.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


def class_colour_hex(label: str) -> str:
    """``CLASS_COLOURS[label]`` as ``#rrggbb`` for HTML and matplotlib."""
    return "#%02x%02x%02x" % CLASS_COLOURS[label]


def slug(text: str, limit: int, fallback: str) -> str:
    """``text`` as a safe file-name part: runs outside ``[A-Za-z0-9_.-]`` become ``-``, no
    leading/trailing ``-``/``.`` (so never ``..``), at most ``limit`` characters, else ``fallback``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:limit] or fallback
