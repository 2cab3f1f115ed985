"""The child process that decodes an uploaded image or PDF: `python -I -B decode.py MODE LIMITS`.

Untrusted files are decoded here, never in the server: a decompression bomb, a PDF that
nests without end or a bug in a C decoder costs this process, which caps its own memory,
CPU time and file writes before it reads a byte of the file, and which the parent kills at
its wall-clock limit. It imports neither Django nor the project (it runs with `-I`, so not
even the environment's PYTHONPATH), only Pillow and pypdf.

stdin: the file. stdout: one line of JSON, {"ok": true, ...} or {"ok": false, "message"},
then for an image its re-encoded bytes. Exit status 0 whenever that line was written.
"""

from __future__ import annotations

import io
import json
import logging
import resource
import signal
import sys
import warnings
from typing import Any

from PIL import (
    GifImagePlugin,  # noqa: F401 - every plugin is imported before the limits, not lazily
    Image,
    ImageCms,
    ImageOps,
    ImageSequence,
    JpegImagePlugin,  # noqa: F401
    PngImagePlugin,  # noqa: F401
    TiffImagePlugin,  # noqa: F401 - EXIF is read through it
    WebPImagePlugin,  # noqa: F401
)
from pypdf import PdfReader, overwrite_configuration
from pypdf.errors import LimitReachedError

# The formats the parent may name, as Pillow knows them, and how each is written back.
SAVE_OPTIONS: dict[str, dict[str, Any]] = {
    "PNG": {},
    "JPEG": {"quality": 90},
    "WEBP": {"quality": 90},
    "GIF": {},
}
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


class Refused(Exception):
    """The file is not what it claims or is beyond the limits: said to the user as is."""


def limit_self(memory_bytes: int, cpu_seconds: int) -> None:
    # Set by the child itself, not by preexec_fn: the server has threads, and Python's
    # docs warn that preexec_fn can deadlock the child there.
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    # Nothing to write but stdout (a pipe, which this does not limit).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


# --- images -------------------------------------------------------------------------------


def _frames(image: Image.Image, budget: int) -> list[tuple[Image.Image, int]]:
    """Every frame with its duration, or only the first when the animation is larger than
    `budget` pixels in all (decoding it would cost more than the picture is worth)."""
    if budget <= 0 or getattr(image, "n_frames", 1) <= 1:
        return [(image, 0)]
    frames: list[tuple[Image.Image, int]] = []
    spent = 0
    for frame in ImageSequence.Iterator(image):
        spent += frame.width * frame.height
        if spent > budget:
            image.seek(0)
            return [(image, 0)]
        frames.append((frame.copy(), int(frame.info.get("duration") or 100)))
    return frames


def _shrunk(image: Image.Image, side: int) -> Image.Image:
    if max(image.size) > side:
        image = image.copy()
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return image


