"""The socket's Origin must be the site's own, scheme and port included (or trusted)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def test_another_port_on_the_same_host_is_refused(ws, alice):
    # Any page served on the same machine (another app, a dev server) is another origin.
    await ws(alice, origin=b"http://127.0.0.1:9999", host=b"127.0.0.1:8000", expect=False)


async def test_another_scheme_is_refused(ws, alice):
    await ws(alice, origin=b"https://localhost", host=b"localhost", expect=False)


async def test_a_missing_or_null_origin_is_refused(ws, alice):
    await ws(alice, origin=b"", expect=False)
    await ws(alice, origin=b"null", expect=False)


async def test_a_host_outside_allowed_hosts_is_refused(ws, alice):
    await ws(alice, origin=b"http://evil.example", host=b"evil.example", expect=False)


async def test_https_behind_the_proxy_is_the_sites_own_origin(ws, alice):
    await ws(
        alice,
        origin=b"https://localhost",
        host=b"localhost",
        extra=[(b"x-forwarded-proto", b"https")],
    )


async def test_a_trusted_origin_is_accepted(ws, alice, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com"]
    await ws(alice, origin=b"https://chat.example.com", host=b"localhost")
    await ws(alice, origin=b"https://other.example.com", host=b"localhost", expect=False)
