"""The model report on the tiny checkpoints, and the interpretation helpers on hand-made nets."""

from __future__ import annotations

import base64
import html as htmllib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from maskjob import CLASSES
from maskjob.errors import MaskjobError

torch.set_num_threads(1)


@pytest.fixture
def registered(tiny_checkpoints, tiny_demo, tmp_path):
    """Both tiny checkpoints registered and promoted in a fresh SQLite database."""
    from maskjob.storage import database
    from maskjob.storage.registry import promote, register

    url = f"sqlite:///{tmp_path / 'models.db'}"
    database.upgrade(url)
    engine = database.make_engine(url)
    versions = {arch: register(engine, path) for arch, path in tiny_checkpoints.items()}
    promote(engine, tiny_demo.root, tiny_demo.settings)
    yield engine, versions
    engine.dispose()


def _section(html: str, version: str) -> str:
    start = html.index(f'<div data-version="{version}">')
    return html[start : html.index("</section>", start)]


def test_model_report_shows_both_families_with_their_numbers(registered, tiny_demo, tmp_path: Path) -> None:
    from maskjob.ml.checkpoint import load_classifier
    from maskjob.ml.evaluate import evaluate_checkpoint
    from maskjob.reporting.model_report import render_model_report
    from maskjob.storage import database, schema

    engine, versions = registered
    path = render_model_report(engine, tiny_demo.settings, out_dir=tmp_path / "out")
    html = path.read_text(encoding="utf-8")
    cnn, transfer = versions["cnn"], versions["mobilenet_v2"]
    assert html.index(f'data-version="{cnn.version}"') < html.index(f'data-version="{transfer.version}"')

    with database.session(engine) as s:
        decisions = {d.candidate_id: d for d in s.query(schema.PromotionDecision)}
    for mv in (cnn, transfer):
        section = _section(html, mv.version)
        meta = load_classifier(mv.checkpoint_path).meta
        assert re.search(rf'data-metric="macro_f1">{meta["metrics"]["macro_f1"]:.3f}<', section)
        assert htmllib.escape(decisions[mv.id].reason, quote=False) in section
    metrics_section = html[html.index('id="test-metrics"'):html.index('id="filters"')]
    rows = re.findall(r'<tr data-class="(\w+)">.*?<td class="num">([\d.]+)</td><td class="num">([\d.]+)</td>'
                      r'<td class="num">([\d.]+)</td><td class="num">(\d+)</td>', metrics_section, flags=re.S)
    for i, mv in enumerate((cnn, transfer)):
        per_class = load_classifier(mv.checkpoint_path).meta["metrics"]["per_class"]
        assert rows[3 * i : 3 * i + 3] == [
            (c, f"{per_class[c]['precision']:.3f}", f"{per_class[c]['recall']:.3f}", f"{per_class[c]['f1']:.3f}",
             str(per_class[c]["support"])) for c in CLASSES
        ]

    # interpretation: filters, 3 feature-map grids per sample face, Grad-CAM, confidently wrong
    assert html.count('alt="first-layer filters of') == 2
    n_samples = 2 * len(CLASSES)
    assert html.count('alt="early feature maps"') == html.count('alt="late feature maps"') == 2 * n_samples
    wrong_by_model = []
    for mv in (cnn, transfer):
        preds = evaluate_checkpoint(mv.checkpoint_path, tiny_demo.root, "test", tiny_demo.settings)["predictions"]
        wrong_by_model.append(sum(p["pred"] != p["true"] for p in preds))
        section = html[html.index('id="grad-cam"'):]
        assert f"{mv.version}: layer " in section
    confident = html[html.index('id="confident-wrong"'):]
    assert confident.count('<figure data-kind="wrong">') == sum(min(6, n) for n in wrong_by_model)
    assert str(tiny_demo.root) not in html and str(tmp_path) not in html

    # every split promotion scored, side by side, and the calibration of each model
    table = html[html.index('id="splits"'):html.index('id="calibration"')]
    calibration = html[html.index('id="calibration"'):html.index('id="test-metrics"')]
    for mv in (cnn, transfer):
        with database.session(engine) as s:
            stored = s.get(schema.ModelVersion, mv.id).metrics
        mine = table[table.index(f'<table data-version="{mv.version}">'):]
        mine = mine[:mine.index("</table>")]
        assert re.findall(r'<th class="num" data-split="(\w+)">', mine) == ["test", "test_unseen"]
        for split in ("test", "test_unseen"):
            scores = stored["splits"][split]
            assert f'data-split="{split}" data-metric="macro_f1">{scores["macro_f1"]:.3f}<' in mine
            recall = scores["per_class"]["partial_mask"]["recall"]
            assert f'data-split="{split}" data-metric="recall_partial_mask">{recall:.3f}<' in mine
            assert f'data-split="{split}" data-metric="ece">{scores["ece"]:.3f}<' in mine
        fitted = load_classifier(mv.checkpoint_path).meta["calibration"]
        block = calibration[calibration.index(f'<table data-calibration="{mv.version}">'):]
        assert f'data-metric="temperature">{fitted["temperature"]:.3f}<' in block
        assert f'data-metric="ece_before">{fitted["ece_before"]:.3f}<' in block
        assert f'data-metric="ece_after">{fitted["ece_after"]:.3f}<' in block
        assert f'alt="reliability diagram of {mv.version}"' in calibration
    diagram = re.search(r'<img class="chart" src="data:image/svg\+xml;base64,([^"]+)"[^>]*alt="reliability diagram',
                        calibration)
    assert b"perfectly calibrated" in base64.b64decode(diagram[1])


