"""POST /api/uploads/ and the owner's GET / HEAD / DELETE, through the real views, Pillow,
pypdf in its child process and the file system storage. Alice uploads; Bob must never see."""

from __future__ import annotations

import io
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from PIL import Image

from attachments.models import Attachment, Upload
from conversations.models import Conversation, Message
from conversations.services import message_append
from tests.attachments import files
from tests.attachments.conftest import error_of, logged_in, post_file, stored_files

pytestmark = [
    # The upload view is async: it reaches the database through db_call, on threads of its
    # own, which see only what is committed.
    pytest.mark.django_db(transaction=True),
    # The download streams with an async iterator, as ASGI serves it; Django's sync test
    # client consumes it through async_to_sync and warns that it has to.
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous"),
]

STORED_NAME = re.compile(r"^uploads/\d{4}/\d{2}/[0-9a-f-]{36}\.(png|jpg|gif|webp|txt|md|csv|pdf)$")


def download(client: Client, upload_id: str) -> Any:
    return client.get(f"/api/uploads/{upload_id}/")


def body_of(response: Any) -> bytes:
    return b"".join(response)


def stored_bytes(upload_id: str) -> bytes:
    upload = Upload.objects.get(id=upload_id)
    with upload.file.open("rb") as stored:
        return stored.read()


# --- what is accepted -----------------------------------------------------------------------


ACCEPTED = [
    ("photo.png", files.png(), "image", "image/png", "png"),
    ("photo.jpg", files.jpeg(), "image", "image/jpeg", "jpg"),
    ("anim.gif", files.gif(), "image", "image/gif", "gif"),
    ("pic.webp", files.webp(), "image", "image/webp", "webp"),
    ("notes.txt", "Plain text, ünïcode ✓\n".encode(), "text", "text/plain", "txt"),
    ("README.md", b"# Title\n\n- item\n", "text", "text/markdown", "md"),
    ("table.csv", b"a,b\n1,2\n", "text", "text/csv", "csv"),
    (
        "main.py",
        b"def f(x):\n    return x < 3  # <script> in code is fine\n",
        "text",
        "text/plain",
        "txt",
    ),
    ("paper.pdf", files.pdf(["Hello from a PDF"]), "pdf", "application/pdf", "pdf"),
]


@pytest.mark.parametrize(("name", "data", "kind", "content_type", "extension"), ACCEPTED)
def test_every_accepted_type_is_kept_under_a_generated_name(
    alice: Any, media: Path, name: str, data: bytes, kind: str, content_type: str, extension: str
) -> None:
    answer = post_file(logged_in(alice), name, data, content_type="application/x-whatever")

    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["name"] == name
    assert body["kind"] == kind
    assert body["content_type"] == content_type
    assert body["url"] == f"/api/uploads/{body['id']}/"
    upload = Upload.objects.get(id=body["id"])
    assert upload.owner == alice
    assert STORED_NAME.match(upload.file.name)
    assert upload.file.name.endswith("." + extension)
    assert body["size"] == upload.size == len(stored_bytes(body["id"]))
    assert stored_files(media) == [media / upload.file.name]
    if kind == "image":
        assert (body["width"], body["height"]) == Image.open(io.BytesIO(data)).size
    else:
        assert body["width"] is None


def test_text_is_kept_as_sent_and_read_without_its_bom(alice: Any) -> None:
    data = "\ufeffLine one\r\nLine two é\n".encode()

    body = post_file(logged_in(alice), "notes.txt", data).json()

    assert stored_bytes(body["id"]) == data
    assert Upload.objects.get(id=body["id"]).text == "Line one\r\nLine two é\n"


