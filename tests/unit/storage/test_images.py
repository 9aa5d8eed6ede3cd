from __future__ import annotations

import io
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pigeonhole.storage.images import (
    ImageLimits,
    ImageRejected,
    RejectReason,
    decode_for_model,
    decode_image,
    make_thumbnail,
)
from tests.factories import encode, jpeg_bytes, noise_image, png_from_rows, png_header_only


def rejected(data: bytes | Path, **kwargs: object) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, **kwargs)  # type: ignore[arg-type]
    assert info.value.sentence and info.value.sentence[0].isupper() and info.value.sentence.endswith(".")
    return info.value


# ---- accepted images ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("JPEG", {"quality": 90}),
        ("PNG", {}),
        ("WEBP", {"quality": 90}),
        ("BMP", {}),
        ("GIF", {}),
        ("TIFF", {"compression": "tiff_deflate"}),
    ],
)
def test_accepted_formats_decode_to_rgb(fmt: str, params: dict[str, object]) -> None:
    decoded = decode_image(encode(noise_image(40, 30), fmt, **params))
    assert (decoded.width, decoded.height, decoded.format) == (40, 30, fmt)
    assert decoded.mode == decoded.image.mode == "RGB"
    decoded.image.load()  # detached from the (closed) source file


def test_grey_sources_stay_grey() -> None:
    for data in (
        encode(noise_image(20, 20, "L"), "PNG"),
        encode(noise_image(20, 20, "L"), "JPEG"),
        encode(Image.new("1", (20, 20), 1), "PNG"),
        encode(Image.new("L", (20, 20), 77).convert("P"), "PNG"),
    ):
        assert decode_image(data).mode == "L"


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    arr = np.array([[0, 32768, 65535] * 4] * 12, dtype=np.uint16)
    decoded = decode_image(encode(Image.fromarray(arr), "PNG"))
    assert decoded.mode == "L"
    assert [decoded.image.getpixel((i, 0)) for i in range(3)] == [0, 128, 255]


def test_real_photos_and_the_gif_placeholder_decode(real_photos: dict[str, bytes]) -> None:
    for name, data in real_photos.items():
        decoded = decode_image(data)
        assert decoded.mode in ("RGB", "L")
        assert decoded.format == ("GIF" if name.endswith(".gif") else "JPEG")
        assert min(decoded.width, decoded.height) >= 8


def test_reads_a_file_object_from_its_current_position() -> None:
    data = jpeg_bytes(30, 20)
    stream = io.BytesIO(b"some prefix" + data)
    stream.seek(len(b"some prefix"))
    assert decode_image(stream).width == 30


