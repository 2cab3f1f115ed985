"""/metrics: this worker's Prometheus metrics, optionally behind a bearer token.

Each worker answers for itself (its gauges are its own sockets, generations and pool), so a
multi-worker deployment scrapes every worker on its own port; see deploy/CHECKLIST.md.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, REGISTRY, generate_latest

# Imported for its side effect: the pool collector registers itself with REGISTRY.
from conversations import metrics as _chat_metrics  # noqa: F401


def _authorized(request: HttpRequest) -> bool:
    token: str = settings.METRICS_TOKEN
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # compare_digest takes as long whatever prefix matches, so the token cannot be guessed
    # byte by byte from response times.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not _authorized(request):
        response = HttpResponse(
            "Unauthorized: send Authorization: Bearer <METRICS_TOKEN>\n", status=401
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_PLAIN_0_0_4)
