"""Rendering helpers shared by both reports: the autoescaping template environment, inline
PNG/JPEG/SVG ``data:`` URIs and the chart style.
"""

from __future__ import annotations

import base64
import io
import re

import jinja2
import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from PIL import Image

from maskjob.resources import templates_dir
from maskjob.vocab import class_colour_hex

__all__ = ["template_environment", "png_data_uri", "figure_data_uri"]


# Text stays text in matplotlib: a camera called "cam$1$" must not become math.
CHART_RC = {"svg.fonttype": "path", "text.parse_math": False, "font.size": 9}


def template_environment() -> jinja2.Environment:
    """The Jinja2 environment for ``templates/`` (package data ``maskjob.templates``), autoescaping every template."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["thousands"] = lambda n: f"{int(n):,}"
    env.globals["class_colour"] = class_colour_hex
    return env


def png_data_uri(rgb: np.ndarray, fmt: str = "PNG", quality: int = 82) -> str:
    """An ``(H, W, 3)`` uint8 image as a ``data:`` URI (PNG, or JPEG with ``fmt="JPEG"``)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def figure_data_uri(fig: Figure) -> tuple[str, tuple[int, int]]:
    """A matplotlib figure as an SVG ``data:`` URI and its size in CSS pixels."""
    buf = io.BytesIO()
    with rc_context(CHART_RC):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = buf.getvalue()
    match = re.search(rb'<svg[^>]*width="([\d.]+)pt"[^>]*height="([\d.]+)pt"', svg)
    size = (round(float(match[1]) * 4 / 3), round(float(match[2]) * 4 / 3)) if match else (800, 400)
    return f"data:image/svg+xml;base64,{base64.b64encode(svg).decode('ascii')}", size