def test_the_type_comes_from_the_content_never_the_name_or_the_declared_type(
    alice: Any, media: Path
) -> None:
    client = logged_in(alice)

    as_text = post_file(client, "notes.txt", files.png(), content_type="text/plain")
    html = b"<!DOCTYPE html><html><script>alert(document.cookie)</script></html>"
    as_png = post_file(client, "photo.png", html, content_type="image/png")

    assert as_text.status_code == 201
    assert as_text.json()["content_type"] == "image/png"
    # Offered on download under a name that says what it is.
    assert as_text.json()["name"] == "notes.txt.png"
    assert error_of(as_png) == (400, "invalid")
    assert "HTML, SVG and XML files are not accepted" in as_png.json()["error"]["message"]
    assert Upload.objects.count() == 1
    assert len(stored_files(media)) == 1


MARKUP = [
    b"<!DOCTYPE html>\n<title>x</title>",
    b"<html><body>hi</body></html>",
    b"  \n\t<script>alert(1)</script>",
    b"\xef\xbb\xbf<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>",
    b"<svg/onload=alert(1)>",
    b'<?xml version="1.0"?><x:script xmlns:x="http://www.w3.org/1999/xhtml"/>',
    b"<!-- hi --><p>text",
    b"<IFRAME src=x>",
    b"<a href=javascript:alert(1)>x</a>",
]


def test_markup_is_refused_as_text_whatever_its_name(alice: Any) -> None:
    client = logged_in(alice)
    for markup in MARKUP:
        for name in ("page.html", "image.svg", "notes.txt", "photo.png"):
            answer = post_file(client, name, markup)
            assert error_of(answer) == (400, "invalid"), (markup, name)
    assert not Upload.objects.exists()