def _in_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """Colours kept as they look, without carrying the profile: it is converted to sRGB
    (what browsers assume), or dropped when it cannot be read."""
    if icc and image.mode in ("RGB", "RGBA", "CMYK"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            mode = "RGB" if image.mode == "CMYK" else image.mode
            converted = ImageCms.profileToProfile(image, source, SRGB, outputMode=mode)
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    return image


def _plain(image: Image.Image, fmt: str) -> Image.Image:
    """A mode every output format writes, with no metadata at all (info is where Pillow
    keeps EXIF, XMP, text chunks, comments and the ICC profile; save() reads from it)."""
    alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        image = image.convert("I").point(lambda value: value / 256).convert("L")
    if fmt == "JPEG":
        image = image.convert("L" if image.mode in ("1", "L", "LA") else "RGB")
    elif image.mode not in ("1", "L", "RGB", "RGBA"):
        image = image.convert("RGBA" if alpha else "RGB")
    else:
        image = image.copy()
    image.info = {}
    return image


def image(data: bytes, limits: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    fmt = limits["format"]
    pixels, side = int(limits["max_pixels"]), int(limits["max_side"])
    megapixels = f"{pixels / 1_000_000:g}"
    # Pillow warns past MAX_IMAGE_PIXELS and refuses past twice that; both are refusals here.
    Image.MAX_IMAGE_PIXELS = pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    try:
        source = Image.open(io.BytesIO(data), formats=[fmt])
        if source.width * source.height > pixels:
            raise Image.DecompressionBombError("too many pixels")
        icc = source.info.get("icc_profile")
        loop = source.info.get("loop")
        if fmt == "JPEG" and max(source.size) > side:
            # Decode at a fraction of the size straight away: less memory, less time.
            scale = side / max(source.size)
            source.draft("RGB", (int(source.width * scale) + 1, int(source.height * scale) + 1))
        # A JPEG is one picture (an MPO's second one is for 3D viewers).
        budget = 0 if fmt == "JPEG" else int(limits["max_animation_pixels"])
        frames = []
        for frame, duration in _frames(source, budget):
            frame.load()
            # The orientation tag is applied while it is still there, then goes with the rest.
            upright = ImageOps.exif_transpose(_shrunk(frame, side))
            assert upright is not None
            frames.append((_plain(_in_srgb(upright, icc), fmt), duration))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Refused(
            f"The image has too many pixels: at most {megapixels} megapixels are accepted."
        ) from None
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, EOFError, KeyError):
        raise Refused(f"The file looks like a {fmt} image but cannot be decoded.") from None
    first = frames[0][0]
    out = io.BytesIO()
    options = dict(SAVE_OPTIONS[fmt])
    if len(frames) > 1:
        options.update(
            save_all=True,
            append_images=[frame for frame, _ in frames[1:]],
            duration=[duration for _, duration in frames],
        )
        if isinstance(loop, int):
            options["loop"] = loop
    # exif/icc_profile/pnginfo are not passed, and info is empty: nothing of the file's own
    # metadata (nor anything appended after the image data) can reach the output.
    first.save(out, fmt, **options)
    meta = {"width": first.width, "height": first.height, "frames": len(frames)}
    return meta, out.getvalue()


# --- PDF ----------------------------------------------------------------------------------


def pdf(data: bytes, limits: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    max_pages, max_chars = int(limits["max_pages"]), int(limits["max_chars"])
    # pypdf's own guards, tighter than its defaults, inside the memory limit set above.
    overwrite_configuration(
        zlib_maximum_output_length=int(limits["max_stream_bytes"]),
        lzw_maximum_output_length=int(limits["max_stream_bytes"]),
        run_length_maximum_output_length=int(limits["max_stream_bytes"]),
        maximum_declared_stream_length=int(limits["max_stream_bytes"]),
    )
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise Refused("The PDF is protected by a password; upload an unprotected copy.")
        pages = len(reader.pages)
        parts: list[str] = []
        chars = 0
        read = 0
        for index in range(min(pages, max_pages)):
            text = reader.pages[index].extract_text() or ""
            parts.append(text)
            chars += len(text)
            read += 1
            if chars >= max_chars:
                break
    except Refused:
        raise
    except MemoryError:
        raise Refused("The PDF needs more memory to read than is allowed.") from None
    except RecursionError:
        raise Refused("The PDF nests its objects too deeply to be read.") from None
    except LimitReachedError:
        raise Refused("The PDF holds more data than is allowed to be read.") from None
    except Exception as exc:
        # pypdf's parse errors and its limits (LimitReachedError) alike: not a PDF we can read.
        raise Refused(f"The PDF cannot be read ({type(exc).__name__}).") from None
    text = "\n\n".join(parts)[:max_chars]
    return {"text": text, "pages": pages, "pages_read": read}, b""


def main() -> int:
    mode, limits = sys.argv[1], json.loads(sys.argv[2])
    # pypdf and Pillow log what they recover from; nobody reads this process's stderr.
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    limit_self(int(limits["memory_bytes"]), int(limits["cpu_seconds"]))
    data = sys.stdin.buffer.read()
    try:
        meta, payload = (image if mode == "image" else pdf)(data, limits)
    except Refused as refused:
        header, payload = {"ok": False, "message": str(refused)}, b""
    except MemoryError:
        what = "image" if mode == "image" else "PDF"
        message = f"The {what} needs more memory to decode than is allowed."
        header, payload = {"ok": False, "message": message}, b""
    else:
        header = {"ok": True, **meta}
    sys.stdout.buffer.write(json.dumps(header).encode() + b"\n" + payload)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
