"""Validation and decoding of untrusted images with Pillow, and thumbnails.

Every upload goes through :func:`decode_image` before it is accepted, so a stored image is
known to decode completely: later training or serving never meets a broken file.

Safety choices, and why:

- Only the Pillow plugins for JPEG, PNG, WebP, BMP, GIF and TIFF are tried (``formats=`` on
  ``Image.open``): the many other parsers Pillow ships never see user bytes.
- The whole image is decoded (``load()``) with ``ImageFile.LOAD_TRUNCATED_IMAGES`` off, so
  a truncated file is refused instead of being padded with grey. That switch is a process
  global; if another module turned it on, decoding refuses to run rather than accept
  damaged files quietly.
- Decompression bombs: the pixel count read from the header is checked against our own cap
  *before* any pixel is decoded, so memory stays bounded by ``max_pixels``. This is thread
  safe because it touches no global: neither ``Image.MAX_IMAGE_PIXELS`` nor the warning
  filters (``warnings.catch_warnings`` mutates process-wide state and races between
  threads). Pillow's own check stays on as a backstop: ``DecompressionBombError`` (and the
  warning, where a caller runs with warnings as errors) is mapped to a rejection. Our cap
  is clamped to Pillow's ``MAX_IMAGE_PIXELS``, so any ``DecompressionBombWarning`` Pillow
  emits while opening concerns an image we refuse anyway.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import IO, Final

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features

ACCEPTED_FORMATS: Final = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# Pillow reports multi-picture JPEGs from cameras as MPO; they are JPEGs to a user.
_FORMAT_ALIASES: Final = {"MPO": "JPEG"}
_ACCEPTED_LIST: Final = "JPEG, PNG, WebP, BMP, GIF or TIFF"
# Below this many file bytes per declared pixel, an over-size image is reported as a bomb:
# real photos take far more, only crafted files claim huge sizes in a few bytes.
_BOMB_BYTES_PER_PIXEL: Final = 1 / 1000

ImageSource = bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes]


class RejectReason(StrEnum):
    EMPTY = "empty_file"
    FILE_TOO_LARGE = "file_too_large"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TRUNCATED = "truncated"
    CORRUPT = "corrupt"
    TOO_SMALL = "too_small"
    TOO_LARGE = "too_large"
    DECOMPRESSION_BOMB = "decompression_bomb"


class ImageRejected(ValueError):
    """An upload that is not a usable image; ``sentence`` is written for the person uploading."""

    def __init__(self, code: RejectReason, sentence: str) -> None:
        super().__init__(sentence)
        self.code = code
        self.sentence = sentence


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_pixels: int = 40_000_000
    min_side: int = 8
    max_bytes: int | None = 50 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.min_side < 1:
            raise ValueError("image limits must be positive")


DEFAULT_LIMITS: Final = ImageLimits()


@dataclass(frozen=True, slots=True, eq=False)
class DecodedImage:
    """A fully decoded image, upright (EXIF applied), in mode ``RGB`` or ``L``."""

    image: Image.Image
    width: int
    height: int
    format: str
    mode: str


# Signatures of formats people commonly try, so the refusal can name them.
_KNOWN_OTHER_FORMATS: Final = (
    (b"\x00\x00\x01\x00", "an icon (ICO)"),
    (b"\x00\x00\x02\x00", "a cursor (CUR)"),
    (b"8BPS", "a Photoshop document (PSD)"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\xff\x0a", "a JPEG XL image"),
    (b"\x00\x00\x00\x0cJXL ", "a JPEG XL image"),
    (b"qoif", "a QOI image"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xffO\xffQ", "a JPEG 2000 image"),
)
_ACCEPTED_SIGNATURES: Final = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _sniff(head: bytes) -> tuple[str | None, str | None]:
    """(accepted format, description of another known format) from the first bytes."""
    for signature, name in _ACCEPTED_SIGNATURES:
        if head.startswith(signature):
            return name, None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP", None
    for signature, description in _KNOWN_OTHER_FORMATS:
        if head.startswith(signature):
            return None, description
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return None, "an AVIF image"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return None, "a HEIC photo (the iPhone format)"
        return None, "a video or MP4-family file"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<svg", b"<?xml")) and b"<svg" in head.lower():
        return None, "an SVG drawing"
    return None, None


def _require_strict_truncation() -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was switched on by some module; refusing to "
            "validate uploads because truncated images would be accepted. Find and remove it."
        )


@contextlib.contextmanager
def _opened(source: ImageSource) -> Iterator[tuple[IO[bytes], int]]:
    """A seekable binary file positioned at the start of the image, and its byte length."""
    if isinstance(source, bytes | bytearray | memoryview):
        yield io.BytesIO(source), len(source)
    elif isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            yield f, os.fstat(f.fileno()).st_size
    else:
        start = source.tell()
        end = source.seek(0, io.SEEK_END)
        source.seek(start)
        yield _Window(source, start), end - start


class _Window(io.RawIOBase):
    """A file seen from ``start`` on, so Pillow's seek(0) means the start of the image."""

    def __init__(self, raw: IO[bytes], start: int) -> None:
        self._raw, self._start = raw, start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            offset += self._start
        return self._raw.seek(offset, whence) - self._start

    def tell(self) -> int:
        return self._raw.tell() - self._start

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.3g}"


