"""Share links: the owner's share endpoint, the snapshot as JSON and as a page, its files,
and the reader's fork. Read-only for readers; PROTOCOL.md "Sharing and attachments"."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

from attachments.serve import file_response
from conversations.api import (
    REFUSALS,
    ApiError,
    api_view,
    error_response,
    refusal_response,
    request_user,
)
from conversations.errors import Forbidden, Invalid, NotFound
from conversations.serializers import conversation_dict
from conversations.views import get_conversation_for_user
from sharing import serializers, services
from sharing.models import Share
from sharing.throttle import fork_wait

# One answer for unknown, revoked and malformed tokens alike: nothing tells them apart.
GONE_MESSAGE = "This share link does not exist or was revoked."

ShareView = Callable[..., HttpResponseBase]
# HEAD is GET without the body (the server drops it): what link previews and `curl -I` send.
READ_METHODS = ("GET", "HEAD")
ALLOW_READ = "GET, HEAD"


def private(view: ShareView) -> ShareView:
    """Every share response, refusals included: not for search engines (a link may get
    posted somewhere public), not kept by caches, and the token-bearing URL never leaves in
    a Referer header."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = view(request, *args, **kwargs)
        response["X-Robots-Tag"] = "noindex, nofollow"
        response["Cache-Control"] = "private, no-store"
        response["Referrer-Policy"] = "no-referrer"
        return response

    return wrapper


def readable(request: HttpRequest) -> bool:
    return bool(settings.SHARE_PUBLIC or request.user.is_authenticated)


def find_share(token: str) -> Share:
    share = services.share_find(token)
    if share is None:
        raise ApiError(404, "not_found", GONE_MESSAGE)
    return share


def share_read(view: Callable[..., HttpResponseBase]) -> ShareView:
    """GET (and HEAD, which link previews send); signed-in readers unless SHARE_PUBLIC; the
    share found by its token (or 404) handed to the view. Anonymous callers get 401 before
    any lookup, so they learn nothing about which tokens exist."""

    # Exempt: nothing here changes anything, and a POST gets the JSON 405, not CSRF's page.
    @csrf_exempt
    @private
    @functools.wraps(view)
    def wrapper(request: HttpRequest, token: str, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not readable(request):
            return error_response(401, "unauthorized", "Log in first.")
        if request.method not in READ_METHODS:
            response = error_response(
                405, "method_not_allowed", f"{request.method} is not allowed here."
            )
            response["Allow"] = ALLOW_READ
            return response
        try:
            return view(request, find_share(token), *args, **kwargs)
        except REFUSALS as exc:
            return refusal_response(exc)

    return wrapper


def _link_response(request: HttpRequest, share: Share, status: int) -> JsonResponse:
    url = request.build_absolute_uri(serializers.page_path(share.token))
    return JsonResponse(serializers.share_link_dict(share, url), status=status)


@api_view("GET", "POST", "DELETE")
def conversation_share(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """The owner's side: POST shares (again), DELETE revokes, GET says whether it is shared."""
    found = get_conversation_for_user(request, conversation_id)
    if request.method == "POST":
        try:
            share = services.share_save(conversation=found)
        except Invalid as exc:
            raise ApiError(400, "invalid", exc.message) from None
        except NotFound as exc:
            raise ApiError(404, "not_found", exc.message) from None
        return _link_response(request, share, 201)
    if request.method == "DELETE":
        services.share_revoke(conversation=found)
        return HttpResponse(status=204)
    shared = Share.objects.filter(conversation=found).first()
    if shared is None:
        raise ApiError(404, "not_found", "This conversation is not shared.")
    return _link_response(request, shared, 200)


@share_read
def share_detail(request: HttpRequest, share: Share) -> HttpResponse:
    return JsonResponse(serializers.share_dict(share))


@share_read
def share_file(request: HttpRequest, share: Share, upload_id: uuid.UUID) -> HttpResponseBase:
    upload = services.share_upload(share, upload_id)
    if upload is None:
        raise ApiError(404, "not_found", "No such file in this share.")
    try:
        return file_response(upload)
    except FileNotFoundError:
        raise ApiError(404, "not_found", "This file is no longer stored.") from None


@private
@api_view("POST")
def share_fork(request: HttpRequest, token: str) -> HttpResponse:
    """The reader's own copy of the snapshot, to continue it: signed in, CSRF, throttled."""
    share = find_share(token)
    user = request_user(request)
    if (wait := fork_wait(user.pk)) is not None:
        response = error_response(
            429, "rate_limited", f"Too many copies made: try again in {wait} seconds."
        )
        response["Retry-After"] = str(wait)
        return response
    try:
        conversation = services.share_fork(share=share, reader=user)
    except Forbidden as exc:
        raise ApiError(403, "forbidden", exc.message) from None
    return JsonResponse(conversation_dict(conversation), status=201)


# Exempt: the page only reads, and a POST gets the 405 below, noindex like every answer
# here, rather than CSRF's own page without it.
@csrf_exempt
@private
def share_page(request: HttpRequest, token: str) -> HttpResponseBase:
    """The snapshot as a read-only page; the messages are drawn by static/sharing/share.js
    from the JSON embedded with json_script (no inline script: the CSP forbids it)."""
    if request.method not in READ_METHODS:
        response = HttpResponse(status=405)
        response["Allow"] = ALLOW_READ
        return response
    if not readable(request):
        return redirect_to_login(request.get_full_path())
    share = services.share_find(token)
    if share is None:
        return render(request, "sharing/gone.html", status=404)
    data = serializers.share_dict(share)
    context = {
        "share": data,
        "created_at": share.created_at,
        "fork_url": f"/api/shares/{share.token}/fork/",
        "login_url": f"{settings.LOGIN_URL}?next={serializers.page_path(share.token)}",
    }
    return render(request, "sharing/share.html", context)