def test_one_version_and_errors(registered, tiny_demo, tmp_path: Path) -> None:
    from maskjob.reporting.model_report import render_model_report
    from maskjob.storage import database

    from maskjob.storage import schema

    engine, versions = registered
    only = versions["mobilenet_v2"].version
    html = render_model_report(engine, tiny_demo.settings, version=only, out_dir=tmp_path).read_text(encoding="utf-8")
    assert f'data-version="{only}"' in html and versions["cnn"].version not in html
    assert 'data-metric="test_site_macro_f1"' not in html  # promotion scored no site split

    # Scored on the site split by a promotion: its figures stand beside the test split's.
    site = {"macro_f1": 0.4321, "accuracy": 0.5, "n_images": 66, "evaluated_at": "2026-12-08T02:00:00+00:00",
            "per_class": {c: {"precision": 0.25, "recall": 0.125, "f1": 0.1667, "support": 22} for c in CLASSES}}
    with database.session(engine) as s:
        mv = s.get(schema.ModelVersion, versions["cnn"].id)
        mv.metrics = {**mv.metrics, "splits": {**mv.metrics["splits"], "test_site": site}}
    html = render_model_report(engine, tiny_demo.settings, version=versions["cnn"].version,
                               out_dir=tmp_path).read_text(encoding="utf-8")
    assert 'data-metric="test_site_macro_f1">0.432<' in html and "66 reviewed faces" in html
    site_rows = re.findall(r'<tr data-split-class="test_site:(\w+)">.*?<td class="num">([\d.]+)</td>'
                           r'<td class="num">([\d.]+)</td><td class="num">([\d.]+)</td><td class="num">(\d+)</td>',
                           html, flags=re.S)
    assert site_rows == [(c, "0.250", "0.125", "0.167", "22") for c in CLASSES]
    table = html[html.index('id="splits"'):html.index('id="calibration"')]
    assert re.findall(r'<th class="num" data-split="(\w+)">', table) == ["test", "test_unseen", "test_site"]
    assert '<td class="num" data-split="test_site" data-metric="recall_with_mask">0.125<' in table
    with pytest.raises(MaskjobError, match="not registered"):
        render_model_report(engine, tiny_demo.settings, version="nope", out_dir=tmp_path)
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    database.upgrade(url)
    empty = database.make_engine(url)
    with pytest.raises(MaskjobError, match="no model versions"):
        render_model_report(empty, tiny_demo.settings, out_dir=tmp_path)
    empty.dispose()


class _PatchNet(nn.Module):
    """One conv layer that lights up on bright pixels; the class-0 logit is their total."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)
        with torch.no_grad():
            self.conv.weight.fill_(0.1)
            self.conv.bias.zero_()
            self.head.weight.zero_()
            self.head.weight[0] = 1.0
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_grad_cam_points_at_the_evidence() -> None:
    from maskjob.ml.interpret import grad_cam, overlay_heatmap

    x = torch.zeros(2, 3, 32, 32)
    x[0, :, 20:28, 4:12] = 1.0  # bright patch bottom-left
    x[1, :, 2:8, 22:30] = 1.0  # bright patch top-right
    cams = grad_cam(_PatchNet().eval(), x, [0, 0])
    assert cams.shape == (2, 32, 32) and cams.min() >= 0 and cams.max() == pytest.approx(1.0)
    assert cams[0, 20:28, 4:12].mean() > 5 * cams[0, :10, 20:].mean()
    assert cams[1, 2:8, 22:30].mean() > 5 * cams[1, 20:, :12].mean()
    rgb = np.zeros((64, 64, 3), dtype=np.uint8)
    blended = overlay_heatmap(rgb, cams[0])
    assert blended.shape == (64, 64, 3) and blended.dtype == np.uint8 and blended.any()
    with pytest.raises(MaskjobError, match="targets"):
        grad_cam(_PatchNet().eval(), x, [0])


def test_layers_filters_and_feature_maps() -> None:
    from maskjob.ml.interpret import conv_layers, depth_layers, feature_map_grid, feature_maps, filters_grid

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, groups=8, padding=1),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3)).eval()
    assert [name for name, _ in conv_layers(model)] == ["0", "2", "3", "5"]
    assert depth_layers(model) == {"early": "0", "middle": "3", "late": "5"}  # depthwise "2" skipped
    grid = filters_grid(model, cell_px=10)
    assert grid.dtype == np.uint8 and grid.shape == (2 + 10 + 2, 2 + 8 * 12, 3)
    maps = feature_maps(model, torch.rand(2, 3, 16, 16), ["0", "5"])
    assert maps["0"].shape == (2, 8, 16, 16) and maps["5"].shape == (2, 16, 16, 16)
    maps = torch.zeros(8, 4, 4)
    maps[5] = torch.arange(16.0).view(4, 4)  # the only active channel, and not flat
    cells = feature_map_grid(maps, max_channels=1, cell_px=4)
    assert cells.shape == (8, 8, 3)
    assert len(np.unique(cells[2:6, 2:6].reshape(-1, 3), axis=0)) > 4  # channel 5 drawn, not a flat one
    with pytest.raises(MaskjobError, match="not in the model"):
        feature_maps(model, torch.rand(1, 3, 16, 16), ["nope"])
    with pytest.raises(MaskjobError, match="no Conv2d"):
        conv_layers(nn.Linear(2, 2))
