"""Error pages: JSON under /api/, as every API answer is; Django's own pages elsewhere."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect, JsonResponse
from django.urls import Resolver404, resolve
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt


def _api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _api(request):
        return JsonResponse(
            {"error": {"code": "not_found", "message": "No such API endpoint or object."}},
            status=404,
        )
    return defaults.page_not_found(request, exception)


def _slashed(request: HttpRequest) -> str | None:
    """The path with the slash it lacks, when that path is an endpoint."""
    path = request.path_info
    if path.endswith("/"):
        return None
    try:
        found = resolve(path + "/")
    except Resolver404:
        return None
    return None if found.func is api_not_found else request.get_full_path(force_append_slash=True)


@csrf_exempt
def api_not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Every path under /api/ that no endpoint takes, so it answers JSON under DEBUG too
    (Django's own 404 page there) and a path without its final slash is redirected with 308,
    which keeps the method and body: CommonMiddleware's 301 made clients send a POST again
    as a GET, and under DEBUG it raised an error page instead."""
    slashed = _slashed(request)
    if slashed is None:
        return not_found(request, Resolver404())
    message = f"No such API endpoint: the path ends with a slash, {slashed}"
    return HttpResponsePermanentRedirect(
        slashed,
        preserve_request=True,
        content=json.dumps({"error": {"code": "not_found", "message": message}}),
        content_type="application/json",
    )


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """A request Django refuses before any view (a `Host` not in ALLOWED_HOSTS, a body it
    cannot parse). Under DEBUG Django shows its debug page instead, a developer's aid."""
    if _api(request):
        return JsonResponse(
            {"error": {"code": "invalid", "message": "The request could not be understood."}},
            status=400,
        )
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _api(request):
        return JsonResponse(
            {"error": {"code": "forbidden", "message": "You may not do this."}}, status=403
        )
    return defaults.permission_denied(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _api(request):
        return JsonResponse(
            {"error": {"code": "server_error", "message": "Something went wrong on our side."}},
            status=500,
        )
    return defaults.server_error(request)