def _check_dimensions(width: int, height: int, nbytes: int, limits: ImageLimits) -> None:
    if min(width, height) < limits.min_side:
        raise ImageRejected(
            RejectReason.TOO_SMALL,
            f"The image is only {width} × {height} pixels; images need at least {limits.min_side} pixels on each side.",
        )
    cap = limits.max_pixels
    if Image.MAX_IMAGE_PIXELS is not None:
        cap = min(cap, int(Image.MAX_IMAGE_PIXELS))
    pixels = width * height
    if pixels <= cap:
        return
    if nbytes < pixels * _BOMB_BYTES_PER_PIXEL:
        raise ImageRejected(
            RejectReason.DECOMPRESSION_BOMB,
            f"This small file claims to be a {width} × {height} pixel image, a trick used to "
            "exhaust a server's memory (a “decompression bomb”), so it was refused.",
        )
    raise ImageRejected(
        RejectReason.TOO_LARGE,
        f"The image is {width} × {height} pixels ({_megapixels(pixels)} megapixels); the limit "
        f"is {_megapixels(cap)} megapixels. Please make it smaller and upload it again.",
    )


def _bomb() -> ImageRejected:
    return ImageRejected(
        RejectReason.DECOMPRESSION_BOMB,
        "This file claims to be an enormous image, a trick used to exhaust a server's memory "
        "(a “decompression bomb”), so it was refused.",
    )


def _unidentified(head: bytes) -> ImageRejected:
    accepted, other = _sniff(head)
    if accepted is not None:
        return ImageRejected(
            RejectReason.CORRUPT,
            f"The file starts like a {accepted} image but is damaged and cannot be read.",
        )
    if other is not None:
        return ImageRejected(
            RejectReason.UNSUPPORTED_FORMAT,
            f"This file is {other}, which is not accepted; please upload {_ACCEPTED_LIST} images.",
        )
    return ImageRejected(
        RejectReason.NOT_AN_IMAGE,
        f"This file is not an image (whatever its name says); please upload {_ACCEPTED_LIST} images.",
    )


def _decode_error(exc: BaseException, fmt: str) -> ImageRejected:
    message = str(exc).lower()
    if isinstance(exc, EOFError) or "truncated" in message or "premature end" in message:
        return ImageRejected(
            RejectReason.TRUNCATED,
            f"The {fmt} file is incomplete (cut off before its end), probably from an interrupted download or copy.",
        )
    return ImageRejected(RejectReason.CORRUPT, f"The {fmt} file is damaged and cannot be read.")


