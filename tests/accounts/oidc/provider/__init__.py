"""A real OpenID Connect provider for the tests: django-oauth-toolkit in its own process.

`python -m tests.accounts.oidc.provider.serve` with PROVIDER_DIR (its SQLite database, RSA
key and users.json), PROVIDER_PORT and PROVIDER_REDIRECT_URIS; see tests/accounts/oidc/idp.py.
"""
