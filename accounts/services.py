from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from accounts.models import Profile


@transaction.atomic
def demo_user_ensure(*, username: str, password: str, display_name: str) -> bool:
    """Create the local demo account if it is missing. Returns True when it was created."""
    User = get_user_model()
    if User.objects.filter(username=username).exists():
        return False
    user = User.objects.create_user(username=username, password=password)
    Profile.objects.update_or_create(
        user=user,
        defaults={"display_name": display_name, "about": "Trying out the demo on my own machine."},
    )
    return True
