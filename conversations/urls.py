from __future__ import annotations

from django.urls import path

from conversations import api, api_messages, views

# The open conversation lives in the path, /c/<uuid>/, so a reload or a shared link
# reopens it (and resumes its reply); "/" is a new chat.
urlpatterns = [
    path("", views.chat, name="chat"),
    path("c/<uuid:conversation_id>/", views.chat, name="chat-conversation"),
    path("api/personas/", api.personas, name="api-personas"),
    path("api/usage/", api.usage, name="api-usage"),
    path("api/conversations/", api.conversations, name="api-conversations"),
    path(
        "api/conversations/<uuid:conversation_id>/",
        api.conversation,
        name="api-conversation",
    ),
    path("api/conversations/<uuid:conversation_id>/messages/", api_messages.post_message),
    path("api/messages/<uuid:message_id>/regenerate/", api_messages.regenerate),
    path("api/messages/<uuid:message_id>/feedback/", api.feedback, name="api-message-feedback"),
    path(
        "api/conversations/<uuid:conversation_id>/export/",
        api.export,
        name="api-conversation-export",
    ),
]
