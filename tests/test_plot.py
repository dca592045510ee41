"""Tests for plot.py: the bitmap font and the figure's layout."""
import numpy as np

import config
import plot


def test_text_draws_the_font_bits():
    img = np.full((10, 20, 3), 255, np.uint8)
    plot.draw_text(img, 1, 1, "7g")
    ink = (img == plot.INK).all(-1)
    assert (ink[1:9, 1:6] == plot.glyph("7")).all() and (ink[1:9, 7:12] == plot.glyph("g")).all()
    assert ink.sum() == plot.glyph("7").sum() + plot.glyph("g").sum()
    assert plot.glyph("g")[7].any() and not plot.glyph("7")[7].any()     # a descender
    assert (plot.glyph("~") == plot.glyph("?")).all()          # not in the font


def test_figure_layout_and_time_ticks():
    spec = np.random.default_rng(0).normal(size=(128, 1250)).astype(np.float32)   # 20 s
    img = plot.figure(spec, spec, config.AudioConfig(), titles=("source", "rock"))
    W = -(-1250 // -(-1250 // plot.PANEL_WIDTH))
    assert img.shape == (plot.TOP + 256 + plot.BOTTOM, plot.LEFT + 2 * W + plot.GAP + plot.BAR, 3)
    step, ticks = plot.time_ticks(20.0)
    assert step == 5 and list(ticks) == [0, 5, 10, 15, 20]
    assert plot.second_label(120, 60) == "2:00" and plot.hz_label(4000) == "4k"
