"""Tests for music.py: seeded compositions with varied music, arranged alike in every style."""
import numpy as np
import pytest

import music


def test_compose_is_seeded():
    a, b, c = music.compose(1, 6.0), music.compose(1, 6.0), music.compose(2, 6.0)
    assert a == b
    assert a["events"] != c["events"]
    assert all(0 <= e["start"] < e["end"] <= 6.0 for e in a["events"])
    assert {"melody", "chord", "bass"} <= {e["role"] for e in a["events"]}


def test_pieces_vary_as_asked():
    """Over many seeds: tempo 60-180, both meters, every mode, 4-6 voices of harmony,
    registers, counter-melodies in some pieces, rests, accents and swells."""
    seeds = np.random.default_rng(0).integers(1 << 30, size=120)
    pieces = [music.compose(int(s), 12.0) for s in seeds]
    tempi = [p["tempo"] for p in pieces]
    assert 60 <= min(tempi) < 80 and 160 < max(tempi) <= 180
    assert {p["meter"] for p in pieces} == {3, 4}
    assert {p["mode"] for p in pieces} == set(music.MODES)
    voices = {len(p["chord"]) + 1 for p in pieces}              # chord tones + the bass
    assert voices == {4, 5, 6}
    assert {tuple(p["register"]) for p in pieces} == set(music.REGISTERS)
    assert 0.15 < np.mean([p["counter"] for p in pieces]) < 0.6
    for p in pieces:
        melody = sorted((e["start"], e["end"]) for e in p["events"] if e["role"] == "melody")
        gaps = [b[0] - a[1] for a, b in zip(melody, melody[1:])]
        p["rests"] = max(gaps, default=0) > 0.05
        vel = [e["velocity"] for e in p["events"] if e["role"] == "melody"]
        p["spread"] = max(vel) - min(vel)
        assert all(30 <= v <= 127 for v in vel)
    assert np.mean([p["rests"] for p in pieces]) > 0.5
    assert np.median([p["spread"] for p in pieces]) >= 15       # accents and swells


@pytest.mark.parametrize("seed", [3, 11, 29])
def test_same_notes_in_every_style(seed):
    """Melody identical, and each bar's harmony (pitch classes) identical, in every style
    and every orchestration of it."""
    piece = music.compose(seed, 8.0)
    melody = sorted((e["pitch"], e["start"], e["end"]) for e in piece["events"]
                    if e["role"] == "melody")
    bar = piece["meter"] * 60.0 / piece["tempo"]
    harmony = None
    for k, style in enumerate(music.STYLES):
        for draw in range(3):
            orch = music.orchestrate([seed, k, draw], style, ["a", "b"])
            parts = music.arrange(piece, style, 8.0, orch)
            assert sorted((p, s, e) for _, _, p, _, s, e in parts["melody"]) == melody
            pcs = {}                        # whole bars: an arpeggio may be cut off at the end
            for _, _, p, _, s, _ in parts["chords"]:
                if int(s / bar + 0.01) < int(8.0 / bar):
                    pcs.setdefault(int(s / bar + 0.01), set()).add(p % 12)
            if harmony is None:
                harmony = pcs
            assert pcs == harmony, (style, orch["chord_texture"])
            assert all(0 <= s < e for *_, s, e in sum(parts.values(), []))
            assert all(1 <= v <= 127 for _, _, _, v, _, _ in sum(parts.values(), []))


def test_orchestration_draws_from_families_and_fonts():
    for k, style in enumerate(music.STYLES):
        spec = music.STYLES[style]
        draws = [music.orchestrate([5, k, i], style, ["a", "b", "c"], [1, 1, 1])
                 for i in range(40)]
        for part in ("melody", "chords", "bass"):
            programs = {d["parts"][part]["program"] for d in draws}
            assert programs <= set(spec[part]) and len(programs) >= 2, (style, part)
        fonts = {d["parts"][part]["font"] for d in draws for part in d["parts"]}
        assert fonts == {"a", "b", "c"}
        gains = [d["parts"]["melody"]["gain"] for d in draws]
        assert max(gains) / min(gains) > 10 ** (music.LEVEL_DB / 20)   # levels vary
        assert ("drums" in draws[0]["parts"]) == bool(spec["drums"])
    only = music.orchestrate(1, "piano", ["a", "b"], [1, 0])
    assert {p["font"] for p in only["parts"].values()} == {"a"}
