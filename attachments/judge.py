"""What an uploaded file is, judged from its bytes alone: never its name, never the type the
client declared. Images and PDFs are decoded in a child process (decode.py) with limits on
memory, CPU and time; text is decoded here (plain Python, bounded by the upload's size)."""

from __future__ import annotations

import json
import logging
import math
import re
import subprocess
import sys
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from attachments.models import Upload

logger = logging.getLogger(__name__)

DECODER = Path(__file__).with_name("decode.py")
ACCEPTED = "PNG, JPEG, WebP or GIF images, UTF-8 text (plain, Markdown, CSV, source code) or PDF"
NOT_ACCEPTED = f"This type of file is not accepted: upload {ACCEPTED}."


class UploadRefused(Exception):
    """A file the server will not keep, with the status and code the API answers."""

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


@dataclass(frozen=True)
class ImageFormat:
    pillow: str  # Pillow's name, which decode.py is told to open and write
    content_type: str
    extension: str
    extensions: frozenset[str]  # names that already say what the file is


IMAGE_FORMATS = {
    "png": ImageFormat("PNG", "image/png", "png", frozenset({"png"})),
    "jpeg": ImageFormat("JPEG", "image/jpeg", "jpg", frozenset({"jpg", "jpeg", "jpe", "jfif"})),
    "gif": ImageFormat("GIF", "image/gif", "gif", frozenset({"gif"})),
    "webp": ImageFormat("WEBP", "image/webp", "webp", frozenset({"webp"})),
}


@dataclass(frozen=True)
class Judged:
    kind: str  # Upload.Kind
    content_type: str
    extension: str  # of the stored object, from the judged type
    data: bytes  # what is stored: Pillow's re-encoding, or the file as it came
    text: str = ""
    width: int | None = None
    height: int | None = None


