"""The picture `transfer.py --plot` writes: the source's and the output's log-mels side by
side, with time (s) and frequency (Hz) axes, titles and a colour scale (dB), drawn into
an RGB array with a hand-written colour map, 5 x 7 bitmap font and PNG encoder (no
plotting library).

    log-mels (n_mels, T) x 2 -> RGB (H, W, 3) uint8 -> PNG bytes
"""
import struct
import zlib

import numpy as np

import autoencoder as ae_lib
from stft import hz_to_mel, mel_to_hz

# A magma-like colour map: dark purple (quiet) to pale yellow (loud), linear between these.
COLOURS = np.array([[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97],
                    [252, 253, 191]], dtype=np.float64)
INK, PAPER = np.array([30, 30, 30], np.uint8), np.array([255, 255, 255], np.uint8)
PANEL_WIDTH = 600        # columns per log-mel at most (time is averaged down to fit)
ROW_SCALE = 2            # pixels per mel band
LEFT, BOTTOM, TOP, GAP, BAR = 48, 30, 26, 16, 70     # margins, in pixels
HZ_TICKS = (50, 100, 200, 500, 1000, 2000, 4000, 8000, 16000)
SECOND_STEPS = (0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800)

# The 5 x 7 font of the HD44780 character ROM: per glyph, 7 rows of 5 bits (MSB left).
FONT = dict(zip(
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz .,:-_()/+?'%",
    """0E11131519110E 040C040404040E 0E11010204081F 1F02040201110E 02060A121F0202
    1F101E0101110E 0608101E11110E 1F010204080808 0E11110E11110E 0E11110F01020C
    0E1111111F1111 1E11111E11111E 0E11101010110E 1C12111111121C 1F10101E10101F
    1F10101E101010 0E11101711110F 1111111F111111 0E04040404040E 0702020202120C
    11121418141211 1010101010101F 111B1515111111 11111915131111 0E11111111110E
    1E11111E101010 0E11111115120D 1E11111E141211 0F10100E01011E 1F040404040404
    1111111111110E 11111111110A04 1111111515150A 11110A040A1111 1111110A040404
    1F01020408101F 00000E010F110F 1010161911111E 00000E1010110E 01010D1311110F
    00000E111F100E 0609081C080808 000F11110F010E 10101619111111 04000C0404040E
    0200060202120C 10101214181412 0C04040404040E 00001A15151111 00001619111111
    00000E1111110E 00001E111E1010 00000D130F0101 00001619101010 00000E100E011E
    08081C08080906 0000111111130D 00001111110A04 0000111115150A 0000110A040A11
    000011110F010E 00001F0204081F 00000000000000 00000000000C0C 000000000C0408
    000C0C000C0C00 0000001F000000 0000000000001F 02040808080402 08040202020408
    00010204081000 0004041F040400 0E110102040004 0C040800000000 18190204081303""".split()))


# Letters with descenders take an 8th row (the ROM's 5 x 8 cell).
FONT.update(g="00000F11110F010E", j="020006020202120C", p="00001E11111E1010",
            q="00000F11110F0101", y="00001111110F010E")


def glyph(char):
    """(8, 5) bool pixels of a character ('?' for those the font lacks)."""
    rows = bytes.fromhex(FONT.get(char, FONT["?"]).ljust(16, "0"))
    return np.array([[(r >> (4 - c)) & 1 for c in range(5)] for r in rows], bool)


