"""The picture `transfer.py --plot` writes: two log-mels side by side as a PNG, with a
hand-written colour map and PNG encoder (no plotting library).

    log-mels (n_mels, T) x 2 -> RGB (2 n_mels, 2 W + gap, 3) -> PNG bytes
"""
import struct
import zlib
from pathlib import Path

import numpy as np

import autoencoder as ae_lib

# A magma-like colour map: dark purple (quiet) to pale yellow (loud), linear between these.
COLOURS = np.array([[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97],
                    [252, 253, 191]], dtype=np.float64)


def colourise(values, lo, hi):
    """(H, W) values -> (H, W, 3) uint8 through COLOURS, lo and hi at its ends."""
    x = np.clip((values - lo) / (hi - lo), 0, 1) * (len(COLOURS) - 1)
    i = np.minimum(x.astype(int), len(COLOURS) - 2)
    frac = (x - i)[..., None]
    return ((1 - frac) * COLOURS[i] + frac * COLOURS[i + 1]).round().astype(np.uint8)


def spectrogram_image(source, output, max_width=1000, gap=4):
    """Two log-mels (n_mels, T) side by side as RGB (2 n_mels, 2 W + gap, 3): low
    frequencies at the bottom, time averaged down to at most max_width columns each."""
    def panel(spec):
        k = -(-spec.shape[1] // max_width)
        spec = np.pad(spec, ((0, 0), (0, -spec.shape[1] % k)), mode="edge")
        spec = spec.reshape(spec.shape[0], -1, k).mean(2)
        return np.repeat(spec[::-1], 2, axis=0)                 # (2 n_mels, W), low at bottom
    a, b = panel(source), panel(output)
    hi = max(a.max(), b.max(), ae_lib.SILENCE + 1)
    sep = np.full((a.shape[0], gap, 3), 255, np.uint8)
    return np.concatenate([colourise(a, ae_lib.SILENCE, hi), sep,
                           colourise(b, ae_lib.SILENCE, hi)], axis=1)


def write_png(path, rgb):
    """An 8-bit RGB image (H, W, 3) as PNG: signature, IHDR, one zlib IDAT of rows that
    each start with filter byte 0, IEND; every chunk is length, type, data, CRC-32."""
    H, W, _ = rgb.shape

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    rows = np.concatenate([np.zeros((H, 1), np.uint8), rgb.reshape(H, 3 * W)], axis=1)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n"
                           + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
                           + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
                           + chunk(b"IEND", b""))