REFUSED_AS_TEXT = [
    (b"", "The file is empty."),
    (b"text\x00with a NUL", "NUL"),
    (b"caf\xe9 in Latin-1", "UTF-8 text"),
    ("UTF-16 text".encode("utf-16"), "UTF-8 text"),
    (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00", "not accepted"),
    (b"PK\x03\x04" + bytes(range(256)), "not accepted"),
]


def test_binary_empty_and_broken_text_is_refused_naming_what_is_accepted(alice: Any) -> None:
    client = logged_in(alice)
    for data, says in REFUSED_AS_TEXT:
        answer = post_file(client, "file.txt", data)

        assert error_of(answer) == (400, "invalid"), data
        assert says in answer.json()["error"]["message"], data
    assert not Upload.objects.exists()


def test_text_beyond_the_character_cap_is_refused(alice: Any, settings: Any) -> None:
    settings.UPLOAD_MAX_TEXT_CHARS = 100
    client = logged_in(alice)

    at_cap = post_file(client, "a.txt", "é".encode() * 100)
    over = post_file(client, "b.txt", b"x" * 101)

    assert at_cap.status_code == 201
    assert error_of(over) == (400, "invalid")
    assert "at most 100 characters; this one has 101" in over.json()["error"]["message"]


# --- images: re-encoded, metadata gone, bombs refused ----------------------------------------


def test_a_png_with_html_inside_and_after_it_comes_out_clean(alice: Any) -> None:
    payload = b"<html><script>alert('polyglot')</script></html>"
    polyglot = files.png_with_text_chunk(payload) + payload

    answer = post_file(logged_in(alice), "cat.png", polyglot)

    assert answer.status_code == 201
    kept = stored_bytes(answer.json()["id"])
    assert b"script" not in kept
    assert b"polyglot" not in kept
    assert b"tEXt" not in kept
    image = Image.open(io.BytesIO(kept))
    assert (image.format, image.size) == ("PNG", (40, 30))
    assert image.convert("RGB").getpixel((5, 5)) == (255, 0, 0)


def test_a_gif_that_is_also_javascript_keeps_its_frames_and_loses_the_script(alice: Any) -> None:
    script = b"*/=1;alert('gif polyglot');/*"
    polyglot = files.gif(3, comment=script) + script

    answer = post_file(logged_in(alice), "anim.gif", polyglot)

    assert answer.status_code == 201
    kept = stored_bytes(answer.json()["id"])
    assert b"alert" not in kept
    assert getattr(Image.open(io.BytesIO(kept)), "n_frames", 1) == 3


def test_a_jpeg_is_turned_upright_and_loses_its_exif_and_comment(alice: Any) -> None:
    # 0x0112 orientation 6: shown turned 90 degrees clockwise; 0x010F the camera maker.
    sent = files.jpeg(200, 100, tag_0112=6, tag_010F="SecretCam 3000")

    answer = post_file(logged_in(alice), "IMG_0001.JPG", sent)

    body = answer.json()
    assert (body["width"], body["height"]) == (100, 200)
    kept = stored_bytes(body["id"])
    assert b"SecretCam" not in kept
    assert b"secret comment" not in kept
    image = Image.open(io.BytesIO(kept))
    assert not image.getexif()
    assert image.size == (100, 200)
    # The white left half is now on top, as the camera meant.
    top, bottom = image.getpixel((50, 20)), image.getpixel((50, 180))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert min(top) > 200
    assert bottom[2] > 200 and bottom[0] < 60


def test_a_large_image_is_scaled_down_to_the_longest_side(alice: Any) -> None:
    answer = post_file(logged_in(alice), "wide.png", files.png(3000, 1200))

    body = answer.json()
    assert (body["width"], body["height"]) == (2048, 819)
    assert Image.open(io.BytesIO(stored_bytes(body["id"]))).size == (2048, 819)


@pytest.mark.parametrize("side", [30000, 7000])
def test_a_decompression_bomb_is_refused_before_it_is_decoded(alice: Any, side: int) -> None:
    # 30000^2 is past twice Pillow's limit (its error); 7000^2 between once and twice (its
    # warning, an error here too). Both files are a few dozen bytes.
    client = logged_in(alice)

    answer = post_file(client, "bomb.png", files.png_declaring(side, side))

    assert error_of(answer) == (400, "invalid")
    assert "at most 40 megapixels" in answer.json()["error"]["message"]
    assert not Upload.objects.exists()
    assert post_file(client, "fine.png", files.png()).status_code == 201


def test_an_image_that_only_starts_like_one_is_refused(alice: Any) -> None:
    answer = post_file(logged_in(alice), "x.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)

    assert error_of(answer) == (400, "invalid")
    assert "cannot be decoded" in answer.json()["error"]["message"]


# --- PDF: text read in a child process with limits --------------------------------------------


def test_a_pdfs_text_is_read_and_the_pdf_kept_as_it_came(alice: Any) -> None:
    sent = files.pdf(["First page", "Second page"])

    body = post_file(logged_in(alice), "paper.pdf", sent).json()

    upload = Upload.objects.get(id=body["id"])
    assert "First page" in upload.text and "Second page" in upload.text
    assert stored_bytes(body["id"]) == sent


def test_only_the_first_pages_of_a_long_pdf_are_read(alice: Any, settings: Any) -> None:
    settings.UPLOAD_MAX_PDF_PAGES = 5
    sent = files.pdf([f"page number {i}" for i in range(1, 13)])

    body = post_file(logged_in(alice), "long.pdf", sent).json()

    text = Upload.objects.get(id=body["id"]).text
    assert "page number 5" in text
    assert "page number 6" not in text


def test_a_flate_bomb_in_a_pdf_is_refused_and_the_server_carries_on(alice: Any) -> None:
    # 100 MiB of spaces in 100 kB: pypdf stops at UPLOAD_PDF_MAX_STREAM_BYTES.
    bomb = files.pdf(["hello"], extra_stream=files.flate_bomb(100))
    client = logged_in(alice)

    answer = post_file(client, "bomb.pdf", bomb)

    assert error_of(answer) == (400, "invalid")
    assert "more data than is allowed" in answer.json()["error"]["message"]
    assert post_file(client, "fine.pdf", files.pdf(["fine"])).status_code == 201


def test_a_pdf_that_needs_more_memory_than_allowed_is_refused(alice: Any, settings: Any) -> None:
    # pypdf's own stream limit lifted: the child's address space limit is what stops it.
    settings.UPLOAD_PDF_MAX_STREAM_BYTES = 2**31
    settings.UPLOAD_DECODE_MEMORY_BYTES = 150 * 1024 * 1024
    bomb = files.pdf(["hello"], extra_stream=files.flate_bomb(300))

    answer = post_file(logged_in(alice), "bomb.pdf", bomb)

    assert error_of(answer) == (400, "invalid")
    assert "more memory" in answer.json()["error"]["message"]


def test_a_pdf_that_takes_too_long_is_refused(alice: Any, settings: Any) -> None:
    # No real PDF is slow on demand; a limit shorter than the child's own start is.
    settings.UPLOAD_DECODE_SECONDS = 0.001

    answer = post_file(logged_in(alice), "slow.pdf", files.pdf(["slow"]))

    assert error_of(answer) == (400, "invalid")
    assert "took too long" in answer.json()["error"]["message"]
    assert not Upload.objects.exists()


@pytest.mark.parametrize(
    "data",
    [b"%PDF-1.7\n" + b"garbage " * 50, b"%PDF-1.4\n1 0 obj\n" + b"[" * 5000 + b"\nendobj\n"],
)
def test_a_pdf_that_cannot_be_parsed_is_refused(alice: Any, data: bytes) -> None:
    answer = post_file(logged_in(alice), "broken.pdf", data)

    assert error_of(answer) == (400, "invalid")
    assert "PDF" in answer.json()["error"]["message"]


# --- names ------------------------------------------------------------------------------------


def raw_upload(client: Client, filename: str, data: bytes) -> Any:
    """The multipart body written by hand: Django's test client would clean the name itself."""
    boundary = "----boundary7MA4YWxkTrZu0gW"
    body = (
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return client.post(
        "/api/uploads/", body, content_type=f"multipart/form-data; boundary={boundary}"
    )


NAMES = [
    ("../../etc/passwd.txt", "passwd.txt"),
    ("..\\..\\windows\\win.ini", "win.ini"),
    ("C:\\Users\\alice\\notes.md", "notes.md"),
    ("C:notes.md", "notes.md"),
    ("report\u202etxt.exe", "reporttxt.exe.txt"),
    ("tab\there.txt", "tabhere.txt"),
    ("page.html", "page.html.txt"),
    ("run.bat", "run.bat.txt"),
    ("Makefile", "Makefile"),
]


def test_a_file_name_keeps_only_its_last_part_without_control_characters(alice: Any) -> None:
    client = logged_in(alice)
    for sent, kept in NAMES:
        answer = raw_upload(client, sent, b"hello")

        assert answer.status_code == 201, answer.content
        assert answer.json()["name"] == kept
        upload = Upload.objects.get(id=answer.json()["id"])
        assert STORED_NAME.match(upload.file.name)


def test_a_long_name_is_cut_to_255_characters_keeping_its_extension(alice: Any) -> None:
    answer = post_file(logged_in(alice), "n" * 300 + ".md", b"# long")

    name = answer.json()["name"]
    assert len(name) == 255
    assert name.endswith("n.md")
    assert answer.json()["content_type"] == "text/markdown"


def test_a_name_too_long_for_the_form_itself_is_refused_as_json(alice: Any) -> None:
    """Django reads at most 1 KB of a part's headers: a browser's FormData with a file name
    of 1,000 characters got Django's HTML "Bad Request (400)" page. (Django's test client
    cuts names to 255 characters before sending, so this body is written by hand.)"""
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{"n" * 1000}.md"\r\n'
        "Content-Type: text/markdown\r\n\r\n# long\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    answer = logged_in(alice).generic(
        "POST", "/api/uploads/", body, content_type=f"multipart/form-data; boundary={boundary}"
    )

    assert error_of(answer) == (400, "invalid")
    assert "shorter name" in answer.json()["error"]["message"]
    assert not Upload.objects.exists()


# --- size, rate, quota ------------------------------------------------------------------------


def test_a_file_over_max_upload_bytes_is_413_and_nothing_is_kept(
    alice: Any, settings: Any, media: Path
) -> None:
    settings.MAX_UPLOAD_BYTES = 1000
    client = logged_in(alice)

    at_limit = post_file(client, "a.txt", b"a" * 1000)
    over = post_file(client, "b.txt", b"b" * 1001)

    assert at_limit.status_code == 201
    assert error_of(over) == (413, "too_large")
    assert "at most" in over.json()["error"]["message"]
    assert Upload.objects.count() == 1
    assert len(stored_files(media)) == 1


def test_one_file_is_expected(alice: Any) -> None:
    client = logged_in(alice)
    from django.core.files.uploadedfile import SimpleUploadedFile

    none = client.post("/api/uploads/", {"other": "x"})
    two = client.post(
        "/api/uploads/",
        {"file": [SimpleUploadedFile("a.txt", b"a"), SimpleUploadedFile("b.txt", b"b")]},
    )

    assert error_of(none) == (400, "invalid")
    assert error_of(two) == (400, "invalid")
    assert not Upload.objects.exists()


def test_uploads_are_rate_limited_per_user(alice: Any, bob: Any, settings: Any) -> None:
    settings.UPLOADS_PER_MINUTE = 2
    client = logged_in(alice)

    answers = [post_file(client, f"{i}.txt", b"hi") for i in range(3)]

    assert [a.status_code for a in answers[:2]] == [201, 201]
    assert error_of(answers[2]) == (429, "rate_limited")
    assert 1 <= int(answers[2]["Retry-After"]) <= 60
    # Bob has his own count.
    assert post_file(logged_in(bob), "b.txt", b"hi").status_code == 201


def test_a_user_past_their_storage_quota_is_refused_and_nothing_is_left(
    alice: Any, bob: Any, settings: Any, media: Path
) -> None:
    settings.UPLOAD_QUOTA_BYTES = 1500
    client = logged_in(alice)

    first = post_file(client, "a.txt", b"a" * 1000)
    second = post_file(client, "b.txt", b"b" * 1000)

    assert first.status_code == 201
    assert error_of(second) == (413, "quota_exceeded")
    assert "you may keep" in second.json()["error"]["message"]
    # The refused file had been stored before the row was refused: it is gone again.
    assert len(stored_files(media)) == 1
    assert post_file(logged_in(bob), "b.txt", b"b" * 1000).status_code == 201


def test_when_storing_fails_there_is_no_row(alice: Any, settings: Any, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the storage expects a folder")
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": blocked},
        },
    }

    answer = post_file(logged_in(alice), "a.txt", b"hello")

    assert error_of(answer) == (503, "unavailable")
    assert not Upload.objects.exists()


# --- who may upload -----------------------------------------------------------------------------


def test_signed_out_is_401_and_nothing_is_read(media: Path) -> None:
    answer = post_file(Client(), "a.txt", b"hello")

    assert error_of(answer) == (401, "unauthorized")
    assert stored_files(media) == []


def test_without_the_csrf_header_is_403(alice: Any) -> None:
    client = logged_in(alice, csrf=True)

    refused = post_file(client, "a.txt", b"hello")
    client.get("/")  # the page sets the CSRF cookie, as in the browser
    token = client.cookies["csrftoken"].value
    accepted = post_file(client, "a.txt", b"hello", HTTP_X_CSRFTOKEN=token)

    assert error_of(refused) == (403, "csrf_failed")
    assert accepted.status_code == 201
    assert Upload.objects.count() == 1


def test_the_collection_takes_only_post(alice: Any) -> None:
    answer = logged_in(alice).get("/api/uploads/")

    assert answer.status_code == 405
    assert answer["Allow"] == "POST"


# --- the owner's download -------------------------------------------------------------------------


def test_the_owner_downloads_the_file_as_an_attachment_that_never_runs(alice: Any) -> None:
    client = logged_in(alice)
    image = post_file(client, "cat.png", files.png()).json()
    text = post_file(client, "notes.md", "# Notes é".encode()).json()

    got_image = download(client, image["id"])
    got_text = download(client, text["id"])

    assert got_image.status_code == 200
    assert got_image["Content-Type"] == "image/png"
    assert got_image["Content-Disposition"] == 'attachment; filename="cat.png"'
    assert got_image["Content-Length"] == str(image["size"])
    assert body_of(got_image) == stored_bytes(image["id"])
    assert got_text["Content-Type"] == "text/markdown; charset=utf-8"
    assert body_of(got_text) == "# Notes é".encode()
    for got in (got_image, got_text):
        assert got["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in got["Content-Security-Policy"]
        assert "default-src 'none'" in got["Content-Security-Policy"]
        assert got["Cache-Control"].startswith("private")


def test_head_answers_the_headers(alice: Any) -> None:
    client = logged_in(alice)
    made = post_file(client, "cat.png", files.png()).json()

    answer = client.head(f"/api/uploads/{made['id']}/")

    assert answer.status_code == 200
    assert answer["Content-Type"] == "image/png"


def test_bob_cannot_see_or_delete_alices_upload(alice: Any, bob: Any) -> None:
    made = post_file(logged_in(alice), "secret.txt", b"alice's secret").json()
    path = f"/api/uploads/{made['id']}/"
    bob_client = logged_in(bob)

    answers = [bob_client.get(path), bob_client.delete(path), bob_client.head(path)]

    assert [a.status_code for a in answers] == [404, 404, 404]
    assert error_of(answers[0]) == (404, "not_found")
    assert b"secret" not in answers[0].content
    assert Upload.objects.filter(id=made["id"]).exists()
    unknown = logged_in(alice).get(f"/api/uploads/{uuid.uuid4()}/")
    assert error_of(unknown) == (404, "not_found")
    assert error_of(Client().get(path)) == (401, "unauthorized")


# --- delete ---------------------------------------------------------------------------------------


def attach(upload_id: str, owner: Any, persona: Any) -> Message:
    chat = Conversation.objects.create(owner=owner, persona=persona)
    message = message_append(conversation=chat, role=Message.Role.USER, content="see file")
    Attachment.objects.create(message=message, upload_id=upload_id, position=0)
    return message


def test_the_owner_deletes_an_unused_upload_and_its_file_goes(alice: Any, media: Path) -> None:
    client = logged_in(alice)
    made = post_file(client, "a.txt", b"bye").json()

    answer = client.delete(f"/api/uploads/{made['id']}/")

    assert answer.status_code == 204
    assert not Upload.objects.exists()
    assert stored_files(media) == []
    assert error_of(download(client, made["id"])) == (404, "not_found")


def test_an_upload_on_a_message_cannot_be_deleted(alice: Any, persona: Any, media: Path) -> None:
    client = logged_in(alice)
    made = post_file(client, "a.txt", b"in use").json()
    attach(made["id"], alice, persona)

    answer = client.delete(f"/api/uploads/{made['id']}/")

    assert error_of(answer) == (409, "conflict")
    assert Upload.objects.filter(id=made["id"]).exists()
    assert len(stored_files(media)) == 1
    assert body_of(download(client, made["id"])) == b"in use"


def test_a_file_another_row_names_stays_when_one_row_goes(
    alice: Any, bob: Any, media: Path
) -> None:
    # A fork gives the reader a row of their own naming the same object.
    made = post_file(logged_in(alice), "shared.txt", b"both of us").json()
    original = Upload.objects.get(id=made["id"])
    copy = Upload.objects.create(
        owner=bob,
        name=original.name,
        kind=original.kind,
        content_type=original.content_type,
        size=original.size,
        file=original.file.name,
        text=original.text,
    )

    assert logged_in(alice).delete(f"/api/uploads/{made['id']}/").status_code == 204

    assert len(stored_files(media)) == 1
    assert body_of(download(logged_in(bob), str(copy.id))) == b"both of us"
