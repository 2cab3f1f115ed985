"""Every answer under /api/ is JSON, the errors Django raises itself included."""

from __future__ import annotations

import pytest
from django.test import RequestFactory

from chatproject.errors import server_error

pytestmark = pytest.mark.django_db


def test_an_unknown_api_path_answers_json_404(client, alice):
    client.force_login(alice)
    response = client.get("/api/no-such-endpoint/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_pages_keep_their_html_404(client):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_a_server_error_under_api_answers_json():
    response = server_error(RequestFactory().get("/api/conversations/"))
    assert response.status_code == 500
    assert b'"server_error"' in response.content
