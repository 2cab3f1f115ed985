from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from conversations.models import Conversation


def get_conversation_for_user(request: HttpRequest, conversation_id: uuid.UUID) -> Conversation:
    # Scoping the lookup by owner makes another user's id a plain 404, never a 403.
    return get_object_or_404(
        Conversation.objects.select_related("persona"), id=conversation_id, owner=request.user
    )


# never_cache: after logging out, Back must not show the conversation from a cache.
@never_cache
@login_required
@require_GET
def chat(request: HttpRequest, conversation_id: uuid.UUID | None = None) -> HttpResponse:
    # The page loads its data from the JSON API; this only proves the URL is the user's own.
    if conversation_id is not None:
        get_conversation_for_user(request, conversation_id)
    return render(
        request,
        "chat/index.html",
        {"max_message_chars": settings.MAX_MESSAGE_CHARS, "share_public": settings.SHARE_PUBLIC},
    )