def draw_text(img, x, y, text, scale=1, colour=INK, anchor="left"):
    """Write text into img (H, W, 3) with its top at row y; x is its left edge, centre or
    right edge (anchor); what falls outside the image is clipped."""
    width = (6 * len(text) - 1) * scale
    x -= {"left": 0, "centre": width // 2, "right": width}[anchor]
    for i, char in enumerate(text):
        pixels = np.kron(glyph(char), np.ones((scale, scale), bool))
        r, c = np.nonzero(pixels)
        r, c = r + y, c + x + 6 * scale * i
        keep = (r >= 0) & (r < img.shape[0]) & (c >= 0) & (c < img.shape[1])
        img[r[keep], c[keep]] = colour


def colourise(values, lo, hi):
    """(H, W) values -> (H, W, 3) uint8 through COLOURS, lo and hi at its ends."""
    x = np.clip((values - lo) / (hi - lo), 0, 1) * (len(COLOURS) - 1)
    i = np.minimum(x.astype(int), len(COLOURS) - 2)
    frac = (x - i)[..., None]
    return ((1 - frac) * COLOURS[i] + frac * COLOURS[i + 1]).round().astype(np.uint8)


def panel(spec, max_width=PANEL_WIDTH):
    """(n_mels, T) -> ((ROW_SCALE n_mels, W) image rows, low frequencies at the bottom;
    frames per column k): time averaged down to at most max_width columns."""
    k = -(-spec.shape[1] // max_width)
    spec = np.pad(spec, ((0, 0), (0, -spec.shape[1] % k)), mode="edge")
    spec = spec.reshape(spec.shape[0], -1, k).mean(2)
    return np.repeat(spec[::-1], ROW_SCALE, axis=0), k


def hz_label(f):
    return f"{f // 1000}k" if f >= 1000 else str(f)


def time_ticks(seconds, most=8):
    step = next((s for s in SECOND_STEPS if seconds / s <= most), SECOND_STEPS[-1])
    return step, np.arange(0, seconds + 1e-9, step)


def second_label(t, step):
    if t >= 60 and step >= 15:
        return f"{int(t // 60)}:{int(t % 60):02d}"
    return f"{t:g}"


def figure(source, output, audio, titles=("source", "output")):
    """The --plot picture, RGB (H, W, 3) uint8: two log-mels (n_mels, T) with axes (time in
    seconds below, frequency in Hz at the left, on the mel scale the spectrograms use),
    titles above and a colour scale in dB at the right. audio: the config.AudioConfig of
    the log-mels (rate, hop, mel range, normalisation)."""
    (a, k), (b, _) = panel(source), panel(output)
    hi = max(a.max(), b.max(), ae_lib.SILENCE + 1)
    lo = ae_lib.SILENCE
    H, W = a.shape[0], a.shape[1]
    img = np.full((TOP + H + BOTTOM, LEFT + 2 * W + GAP + BAR, 3), PAPER, np.uint8)
    n_mels = source.shape[0]
    fmax = audio.fmax or audio.sample_rate / 2
    mels = np.linspace(float(hz_to_mel(audio.fmin)), float(hz_to_mel(fmax)), n_mels + 2)[1:-1]
    centres = np.array([float(mel_to_hz(m)) for m in mels])            # band centres (Hz)
    seconds = source.shape[1] * audio.hop / audio.sample_rate
    step, ticks = time_ticks(seconds)
    for p, (spec, title) in enumerate(zip((a, b), titles)):
        x0 = LEFT + p * (W + GAP)
        img[TOP:TOP + H, x0:x0 + W] = colourise(spec, lo, hi)
        draw_text(img, x0 + W // 2, 4, title[:max(1, W // 12)], scale=2, anchor="centre")
        for t in ticks:                                     # time axis
            x = x0 + min(int(t * audio.sample_rate / audio.hop / k), W - 1)
            img[TOP + H:TOP + H + 4, x] = INK
            draw_text(img, x, TOP + H + 6, second_label(t, step), anchor="centre")
        draw_text(img, x0 + W // 2, TOP + H + 17, "time (s)", anchor="centre")
        img[TOP + H, x0:x0 + W] = INK
    last = TOP + H + 20
    for f in HZ_TICKS:                                      # frequency axis (left panel)
        y = TOP + H - 1 - int(np.interp(f, centres, np.arange(n_mels)) * ROW_SCALE)
        if centres[0] <= f <= centres[-1] and last - y >= 11:     # labels apart
            last = y
            img[y, LEFT - 4:LEFT] = INK
            draw_text(img, LEFT - 6, y - 3, hz_label(f), anchor="right")
    draw_text(img, 2, TOP - 10, "Hz")
    img[TOP:TOP + H, LEFT - 1] = INK
    x0 = LEFT + 2 * W + GAP + 8                             # colour scale
    values = np.linspace(hi, lo, H)[:, None].repeat(12, 1)
    img[TOP:TOP + H, x0:x0 + 12] = colourise(values, lo, hi)
    db_per_unit = 20 / np.log(10) * audio.norm_std         # normalised log-mel -> dB
    top_db = (hi * audio.norm_std + audio.norm_mean) * 20 / np.log(10)
    draw_text(img, x0 - 4, TOP - 10, "dB")
    for db in np.arange(np.floor(top_db / 20) * 20, top_db - (hi - lo) * db_per_unit, -20):
        y = TOP + int((top_db - db) / ((hi - lo) * db_per_unit) * (H - 1))
        img[y, x0 + 12:x0 + 16] = INK
        draw_text(img, x0 + 18, y - 3, f"{db:.0f}")
    return img


def png_bytes(rgb):
    """An 8-bit RGB image (H, W, 3) as PNG: signature, IHDR, one zlib IDAT of rows that
    each start with filter byte 0, IEND; every chunk is length, type, data, CRC-32."""
    H, W, _ = rgb.shape

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    rows = np.concatenate([np.zeros((H, 1), np.uint8), rgb.reshape(H, 3 * W)], axis=1)
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + chunk(b"IEND", b""))
