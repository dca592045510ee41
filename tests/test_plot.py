"""Tests for plot.py: the bitmap font and the figure's layout."""
import numpy as np

import config
import plot


def test_text_draws_the_font_bits():
    img = np.full((9, 20, 3), 255, np.uint8)
    plot.draw_text(img, 1, 1, "7L")
    ink = (img == plot.INK).all(-1)
    assert (ink[1:8, 1:6] == plot.glyph("7")).all() and (ink[1:8, 7:12] == plot.glyph("L")).all()
    assert ink.sum() == plot.glyph("7").sum() + plot.glyph("L").sum()
    assert (plot.glyph("~") == plot.glyph("?")).all()          # not in the font


def test_figure_layout_and_time_ticks():
    spec = np.random.default_rng(0).normal(size=(128, 1250)).astype(np.float32)   # 20 s
    img = plot.figure(spec, spec, config.AudioConfig(), titles=("source", "rock"))
    W = -(-1250 // -(-1250 // plot.PANEL_WIDTH))
    assert img.shape == (plot.TOP + 256 + plot.BOTTOM, plot.LEFT + 2 * W + plot.GAP + plot.BAR, 3)
    step, ticks = plot.time_ticks(20.0)
    assert step == 5 and list(ticks) == [0, 5, 10, 15, 20]
    assert plot.second_label(120, 60) == "2:00" and plot.hz_label(4000) == "4k"
