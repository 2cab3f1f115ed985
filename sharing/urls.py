from __future__ import annotations

from django.urls import path, re_path

from sharing import views

# A token takes any characters, "/" included, and the catch-alls come last: a malformed
# token, an empty one or a path with segments more reaches the share views, which answer it
# exactly as an unknown token (the same 404 body, noindex), never with the site's own 404.
urlpatterns = [
    path(
        "api/conversations/<uuid:conversation_id>/share/",
        views.conversation_share,
        name="api-conversation-share",
    ),
    path(
        "api/shares/<str:token>/files/<uuid:upload_id>/",
        views.share_file,
        name="api-share-file",
    ),
    path("api/shares/<str:token>/fork/", views.share_fork, name="api-share-fork"),
    re_path(r"^api/shares/(?P<token>.*)/$", views.share_detail, name="api-share"),
    re_path(r"^s/(?P<token>.*)/$", views.share_page, name="share-page"),
]
