from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from oauth2_provider.oauth2_validators import OAuth2Validator


def users() -> dict[str, dict[str, Any]]:
    # Read at each sign-in, so a test can change a user's groups between two sign-ins.
    data: dict[str, dict[str, Any]] = json.loads(
        (Path(os.environ["PROVIDER_DIR"]) / "users.json").read_text()
    )
    return data


class ClaimsValidator(OAuth2Validator):
    oidc_claim_scope = {**OAuth2Validator.oidc_claim_scope, "groups": "profile"}

    def get_additional_claims(self, request: Any) -> dict[str, Any]:
        user = users()[request.user.username]
        return {
            "preferred_username": user.get("preferred_username", request.user.username),
            "name": user["name"],
            "email": user["email"],
            "email_verified": True,
            "groups": user["groups"],
        }
