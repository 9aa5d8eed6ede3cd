"""Builders of real test files shared by every test: images in every accepted format and crafted zip archives."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image


def noise_image(width: int = 64, height: int = 48, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    shape = (height, width, channels) if channels > 1 else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **params)
    return out.getvalue()


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    return encode(noise_image(width, height, seed=seed), "JPEG", quality=90)


def png_bytes(size: int = 32, seed: int = 0, mode: str = "RGB") -> bytes:
    return encode(noise_image(size, size, mode=mode, seed=seed), "PNG")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_from_rows(width: int, height: int, bit_depth: int, color_type: int, row: bytes) -> bytes:
    """A valid PNG whose every row is ``row`` (filter byte included), compressed as it goes,
    so huge-but-compressible images are built without holding their pixels in memory."""
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def make_zip(
    entries: dict[str, bytes] | list[tuple[str | zipfile.ZipInfo, bytes]], compression: int = zipfile.ZIP_DEFLATED
) -> bytes:
    out = io.BytesIO()
    items = entries.items() if isinstance(entries, dict) else entries
    with zipfile.ZipFile(out, "w", compression=compression) as zf:
        for name, data in items:
            zf.writestr(name, data)
    return out.getvalue()


def patch_sizes(archive: bytes, name: str, *, file_size: int) -> bytes:
    """Rewrite the uncompressed size an entry declares, in its local and central headers."""
    data = bytearray(archive)
    raw_name = name.encode()
    local = data.find(b"PK\x03\x04")
    while local != -1:
        n = struct.unpack_from("<H", data, local + 26)[0]
        if bytes(data[local + 30 : local + 30 + n]) == raw_name:
            struct.pack_into("<I", data, local + 22, file_size)
        local = data.find(b"PK\x03\x04", local + 4)
    central = data.find(b"PK\x01\x02")
    while central != -1:
        n = struct.unpack_from("<H", data, central + 28)[0]
        if bytes(data[central + 46 : central + 46 + n]) == raw_name:
            struct.pack_into("<I", data, central + 24, file_size)
        central = data.find(b"PK\x01\x02", central + 4)
    return bytes(data)


def patch_central(
    archive: bytes, name: str, *, offset: int | None = None, clear_utf8_flag: bool = False, set_flags: int = 0
) -> bytes:
    """Rewrite fields of an entry's central header (and its local flag) to craft hostile zips."""
    data = bytearray(archive)
    raw_name = name.encode()
    central = data.find(b"PK\x01\x02")
    while central != -1:
        n = struct.unpack_from("<H", data, central + 28)[0]
        if bytes(data[central + 46 : central + 46 + n]) == raw_name:
            if offset is not None:
                struct.pack_into("<I", data, central + 42, offset)
            if clear_utf8_flag or set_flags:
                local_offset = struct.unpack_from("<I", data, central + 42)[0]
                for pos in (central + 8, local_offset + 6):
                    flags = struct.unpack_from("<H", data, pos)[0]
                    flags = (flags & ~0x800 if clear_utf8_flag else flags) | set_flags
                    struct.pack_into("<H", data, pos, flags)
        central = data.find(b"PK\x01\x02", central + 4)
    return bytes(data)


def patch_name(archive: bytes, old: str, new: bytes) -> bytes:
    """Replace an entry's raw name (same length) in both headers: names zipfile cannot write."""
    raw = old.encode()
    assert len(raw) == len(new)
    return archive.replace(raw, new)