def image_format(data: bytes) -> ImageFormat | None:
    """The image format by its magic bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return IMAGE_FORMATS["png"]
    if data.startswith(b"\xff\xd8\xff"):
        return IMAGE_FORMATS["jpeg"]
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return IMAGE_FORMATS["gif"]
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return IMAGE_FORMATS["webp"]
    return None


# The WHATWG MIME sniffing standard's "scriptable" patterns (what makes a browser that
# sniffs treat a file as HTML or XML), plus SVG and any doctype. Each must be followed by a
# tag-terminating character; this also counts whitespace and "/" (`<svg/onload=...>`).
_MARKUP = re.compile(
    rb"<(?:!doctype|html|head|script|iframe|h1|div|font|table|a|style|title|b|body|br|p"
    rb"|svg|math|object|embed|xml|x:|!--)(?:[\s/>]|$)|<\?xml",
    re.IGNORECASE,
)
_LEADING_SPACE = b" \t\n\r\x0c"


def looks_like_markup(data: bytes) -> bool:
    """Whether the text begins (after a BOM and whitespace) as HTML, SVG or XML would."""
    start = data.removeprefix(b"\xef\xbb\xbf").lstrip(_LEADING_SPACE)[:64]
    return _MARKUP.match(start) is not None


# Text whose name ends in one of these is offered on download under that name; any other
# text gets ".txt" added, so a file opened from the downloads folder opens as text and never
# runs (.html, .svg, .js and .hta open in a browser or Windows Script Host; .bat, .ps1 run).
TEXT_EXTENSIONS = frozenset(
    """txt text md markdown rst adoc org csv tsv log json jsonl ndjson yaml yml toml ini cfg
    conf properties env py pyi ipynb rs go java kt kts scala groovy gradle c h cc cpp cxx hpp
    hh cs fs swift m mm rb php pl pm r jl lua dart ts tsx jsx vue svelte css scss sass less
    sql graphql proto tex bib diff patch dockerfile makefile cmake mk tf hcl nix el clj ex exs
    erl hs ml elm zig v sv vhd asm s""".split()
)
# The content type of verified text, by its name: the content is UTF-8 text either way, so
# the name only chooses between these three (never text/html or a script type).
TEXT_TYPES = {"md": "text/markdown", "markdown": "text/markdown", "csv": "text/csv"}


def _extension(name: str) -> str:
    stem, dot, extension = name.rpartition(".")
    return extension.lower() if dot and stem else ""


def judge(data: bytes, name: str) -> Judged:
    """The file as it will be kept, or UploadRefused saying why not. `name` (already clean)
    only chooses between text/plain, text/markdown and text/csv for verified text."""
    if not data:
        raise UploadRefused("The file is empty.")
    found = image_format(data)
    if found is not None:
        return _image(data, found)
    if data.startswith(b"%PDF-"):
        return _pdf(data)
    return _text(data, name)


def _text(data: bytes, name: str) -> Judged:
    try:
        text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError:
        raise UploadRefused(NOT_ACCEPTED) from None
    if "\x00" in text:
        raise UploadRefused(f"{NOT_ACCEPTED} (Text files may not contain NUL bytes.)")
    if looks_like_markup(data):
        raise UploadRefused(
            "HTML, SVG and XML files are not accepted, whatever their name: this file begins "
            f"as markup. Upload {ACCEPTED}."
        )
    limit: int = settings.UPLOAD_MAX_TEXT_CHARS
    if len(text) > limit:
        raise UploadRefused(
            f"Text files may hold at most {limit:,} characters; this one has {len(text):,}."
        )
    extension = _extension(name)
    content_type = TEXT_TYPES.get(extension, "text/plain")
    stored = {"text/markdown": "md", "text/csv": "csv"}.get(content_type, "txt")
    # Stored as it came: it is valid UTF-8 (a BOM and all); the model reads `text`.
    return Judged(Upload.Kind.TEXT, content_type, stored, data, text=text)


def _image(data: bytes, found: ImageFormat) -> Judged:
    meta, encoded = _decode(
        "image",
        data,
        format=found.pillow,
        max_pixels=settings.UPLOAD_MAX_IMAGE_PIXELS,
        max_side=settings.UPLOAD_MAX_IMAGE_SIDE,
        max_animation_pixels=settings.UPLOAD_MAX_ANIMATION_PIXELS,
    )
    return Judged(
        Upload.Kind.IMAGE,
        found.content_type,
        found.extension,
        encoded,
        width=int(meta["width"]),
        height=int(meta["height"]),
    )


def _pdf(data: bytes) -> Judged:
    meta, _ = _decode(
        "pdf",
        data,
        max_pages=settings.UPLOAD_MAX_PDF_PAGES,
        max_chars=settings.UPLOAD_MAX_TEXT_CHARS,
        max_stream_bytes=settings.UPLOAD_PDF_MAX_STREAM_BYTES,
    )
    text = storable(str(meta["text"]))
    # The PDF itself is kept as it came: it is only ever served as a download.
    return Judged(Upload.Kind.PDF, "application/pdf", "pdf", data, text=text)


def storable(text: str) -> str:
    """Text a PostgreSQL column holds: no NUL, no lone surrogate (a PDF's text may have both)."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


# Decoders at once in this process: each may take up to UPLOAD_DECODE_MEMORY_BYTES.
_decoders: threading.BoundedSemaphore | None = None
_decoders_lock = threading.Lock()


def _decoder_slots() -> threading.BoundedSemaphore:
    global _decoders
    with _decoders_lock:
        if _decoders is None:
            _decoders = threading.BoundedSemaphore(settings.UPLOAD_DECODERS)
        return _decoders


def _decode(mode: str, data: bytes, **limits: Any) -> tuple[dict[str, Any], bytes]:
    seconds: float = settings.UPLOAD_DECODE_SECONDS
    what = "image" if mode == "image" else "PDF"
    limits.update(
        memory_bytes=settings.UPLOAD_DECODE_MEMORY_BYTES,
        cpu_seconds=max(1, math.ceil(seconds)),
    )
    command = [sys.executable, "-I", "-B", str(DECODER), mode, json.dumps(limits)]
    slots = _decoder_slots()
    if not slots.acquire(timeout=seconds * 2):
        raise UploadRefused(
            "Too many files are being read right now; try again in a moment.",
            status=503,
            code="unavailable",
        )
    try:
        done = subprocess.run(command, input=data, capture_output=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        # subprocess.run has killed it.
        raise UploadRefused(f"The {what} took too long to read; it is refused.") from None
    finally:
        slots.release()
    header, _, payload = done.stdout.partition(b"\n")
    if done.returncode != 0 or not header:
        # Killed by its CPU or memory limit, or crashed in a decoder: the file's doing.
        logger.warning(
            "upload decoder (%s) exited %s: %s",
            mode,
            done.returncode,
            done.stderr[-500:].decode("utf-8", "replace"),
        )
        raise UploadRefused(f"The {what} is too large or too complex to read; it is refused.")
    meta: dict[str, Any] = json.loads(header)
    if not meta.pop("ok"):
        raise UploadRefused(str(meta["message"]))
    return meta, payload


# --- names --------------------------------------------------------------------------------

NAME_MAX_CHARS = 255


def clean_name(raw: str) -> str:
    """The sender's file name as shown and offered on download: the last path part only
    (either slash, a drive letter, "." and ".." gone), no control or format characters
    (bidi overrides could show "exe.txt" as "txt.exe"), at most 255 characters."""
    name = unicodedata.normalize("NFC", raw).replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"^[A-Za-z]:", "", name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] not in ("C", "Z") or ch == " ")
    name = name.strip(" .")
    if not name:
        return "file"
    return _fit(name)


def _fit(name: str) -> str:
    if len(name) <= NAME_MAX_CHARS:
        return name
    stem, dot, extension = name.rpartition(".")
    if dot and stem and len(extension) <= 16:
        return stem[: NAME_MAX_CHARS - len(extension) - 1] + "." + extension
    return name[:NAME_MAX_CHARS]


def download_name(name: str, judged: Judged) -> str:
    """The clean name, with the judged type's extension added when the name's own says
    something else: a PNG sent as "notes.txt" is kept as "notes.txt.png"."""
    extension = _extension(name)
    if judged.kind == Upload.Kind.TEXT:
        fitting = extension in TEXT_EXTENSIONS or extension == ""
    elif judged.kind == Upload.Kind.PDF:
        fitting = extension == "pdf"
    else:
        fitting = any(
            extension in f.extensions
            for f in IMAGE_FORMATS.values()
            if f.content_type == judged.content_type
        )
    if fitting:
        return name
    suffix = "." + judged.extension
    return _fit(name[: NAME_MAX_CHARS - len(suffix)] + suffix)