def test_reads_a_path(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(encode(noise_image(12, 9), "PNG"))
    assert (decode_image(path).width, decode_image(str(path)).height) == (12, 9)


def test_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    pixel = decode_image(out.getvalue()).image.getpixel((8, 8))
    assert pixel[0] > 200 and pixel[2] < 50


def test_cmyk_jpeg_becomes_rgb() -> None:
    decoded = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"))
    assert decoded.mode == "RGB"
    red, green, blue = decoded.image.getpixel((8, 8))
    assert red > 200 and green < 60 and blue < 60


# ---- EXIF orientation and transparency ---------------------------------------------------------------


def with_orientation(img: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, fmt, exif=exif, quality=95)


def test_exif_orientation_is_applied() -> None:
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # left half red as stored on disk
    decoded = decode_image(with_orientation(stored, 6))  # camera held upright: rotate 90° cw
    assert (decoded.width, decoded.height) == (20, 40)
    top, bottom = decoded.image.getpixel((10, 5)), decoded.image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the stored left side is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_exif_orientation_on_a_real_photo(real_photos: dict[str, bytes]) -> None:
    name = next(n for n in real_photos if n.endswith(".jpg"))
    photo = Image.open(io.BytesIO(real_photos[name]))
    decoded = decode_image(with_orientation(photo, 8))
    assert (decoded.width, decoded.height) == (photo.height, photo.width)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_does_not_reject_a_good_image() -> None:
    img = noise_image(20, 10)
    data = encode(img, "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\xff")
    assert decode_image(data).width in (10, 20)


def test_transparency_becomes_white() -> None:
    clear_red = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    half = Image.new("RGBA", (16, 16), (0, 0, 0, 128))
    assert decode_image(encode(clear_red, "PNG")).image.getpixel((3, 3)) == (255, 255, 255)
    r, g, b = decode_image(encode(half, "PNG")).image.getpixel((3, 3))
    assert 120 <= r == g == b <= 135
    grey_alpha = decode_image(encode(Image.new("LA", (16, 16), (0, 0)), "PNG"))
    assert (grey_alpha.mode, grey_alpha.image.getpixel((1, 1))) == ("L", 255)
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([10, 200, 30] + [0, 0, 0] * 255)
    gif = decode_image(encode(palette, "GIF", transparency=0))
    assert gif.image.getpixel((1, 1)) in ((255, 255, 255), 255)


# ---- rejections -----------------------------------------------------------------------------------


def test_text_named_jpg_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "holiday.jpg"
    path.write_text("I am definitely a photo\n" * 20)
    error = rejected(path)
    assert error.code == RejectReason.NOT_AN_IMAGE
    assert "not an image" in error.sentence


def test_empty_file() -> None:
    assert rejected(b"").code == RejectReason.EMPTY


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated_jpeg(fraction: float) -> None:
    data = jpeg_bytes(120, 90)
    error = rejected(data[: int(len(data) * fraction)])
    assert error.code == RejectReason.TRUNCATED
    assert "incomplete" in error.sentence


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.95])
def test_truncated_png(fraction: float) -> None:
    data = encode(noise_image(120, 90), "PNG")
    assert rejected(data[: int(len(data) * fraction)]).code == RejectReason.TRUNCATED


