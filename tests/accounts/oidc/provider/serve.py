"""Start the test provider: key, database, users and the registered client, then serve."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ID = "persona-chat"
CLIENT_SECRET = "persona-chat-test-secret"


def _key(directory: Path) -> None:
    path = directory / "key.pem"
    if path.exists():  # a restart keeps its key, as a real provider does
        return
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _setup() -> None:
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from oauth2_provider.models import Application

    from tests.accounts.oidc.provider.validator import users

    call_command("migrate", verbosity=0, interactive=False)
    for username, data in users().items():
        user, _ = User.objects.get_or_create(username=username)
        user.set_password(data["password"])
        user.save()
    redirect_uris = os.environ["PROVIDER_REDIRECT_URIS"]
    Application.objects.update_or_create(
        client_id=CLIENT_ID,
        defaults={
            "name": "Persona Chat",
            "client_type": Application.CLIENT_CONFIDENTIAL,
            "authorization_grant_type": Application.GRANT_AUTHORIZATION_CODE,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": redirect_uris,
            "post_logout_redirect_uris": os.environ.get("PROVIDER_LOGOUT_URIS", ""),
            "algorithm": Application.RS256_ALGORITHM,
            "skip_authorization": True,  # the consent screen approves itself
        },
    )


def main() -> None:
    directory = Path(os.environ["PROVIDER_DIR"])
    _key(directory)
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.accounts.oidc.provider.settings"
    import django

    django.setup()
    _setup()
    from django.core.servers.basehttp import run
    from django.core.wsgi import get_wsgi_application

    port = int(os.environ["PROVIDER_PORT"])
    print(json.dumps({"serving": f"http://127.0.0.1:{port}"}), flush=True)
    sys.stdout.flush()
    run("127.0.0.1", port, get_wsgi_application(), threading=True)


if __name__ == "__main__":
    main()
