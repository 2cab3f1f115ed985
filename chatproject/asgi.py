"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

from __future__ import annotations

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from attachments.limits import UploadSizeLimit  # noqa: E402
from conversations.auth import AuthMiddlewareStack, SameOriginValidator  # noqa: E402
from conversations.replies.outbox import remember_server  # noqa: E402
from conversations.routing import websocket_urlpatterns  # noqa: E402

django_http = ASGIStaticFilesHandler(django_asgi_app) if settings.SERVE_STATIC else django_asgi_app
# Outermost: an upload past MAX_UPLOAD_BYTES is refused as it streams in, before Django
# (which reads every body whole before the view runs) has spooled it to disk.
http_app = UploadSizeLimit(django_http)

application = ProtocolTypeRouter(
    {
        "http": http_app,
        # The server's own send() is noted first, before middleware wraps it (outbox.py).
        "websocket": remember_server(
            SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
        ),
    }
)

# The cycle collector, tuned for a long-lived server. Everything loaded so far (Django, the
# apps, the libraries) lives as long as the process: frozen, no collection walks it again.
# A turn allocates thousands of objects that reference counting frees by itself; at CPython's
# default (a collection every 700 allocations) a burst of 1,000 short turns spent 0.30 s in
# the collector, from 50,000 on 0.04 s, and the worker's CPU per turn fell from 2.7 to 2.3 ms
# (bench/results/gc). Cyclic garbage still goes, in larger and rarer collections. The price
# is memory: while 10,000 sockets opened and closed, a worker's RSS rose to 172 MB, against
# a flat 118 MB at 700 (GC_FIRST_THRESHOLD=700 brings back CPython's first threshold). So what a
# closed socket leaves must not be cyclic (Outbox.detach).
gc.collect()
gc.freeze()
gc.set_threshold(settings.GC_FIRST_THRESHOLD, 20, 10)
