"""Files for the upload tests, built here byte by byte or with Pillow: nothing is mocked."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def png(width: int = 40, height: int = 30, *, mode: str = "RGB", color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), color).save(out, "PNG")
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge canvas: a decompression bomb's first step."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def png_with_text_chunk(text: bytes) -> bytes:
    """A valid PNG carrying `text` in a tEXt chunk before its image data."""
    plain = png()
    ihdr_end = 8 + 25  # signature, then IHDR (length, type, 13 bytes, crc)
    return plain[:ihdr_end] + png_chunk(b"tEXt", b"Comment\0" + text) + plain[ihdr_end:]


def jpeg(width: int = 200, height: int = 100, **exif_tags: object) -> bytes:
    image = Image.new("RGB", (width, height), "blue")
    # The left half white, so a rotation shows.
    image.paste((255, 255, 255), (0, 0, width // 2, height))
    exif = image.getexif()
    for tag, value in exif_tags.items():
        exif[int(tag.removeprefix("tag_"), 16)] = value
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, comment=b"secret comment")
    return out.getvalue()


def gif(frames: int = 3, *, comment: bytes = b"") -> bytes:
    colors = ["red", "green", "blue", "yellow", "black"]
    images = [Image.new("RGB", (50, 40), colors[i % len(colors)]) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(
        out, "GIF", save_all=True, append_images=images[1:], duration=120, loop=0, comment=comment
    )
    return out.getvalue()


def webp(width: int = 60, height: int = 40) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (width, height), (0, 128, 255, 128)).save(out, "WEBP")
    return out.getvalue()


def pdf(pages: list[str], *, extra_stream: bytes = b"") -> bytes:
    """A PDF of Helvetica pages, one line of text each. `extra_stream` (already Flate
    compressed) becomes the first page's second content stream."""
    count = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(count))
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    bomb = 4 + 2 * count
    for i, text in enumerate(pages):
        stream = f"BT /F1 24 Tf 72 700 Td ({text}) Tj ET".encode()
        contents = f"{5 + 2 * i} 0 R"
        if extra_stream and i == 0:
            contents = f"[{contents} {bomb} 0 R]"
        objects[4 + 2 * i] = (
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {contents} >>"
        ).encode()
        objects[5 + 2 * i] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream)
    if extra_stream:
        objects[bomb] = b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (
            len(extra_stream),
            extra_stream,
        )
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    xref = len(out)
    size = max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for number in range(1, size):
        out += b"%010d 00000 n \n" % offsets[number]
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    return bytes(out)


def flate_bomb(megabytes: int) -> bytes:
    """`megabytes` MiB of spaces, Flate compressed to about a thousandth of that."""
    compressor = zlib.compressobj(9)
    block = b" " * (1024 * 1024)
    parts = [compressor.compress(block) for _ in range(megabytes)]
    parts.append(compressor.flush())
    return b"".join(parts)
