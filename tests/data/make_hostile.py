"""Writes the hostile-files corpus in tests/data/hostile/ and its manifest (what each file must be refused for).

    .venv/bin/python tests/data/make_hostile.py

Every file here must be refused by an upload with a clear reason, with bounded server memory and the
dataset's earlier content untouched (tests/api/test_hostile.py). Regenerate after changing this script.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent / "hostile"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 30_000) -> bytes:
    """A valid PNG of side x side grey zeros: about 900 MB decoded from well under 1 MB."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IEND", b""))


def gif_bomb() -> bytes:
    """A GIF whose logical screen and frame claim 65535 x 65535 pixels."""
    out = io.BytesIO()
    Image.new("P", (64, 64)).save(out, "GIF")
    data = bytearray(out.getvalue())
    data[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen
    frame = data.index(b"\x2c")  # image descriptor
    data[frame + 5:frame + 9] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def webp_bomb() -> bytes:
    """A WebP (VP8X) header claiming 16383 x 16383 pixels around a tiny image."""
    out = io.BytesIO()
    Image.new("RGB", (16, 16)).save(out, "WEBP", lossless=True)
    small = out.getvalue()
    vp8x = _riff_chunk(b"VP8X", b"\x00\x00\x00\x00" + (16382).to_bytes(3, "little") * 2)
    body = b"WEBP" + vp8x + small[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _riff_chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")


def noise_png(seed: int = 0, side: int = 32) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def jpeg(seed: int = 0, side: int = 128) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def make_zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            if isinstance(name, zipfile.ZipInfo):
                name.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(name, data)
    return out.getvalue()


def symlink_zip() -> bytes:
    info = zipfile.ZipInfo("cats/passwd.png")
    info.external_attr = 0o120777 << 16
    return make_zip([(info, b"/etc/passwd")])


# name -> (bytes, label sent with the upload or None, expected refusal codes (any of))
def corpus() -> dict[str, tuple[bytes, str | None, list[str]]]:
    ratio_bomb = make_zip([("cats/zeros.png", b"\x00" * (40 * 1024 * 1024))])
    long_name = "a" * 240 + ".png"
    return {
        "bomb.png": (png_bomb(), "cats", ["decompression_bomb", "too_large"]),
        "bomb.gif": (gif_bomb(), "cats", ["decompression_bomb", "too_large", "corrupt", "truncated"]),
        "bomb.webp": (webp_bomb(), "cats", ["decompression_bomb", "too_large", "corrupt", "truncated"]),
        "giant-dimensions.png": (png_header_only(200_000, 200_000), "cats", ["decompression_bomb", "too_large"]),
        "truncated.jpg": (jpeg(1)[:700], "cats", ["truncated", "corrupt"]),
        "truncated.png": (noise_png(2, 64)[:300], "cats", ["truncated", "corrupt"]),
        "empty.jpg": (b"", "cats", ["empty_file"]),
        "text-named.png": (b"hello, I am a text file pretending to be a picture\n" * 10, "cats", ["not_an_image"]),
        "script-named.jpg": (b"#!/bin/sh\nrm -rf /\n", "cats", ["not_an_image"]),
        "polyglot-zip-in-jpg.jpg": (jpeg(3) + make_zip([("cats/x.png", noise_png(4))]), "cats",
                                    ["not_an_image", "corrupt", "unsupported_format", "no_label"]),
        "pdf-named.png": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "cats",
                          ["not_an_image", "unsupported_format"]),
        "svg-named.png": (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "cats",
                          ["not_an_image", "unsupported_format"]),
        "tiny.png": (noise_png(5, 3), "cats", ["too_small"]),
        "zip-slip.zip": (make_zip([("../../evil.png", noise_png(6))]), None, ["unsafe_path"]),
        "zip-absolute.zip": (make_zip([("/etc/cats/evil.png", noise_png(7))]), None, ["unsafe_path"]),
        "zip-drive-letter.zip": (make_zip([("C:\\\\cats\\\\evil.png", noise_png(8))]), None,
                                 ["unsafe_path", "no_class_folder", "bad_label"]),
        "zip-symlink.zip": (symlink_zip(), None, ["symlink"]),
        "zip-ratio-bomb.zip": (ratio_bomb, None, ["suspicious_ratio", "entry_too_large"]),
        "zip-nested.zip": (make_zip([("cats/inner.zip", ratio_bomb)]), None, ["nested_archive"]),
        "zip-empty.zip": (make_zip([]), None, ["empty_archive"]),
        "zip-corrupt.zip": (b"PK\x03\x04" + b"\x00" * 200, None, ["not_a_zip", "corrupt_archive"]),
        "unicode-\u00e9t\u00e9-\u6771\u4eac-\U0001f426.png": (b"not really an image", "cats", ["not_an_image"]),
        long_name: (b"not an image either", "cats", ["not_an_image"]),
    }


def main() -> None:
    shutil.rmtree(HERE, ignore_errors=True)
    HERE.mkdir(parents=True)
    manifest = {}
    for name, (data, label, codes) in corpus().items():
        (HERE / name).write_bytes(data)
        manifest[name] = {"label": label, "codes": codes, "bytes": len(data)}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False, sort_keys=True))
    total = sum(m["bytes"] for m in manifest.values())
    print(f"wrote {len(manifest)} hostile files ({total / 2**20:.1f} MiB) to {HERE}", file=sys.stderr)


if __name__ == "__main__":
    main()