def _orient(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the pixels as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF is common and harmless to the pixels
        return img.copy()


def _composite_on_white(img: Image.Image, mode: str) -> Image.Image:
    """Transparent pixels become white: PIL's default (black) would change what a model sees."""
    alpha_mode = "LA" if mode == "L" else "RGBA"
    with_alpha = img.convert(alpha_mode)
    background = Image.new(mode, img.size, 255 if mode == "L" else (255, 255, 255))
    background.paste(with_alpha.convert(mode), mask=with_alpha.getchannel("A"))
    return background


def _palette_is_grey(img: Image.Image) -> bool:
    palette = img.getpalette("RGB") or []
    colors = img.getcolors(256) if img.mode == "P" else None  # PA counts (index, alpha) pairs
    used = {index for _, index in colors} if colors else range(len(palette) // 3)
    return all(palette[3 * i] == palette[3 * i + 1] == palette[3 * i + 2] for i in used if 3 * i + 2 < len(palette))


def _high_depth_grey_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit and float grey to 8 bits by scaling; PIL's convert("L") clips instead."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        out = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    else:
        out = (np.clip(arr.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
    return Image.fromarray(out)


def _to_rgb_or_l(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("RGB", "L"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I") or mode == "F":
        return _high_depth_grey_to_l(img)
    if mode in ("LA", "La"):
        return _composite_on_white(img.convert("LA"), "L")
    if mode in ("P", "PA"):
        target = "L" if _palette_is_grey(img) else "RGB"
        if mode == "PA" or "transparency" in img.info:
            return _composite_on_white(img, target)
        return img.convert(target)
    if mode in ("RGBA", "RGBa"):
        return _composite_on_white(img.convert("RGBA"), "RGB")
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX


def _decode(source: ImageSource, limits: ImageLimits, draft_side: int | None) -> DecodedImage:
    _require_strict_truncation()
    with _opened(source) as (fp, nbytes):
        if nbytes == 0:
            raise ImageRejected(RejectReason.EMPTY, "The file is empty (0 bytes).")
        if limits.max_bytes is not None and nbytes > limits.max_bytes:
            raise ImageRejected(
                RejectReason.FILE_TOO_LARGE,
                f"The file is {nbytes / 1e6:.0f} MB; the limit is {limits.max_bytes / 1e6:.0f} MB.",
            )
        head = fp.read(64)
        fp.seek(0)
        try:
            img = Image.open(fp, formats=ACCEPTED_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _bomb() from None
        except UnidentifiedImageError:
            raise _unidentified(head) from None
        except Exception as exc:  # plugins raise SyntaxError, ValueError, struct.error…
            accepted = _sniff(head)[0] or "image"
            raise _decode_error(exc, accepted) from None
        with img:
            fmt = _FORMAT_ALIASES.get(img.format or "", img.format or "image")
            _check_dimensions(img.width, img.height, nbytes, limits)
            if draft_side is not None and fmt == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale in the DCT; both sides stay >= draft_side.
                img.draft(None, (draft_side, draft_side))
            try:
                img.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise _bomb() from None
            except Exception as exc:
                raise _decode_error(exc, fmt) from None
            try:
                result = _to_rgb_or_l(_orient(img))
            except Exception as exc:  # a mode Pillow cannot convert is a file we cannot use
                raise _decode_error(exc, fmt) from None
            if result is img:
                result = img.copy()  # closing ``img`` releases its pixels
    return DecodedImage(result, result.width, result.height, fmt, result.mode)


def decode_image(source: ImageSource, *, limits: ImageLimits = DEFAULT_LIMITS) -> DecodedImage:
    """Fully decode an untrusted image or raise :class:`ImageRejected` with a plain reason.

    ``source`` is bytes, a path or a seekable binary file (read from its current position).
    """
    return _decode(source, limits, None)


def decode_for_model(source: ImageSource, min_side: int, *, limits: ImageLimits = DEFAULT_LIMITS) -> DecodedImage:
    """Decode for a model that wants about ``min_side`` pixels: far cheaper on big photos.

    JPEGs are decoded at a reduced DCT scale (draft mode) and any format is then reduced by
    an integer box filter, always keeping both sides >= ``min_side`` (or the original size
    when it is smaller), so the caller's own resize still sees enough pixels. The same
    validation as :func:`decode_image` applies.
    """
    if min_side < 1:
        raise ValueError("min_side must be positive")
    decoded = _decode(source, limits, min_side)
    img = decoded.image
    factor = min(img.width, img.height) // min_side
    if factor >= 2:
        img = img.reduce(factor)
    return DecodedImage(img, img.width, img.height, decoded.format, img.mode)


THUMBNAIL_FORMAT: Final = "WEBP" if features.check("webp") else "JPEG"
THUMBNAIL_MEDIA_TYPE: Final = "image/webp" if THUMBNAIL_FORMAT == "WEBP" else "image/jpeg"


def make_thumbnail(
    img: Image.Image, max_side: int = 256, *, format: str = THUMBNAIL_FORMAT, quality: int = 80
) -> bytes:
    """Encode a small preview whose longer side is at most ``max_side`` (aspect kept).

    Meant for images from :func:`decode_image` (RGB or L); other modes are converted the
    same way first, so transparency turns white rather than black.
    """
    if format not in ("WEBP", "JPEG"):
        raise ValueError(f"thumbnail format must be WEBP or JPEG, not {format!r}")
    thumb = _to_rgb_or_l(img)
    thumb = thumb.copy() if thumb is img else thumb
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    if format == "WEBP":
        thumb.save(out, "WEBP", quality=quality, method=4)
    else:
        thumb.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()
