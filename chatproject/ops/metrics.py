"""/metrics: this worker's Prometheus metrics, behind a bearer token in production.

Without METRICS_TOKEN the page is open only in development (DEBUG) or when METRICS_PUBLIC=true.

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


def has_metrics_token(request: HttpRequest) -> bool:
    """Whether the request carries `Authorization: Bearer <METRICS_TOKEN>` (and one is set)."""
    token: str = settings.METRICS_TOKEN
    if not token:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # compare_digest takes as long whatever prefix matches, so the token cannot be guessed
    # byte by byte from response times.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not settings.METRICS_TOKEN and not (settings.DEBUG or settings.METRICS_PUBLIC):
        # Fail closed: in production, open metrics must be asked for (METRICS_PUBLIC=true).
        return HttpResponse("Forbidden: metrics are private on this server.\n", status=403)
    if settings.METRICS_TOKEN and not has_metrics_token(request):
        response = HttpResponse(
            "Unauthorized: send Authorization: Bearer <METRICS_TOKEN>\n", status=401
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_PLAIN_0_0_4)