def test_truncated_real_photo(real_photos: dict[str, bytes]) -> None:
    data = max(real_photos.values(), key=len)
    assert rejected(data[: len(data) * 3 // 4]).code == RejectReason.TRUNCATED


def test_damaged_png_is_corrupt() -> None:
    data = bytearray(encode(noise_image(40, 40), "PNG"))
    data[60:80] = bytes(20)  # inside the compressed pixels: the CRC no longer matches
    assert rejected(bytes(data)).code in (RejectReason.CORRUPT, RejectReason.TRUNCATED)


def test_garbage_after_a_valid_signature_is_corrupt() -> None:
    error = rejected(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    assert error.code == RejectReason.CORRUPT
    assert "PNG" in error.sentence


@pytest.mark.parametrize("size", [(1, 1), (7, 100), (100, 7)])
def test_too_small(size: tuple[int, int]) -> None:
    error = rejected(encode(Image.new("RGB", size), "PNG"))
    assert error.code == RejectReason.TOO_SMALL
    assert f"{size[0]} × {size[1]}" in error.sentence


def test_too_large_against_a_configurable_cap() -> None:
    data = encode(noise_image(300, 200), "PNG")
    error = rejected(data, limits=ImageLimits(max_pixels=50_000))
    assert error.code == RejectReason.TOO_LARGE
    assert "300 × 200" in error.sentence and "megapixels" in error.sentence
    assert decode_image(data, limits=ImageLimits(max_pixels=60_000)).width == 300


def test_file_size_cap() -> None:
    data = encode(noise_image(100, 100), "BMP")
    assert rejected(data, limits=ImageLimits(max_bytes=1000)).code == RejectReason.FILE_TOO_LARGE


def test_header_claiming_huge_dimensions_in_a_tiny_file() -> None:
    started = time.perf_counter()
    error = rejected(png_header_only(100_000, 100_000))
    assert error.code == RejectReason.DECOMPRESSION_BOMB
    assert time.perf_counter() - started < 1


def test_decompression_bomb_under_pillows_limit_is_caught_before_decoding() -> None:
    bomb = png_from_rows(7000, 7000, 8, 0, bytes(7001))  # 49 MP of black in ~50 KB
    assert len(bomb) < 100_000
    started = time.perf_counter()
    assert rejected(bomb).code == RejectReason.DECOMPRESSION_BOMB
    assert time.perf_counter() - started < 0.5  # rejected from the header, nothing decoded


def test_decompression_bomb_over_pillows_limit() -> None:
    bomb = png_from_rows(20_000, 20_000, 1, 0, bytes(1 + 20_000 // 8))  # 400 MP, 1 bit deep
    assert rejected(bomb).code == RejectReason.DECOMPRESSION_BOMB


def test_bomb_checks_touch_no_global_state() -> None:
    filters_before = list(warnings.filters)
    limit_before = Image.MAX_IMAGE_PIXELS
    bombs = [png_from_rows(7000, 7000, 8, 0, bytes(7001)), png_header_only(100_000, 100_000)]
    good = jpeg_bytes(64, 64)
    failures: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                rejected(bombs[i % 2])
                assert decode_image(good).width == 64
        except BaseException as exc:  # reported to the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert warnings.filters == filters_before
    assert limit_before == Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("icon.ico", encode(Image.new("RGB", (32, 32)), "ICO"), "icon"),
        ("layers.psd", b"8BPS\x00\x01" + bytes(40), "Photoshop"),
        ("drawing.svg", b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        ("phone.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
        ("inner.zip", b"PK\x03\x04" + bytes(40), "zip"),
    ],
)
def test_other_formats_are_refused_by_name(name: str, data: bytes, expected: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.jpg"  # the extension must not matter
    path.write_bytes(data)
    error = rejected(path)
    assert error.code == RejectReason.UNSUPPORTED_FORMAT
    assert expected in error.sentence and "JPEG, PNG" in error.sentence


def test_pillow_formats_outside_the_list_are_refused() -> None:
    # Pillow can read PCX, but user bytes never reach its parser.
    assert rejected(encode(noise_image(20, 20), "PCX")).code == RejectReason.NOT_AN_IMAGE


def test_refuses_to_run_if_truncated_loading_was_switched_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(jpeg_bytes())


# ---- decode for models, thumbnails ------------------------------------------------------------------


def test_decode_for_model_uses_draft_mode_on_big_photos(real_photos: dict[str, bytes]) -> None:
    data = max(real_photos.values(), key=len)
    full = decode_image(data)
    small = decode_for_model(data, 224)
    assert min(small.width, small.height) >= 224
    assert small.width <= full.width // 2  # decoded at a reduced DCT scale
    assert small.mode == "RGB" and small.format == "JPEG"


def test_decode_for_model_keeps_small_images_and_reduces_other_formats() -> None:
    assert decode_for_model(jpeg_bytes(50, 40), 224).width == 50
    big_png = encode(noise_image(1000, 600), "PNG")
    reduced = decode_for_model(big_png, 100)
    assert (reduced.width, reduced.height) == (167, 100)


def test_decode_for_model_still_rejects_truncated_files() -> None:
    data = jpeg_bytes(800, 600)
    with pytest.raises(ImageRejected) as info:
        decode_for_model(data[: len(data) // 2], 100)
    assert info.value.code == RejectReason.TRUNCATED


@pytest.mark.parametrize("fmt", ["WEBP", "JPEG"])
def test_thumbnail_is_small_and_keeps_aspect(fmt: str, real_photos: dict[str, bytes]) -> None:
    photo = decode_image(max(real_photos.values(), key=len)).image
    data = make_thumbnail(photo, 128, format=fmt)
    thumb = Image.open(io.BytesIO(data))
    assert thumb.format == fmt and max(thumb.size) == 128
    assert abs(thumb.width / thumb.height - photo.width / photo.height) < 0.02
    assert len(data) < 20_000


def test_thumbnail_of_grey_and_transparent_images() -> None:
    assert Image.open(io.BytesIO(make_thumbnail(noise_image(300, 300, "L")))).size == (256, 256)
    clear = make_thumbnail(Image.new("RGBA", (20, 20), (0, 0, 0, 0)), format="JPEG")
    assert Image.open(io.BytesIO(clear)).convert("RGB").getpixel((5, 5)) >= (250, 250, 250)
