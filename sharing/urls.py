from __future__ import annotations

from django.urls import path

from sharing import views

# <str:token> takes any one path segment: a malformed token reaches the view, which answers
# it exactly as an unknown one.
urlpatterns = [
    path(
        "api/conversations/<uuid:conversation_id>/share/",
        views.conversation_share,
        name="api-conversation-share",
    ),
    path("api/shares/<str:token>/", views.share_detail, name="api-share"),
    path(
        "api/shares/<str:token>/files/<uuid:upload_id>/",
        views.share_file,
        name="api-share-file",
    ),
    path("api/shares/<str:token>/fork/", views.share_fork, name="api-share-fork"),
    path("s/<str:token>/", views.share_page, name="share-page"),
]
