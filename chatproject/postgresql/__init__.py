"""Django's PostgreSQL backend, whose pool check costs a busy worker no round trip."""
