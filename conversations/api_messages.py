"""POST /api/conversations/<id>/messages/: the non-streaming turn (being written by the core)."""

from __future__ import annotations

import uuid

from django.http import HttpRequest, JsonResponse


def post_message(request: HttpRequest, conversation_id: uuid.UUID) -> JsonResponse:
    return JsonResponse(
        {"error": {"code": "unavailable", "message": "Not implemented yet."}}, status=501
    )
