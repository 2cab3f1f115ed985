from __future__ import annotations

from django.urls import path

from attachments import views

urlpatterns = [
    path("api/uploads/", views.uploads, name="api-uploads"),
    path("api/uploads/<uuid:upload_id>/", views.upload, name="api-upload"),
]
