"""STORAGE_BACKEND=s3: the real app server configured by environment variables alone,
against moto running as an S3 server of its own, its bucket read back through boto3."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from django.conf import settings
from PIL import Image

from attachments.models import Attachment, Upload
from conversations.models import Conversation, Message
from conversations.services import message_append
from tests.attachments import files
from tests.conftest import session_cookie, subprocess_database_url
from tests.workers.conftest import ROOT, Worker

pytestmark = [pytest.mark.django_db(transaction=True)]

MOTO_PORT = 8621
SERVER_PORT = 8622
BUCKET = "chat-uploads"
PREFIX = "chat"  # AWS_LOCATION
CSRF_TOKEN = "s" * 32
MOTO_SERVER = Path(sys.executable).with_name("moto_server")
MANAGE = (sys.executable, "manage.py")
S3_ENV = {
    "STORAGE_BACKEND": "s3",
    "AWS_STORAGE_BUCKET_NAME": BUCKET,
    "AWS_S3_ENDPOINT_URL": f"http://127.0.0.1:{MOTO_PORT}",
    "AWS_S3_REGION_NAME": "us-east-1",
    "AWS_ACCESS_KEY_ID": "chat-test-key",
    "AWS_SECRET_ACCESS_KEY": "chat-test-secret",
    "AWS_LOCATION": PREFIX,
}


def base_env() -> dict[str, str]:
    """This process's environment without any S3 settings of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STORAGE_"))}
    env.pop("DATABASE_TEST_NAME", None)
    return {**env, "DATABASE_URL": subprocess_database_url(), "DJANGO_DEBUG": "true"}


@pytest.fixture
def bucket() -> Iterator[Any]:
    log = (ROOT / "test-output" / "workers").joinpath("moto.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        moto = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(MOTO_PORT)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            s3 = boto3.client(
                "s3",
                endpoint_url=S3_ENV["AWS_S3_ENDPOINT_URL"],
                region_name=S3_ENV["AWS_S3_REGION_NAME"],
                aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
            )
            deadline = time.monotonic() + 30
            while True:
                try:
                    s3.create_bucket(Bucket=BUCKET)
                    break
                except Exception:
                    if moto.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            yield s3
        finally:
            moto.terminate()
            moto.wait(10)


@pytest.fixture
def server(bucket: Any) -> Iterator[Worker]:
    worker = Worker("uploads-s3", {**base_env(), "REDIS_URL": "", **S3_ENV}, server="uvicorn")
    worker.port = SERVER_PORT
    try:
        yield worker.start()
    finally:
        worker.close()


def keys(s3: Any) -> list[str]:
    listed = s3.list_objects_v2(Bucket=BUCKET)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def browser(user: Any) -> requests.Session:
    """A signed-in browser's session: its cookies and the CSRF header the page sends."""
    session = requests.Session()
    session.cookies.set(settings.SESSION_COOKIE_NAME, session_cookie(user))
    session.cookies.set(settings.CSRF_COOKIE_NAME, CSRF_TOKEN)
    session.headers.update({"X-CSRFToken": CSRF_TOKEN, "Origin": f"http://127.0.0.1:{SERVER_PORT}"})
    return session


def url(path: str) -> str:
    return f"http://127.0.0.1:{SERVER_PORT}{path}"


def test_an_upload_lives_in_the_bucket_downloads_from_it_and_goes_with_delete(
    alice: Any, bob: Any, bucket: Any, server: Worker
) -> None:
    tab = browser(alice)
    sent = files.png(300, 200)

    made = tab.post(url("/api/uploads/"), files={"file": ("shot.png", sent, "image/png")})

    assert made.status_code == 201, made.text
    upload = Upload.objects.get(id=made.json()["id"])
    assert keys(bucket) == [f"{PREFIX}/{upload.file.name}"]
    in_bucket = bucket.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{upload.file.name}")
    stored = in_bucket["Body"].read()
    # Private: no grant to anyone but the bucket's owner (no public-read ACL is set).
    acl = bucket.get_object_acl(Bucket=BUCKET, Key=f"{PREFIX}/{upload.file.name}")
    assert [grant["Grantee"].get("URI") for grant in acl["Grants"]] == [None]

    downloaded = tab.get(url(made.json()["url"]))

    assert downloaded.status_code == 200
    assert downloaded.content == stored
    assert Image.open(io.BytesIO(downloaded.content)).size == (300, 200)
    assert downloaded.headers["Content-Type"] == "image/png"
    assert downloaded.headers["X-Content-Type-Options"] == "nosniff"
    assert downloaded.headers["Content-Disposition"].startswith("attachment;")
    assert browser(bob).get(url(made.json()["url"])).status_code == 404

    deleted = tab.delete(url(made.json()["url"]))

    assert deleted.status_code == 204
    assert keys(bucket) == []
    assert tab.get(url(made.json()["url"])).status_code == 404


def test_pruning_sweeps_the_bucket_of_objects_no_upload_names(
    alice: Any, persona: Any, bucket: Any, server: Worker
) -> None:
    made = browser(alice).post(url("/api/uploads/"), files={"file": ("a.txt", b"kept")})
    assert made.status_code == 201, made.text
    kept = f"{PREFIX}/{Upload.objects.get(id=made.json()['id']).file.name}"
    Upload.objects.filter(id=made.json()["id"]).update(created_at="2020-01-01T00:00:00Z")
    # Attached to a message, so it is in use however old.
    chat = Conversation.objects.create(owner=alice, persona=persona)
    message = message_append(conversation=chat, role=Message.Role.USER, content="see")
    Attachment.objects.create(message=message, upload_id=made.json()["id"], position=0)
    crashed = f"{PREFIX}/uploads/2020/01/00000000-0000-0000-0000-000000000000.txt"
    bucket.put_object(Bucket=BUCKET, Key=crashed, Body=b"left by a crash")
    # The grace below is a second: let the object be older than that.
    time.sleep(2)

    pruned = subprocess.run(
        [*MANAGE, "prune_conversations", "--older-than", "90d", "--upload-grace", "1s"],
        cwd=ROOT,
        env={**base_env(), **S3_ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.strip().splitlines()[1] == (
        "prune_conversations: deleted 0 unused upload(s) (0 B) and 1 stored file(s) no "
        "upload names (15 B), older than 1s"
    )
    assert keys(bucket) == [kept]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STORAGE_BACKEND": "s3"}, "STORAGE_BACKEND=s3 needs AWS_STORAGE_BUCKET_NAME."),
        (
            {"STORAGE_BACKEND": "ftp"},
            "STORAGE_BACKEND='ftp' is not one of filesystem, s3.",
        ),
    ],
)
def test_a_storage_that_is_not_set_up_stops_the_server_from_starting(
    env: dict[str, str], message: str
) -> None:
    worker = Worker("uploads-bad-storage", {**base_env(), **env}, server="uvicorn")
    worker.port = SERVER_PORT
    started = subprocess.run(
        worker.command(), cwd=ROOT, env=worker.env, capture_output=True, text=True, timeout=60
    )
    checked = subprocess.run(
        [*MANAGE, "check"],
        cwd=ROOT,
        env=worker.env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert started.returncode != 0
    assert f"ImproperlyConfigured: {message}" in started.stdout + started.stderr
    assert checked.returncode != 0
    assert f"ImproperlyConfigured: {message}" in checked.stderr
