"""Every answer under /api/ is JSON, the errors Django raises itself included."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import PermissionDenied
from django.test import RequestFactory

from chatproject.errors import permission_denied, server_error

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


def test_a_host_not_allowed_under_api_answers_json_400(client, alice):
    """Django refuses the request before any view; an API client still gets the envelope."""
    client.force_login(alice)

    refused = client.get("/api/personas/", HTTP_HOST="evil.example")
    page = client.get("/accounts/login/", HTTP_HOST="evil.example")

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid"
    assert page.status_code == 400
    assert page["Content-Type"].startswith("text/html")


def test_a_permission_denied_under_api_answers_json_403():
    response = permission_denied(RequestFactory().get("/api/usage/"), PermissionDenied())
    assert response.status_code == 403
    assert json.loads(response.content)["error"]["code"] == "forbidden"


def test_a_server_error_under_api_answers_json():
    response = server_error(RequestFactory().get("/api/conversations/"))
    assert response.status_code == 500
    assert b'"server_error"' in response.content


def test_under_debug_an_unknown_api_path_still_answers_json(client, alice, settings):
    # `make run` serves with DJANGO_DEBUG=true, where Django answered its own HTML 404 page.
    settings.DEBUG = True
    client.force_login(alice)
    for path in ("/api/no-such-endpoint/", "/api/conversations/not-a-uuid/", "/api/"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found", path


@pytest.mark.parametrize("debug", [False, True])
def test_a_path_without_its_slash_keeps_the_method_and_body(
    client, alice, persona, settings, debug
):
    # A 301 made clients re-send a POST as a GET (a 200 list for a create); under DEBUG,
    # Django raised an HTML 500 instead.
    settings.DEBUG = debug
    client.force_login(alice)

    moved = client.post("/api/conversations?x=1", "{}", content_type="application/json")

    assert moved.status_code == 308
    assert moved["Location"] == "/api/conversations/?x=1"
    assert moved.json()["error"]["code"] == "not_found"
    created = client.post(moved["Location"], "{}", content_type="application/json")
    assert created.status_code == 201
    assert client.get("/api/conversations").status_code == 308
