"""Uploads through the real views, stored by Django's storage API in a folder of the test's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    root = tmp_path / "media"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": root},
        },
    }
    settings.UPLOADS_PER_MINUTE = 1000
    return root


def stored_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


def logged_in(user: Any, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def post_file(
    client: Client,
    name: str,
    data: bytes,
    content_type: str = "application/octet-stream",
    **extra: Any,
) -> Any:
    """A multipart POST as a browser's FormData sends it, the declared type included
    (which the server must ignore)."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile(name, data, content_type=content_type)
    return client.post("/api/uploads/", {"file": upload}, **extra)


def error_of(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]
