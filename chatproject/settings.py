"""One settings file: every difference between machines comes from environment variables."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def envstr(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def envbool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def envint(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return int(value)


def envfloat(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return float(value)


# Fail closed: production unless DJANGO_DEBUG=true says otherwise (`make run` and the tests
# set it), so a forgotten variable never serves debug pages with a built-in secret key.
DEBUG = envbool("DJANGO_DEBUG", False)
SECRET_KEY = envstr("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise RuntimeError(
            "DJANGO_SECRET_KEY must be set in production (DJANGO_DEBUG is not true)."
        )
    SECRET_KEY = "dev-only-insecure-secret-key-do-not-use-in-production"

ALLOWED_HOSTS = [
    host.strip()
    for host in envstr("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
    if host.strip()
]
CSRF_TRUSTED_ORIGINS = [
    origin for origin in envstr("CSRF_TRUSTED_ORIGINS").split(",") if origin.strip()
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "accounts",
    "accounts.oidc",  # sign-in with OpenID Connect (issue 13): identities by (issuer, sub)
    "personas",
    "conversations",
    "attachments",  # uploads on messages (issue 15)
    "sharing",  # read-only share links (issue 15)
    "axes",  # login throttling (issue 10); its admin lists and clears lockouts
    "csp",  # django-csp's system checks
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # The Content-Security-Policy header, on every response (admin and errors too).
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "chatproject.urls"
ASGI_APPLICATION = "chatproject.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
# SQLite is the embedded default. With PostgreSQL, Django's own psycopg pool is used and
# persistent connections are off (CONN_MAX_AGE=0), as Django recommends under ASGI.
DATABASE_URL = envstr("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
_database: dict[str, Any] = dict(dj_database_url.parse(DATABASE_URL, conn_max_age=0))
_postgresql = _database["ENGINE"] == "django.db.backends.postgresql"
if _postgresql:
    _options: dict[str, Any] = {"connect_timeout": envint("DB_CONNECT_TIMEOUT", 5)}
    if envbool("DB_POOL", True):
        _options["pool"] = {
            "min_size": envint("DB_POOL_MIN_SIZE", 1),
            "max_size": envint("DB_POOL_MAX_SIZE", 10),
            "timeout": envfloat("DB_POOL_TIMEOUT", 5.0),
        }
        # Django's backend, whose pool tests each connection as it leaves: after a database
        # restart the pool still holds dead ones, and a turn must not be refused for them.
        # Its test costs a round trip only where the server closed its side or said
        # something, or the connection sat unused for 5 s (chatproject/postgresql/base.py);
        # CONN_HEALTH_CHECKS' costs one every time.
        _database["ENGINE"] = "chatproject.postgresql"
    # Server-side binding, and psycopg prepares what a connection runs again and again (from
    # its 5th run): a turn's statements are then planned once per pooled connection, not on
    # every turn, which was most of PostgreSQL's CPU per turn (docs/scaling.md). Django's
    # default is neither, for PgBouncer's sake; behind one (DB_PGBOUNCER) it stays so.
    if envbool("DB_PREPARED_STATEMENTS", True):
        _options["server_side_binding"] = True
        _options["prepare_threshold"] = 5
    _database["OPTIONS"] = _options
    _database["CONN_MAX_AGE"] = 0
    if test_name := envstr("DATABASE_TEST_NAME"):
        _database["TEST"] = {"NAME": test_name}
# DATABASE_URL names a PgBouncer in transaction pooling mode (docs/scaling.md): each
# transaction may run on a different server connection, so nothing may outlive one. psycopg
# prepares no statements (Django's default, pinned: PgBouncer before 1.21 cannot route them),
# and `.iterator()` reads through a plain cursor: outside atomic() it would DECLARE a WITH HOLD
# cursor that the next transaction's server connection does not have ("cursor ... does not
# exist", tests/ops/test_pgbouncer.py). The pool's check then tests the link to PgBouncer
# (a round trip when it was quiet or PgBouncer closed it), and PgBouncer replaces dead server
# connections itself.
DB_PGBOUNCER = envbool("DB_PGBOUNCER", False)
if DB_PGBOUNCER and _postgresql:
    _database["OPTIONS"].pop("server_side_binding", None)
    _database["OPTIONS"]["prepare_threshold"] = None
    _database["DISABLE_SERVER_SIDE_CURSORS"] = True
DATABASES = {"default": _database}
# Threads for the turn's database calls where they are not on the event loop (TURN_DB_ON_LOOP),
# and as many connections there (0: Channels' single shared thread, which SQLite
# keeps: it allows one writer at a time). Four, as many as TURN_BEGINS_AT_ONCE, and never more
# than the pool holds: with ten, a burst of 1,000 short turns cost PostgreSQL 1.39 ms of CPU
# a turn against 1.11 ms with four (more transactions at once, contending on a 2-core
# machine), and the worker's threads contended for the GIL with its event loop
# (bench/results/db-threads). A database far away (milliseconds a round trip) may want more.
DB_CALL_THREADS = envint(
    "DB_CALL_THREADS",
    min(4, envint("DB_POOL_MAX_SIZE", 10)) if _postgresql else 0,
)
# Turn begins running their transaction at once; more queue, first come first served
# (conversations/replies/admission.py). 0: as many as there are threads.
TURN_BEGINS_AT_ONCE = envint("TURN_BEGINS_AT_ONCE", 4)
# A turn's begin and its reply's save, and a socket handshake's session and user lookup, run
# on the event loop, on async connections of the worker's own (at most DB_CALL_THREADS, beside
# the pool): no thread hop (conversations/db.py). Off: on the turn threads, as every other
# database call. PostgreSQL only.
TURN_DB_ON_LOOP = envbool("TURN_DB_ON_LOOP", True)
# A begin that waited this long for its place is answered `busy`.
TURN_BEGIN_WAIT_SECONDS = envfloat("TURN_BEGIN_WAIT_SECONDS", 5.0)
# The cycle collector runs once this many objects were allocated (CPython's default: 700);
# chatproject/asgi.py says what the larger default buys and costs.
GC_FIRST_THRESHOLD = envint("GC_FIRST_THRESHOLD", 50_000)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channels -------------------------------------------------------------------------
REDIS_URL = envstr("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "conversations.replies.layer.ResilientRedisChannelLayer",
            "CONFIG": {
                # redis-py 8 reads with a 5 s socket timeout by default, the same as
                # channels-redis's blocking pop: give the pop room, or receive() raises.
                "hosts": [
                    {"address": REDIS_URL, "socket_timeout": 15, "socket_connect_timeout": 3}
                ],
                "capacity": 1000,
                "expiry": 30,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "conversations.replies.layer.LocalChannelLayer"}}

# --- Auth -----------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
ALLOW_SIGNUP = envbool("ALLOW_SIGNUP", True)

# --- Sign-in with OpenID Connect (issue 13), through mozilla-django-oidc -----------------
# On when the issuer, client id and secret are all set. The endpoints come from
# <OIDC_ISSUER>/.well-known/openid-configuration, fetched when a sign-in first needs them
# (never at startup: a provider that is away must not stop the site) and cached.
OIDC_ISSUER = envstr("OIDC_ISSUER").strip().rstrip("/")
OIDC_CLIENT_ID = envstr("OIDC_CLIENT_ID").strip()
OIDC_CLIENT_SECRET = envstr("OIDC_CLIENT_SECRET")
OIDC_NAME = envstr("OIDC_NAME").strip() or "your organisation's account"
# A claim whose values become the user's Django groups at each sign-in; unset: groups are
# left as admin sets them.
OIDC_GROUPS_CLAIM = envstr("OIDC_GROUPS_CLAIM").strip()
OIDC_RP_SCOPES = envstr("OIDC_SCOPES").strip() or "openid email profile"
# Seconds for each request to the provider (discovery, token, userinfo, JWKS).
OIDC_TIMEOUT = envfloat("OIDC_TIMEOUT", 5.0)
OIDC_DISCOVERY_CACHE_SECONDS = envfloat("OIDC_DISCOVERY_CACHE_SECONDS", 3600.0)
# RS256 ID tokens checked against the provider's JWKS; nonce and PKCE on; the ID token is
# kept in the session for the provider's end-session endpoint (id_token_hint).
OIDC_RP_SIGN_ALGO = "RS256"
OIDC_USE_NONCE = True
OIDC_USE_PKCE = True
OIDC_STORE_ID_TOKEN = True
# false: no password form, no signup (a POST answers 403 / 404). /admin/ keeps Django's own
# login, so accounts made with createsuperuser still get in.
PASSWORD_LOGIN = envbool("PASSWORD_LOGIN", True)

# --- Behind nginx (deploy/): HTTPS only, HSTS. All driven by env, all off in development.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = envbool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
# Probes and scrapers reach each worker directly over plain HTTP on the private network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = envint("DJANGO_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = envbool("DJANGO_HSTS_PRELOAD", False)
# Asking browsers to preload the domain is the domain owner's call (hstspreload.org).
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
READYZ_CHECK_TIMEOUT = envfloat("READYZ_CHECK_TIMEOUT", 2.0)

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

# --- Hardening (issue 10): login and signup throttles, CSP, private metrics -------------
# Failed logins are counted per account and, separately, per client address by django-axes
# in the database (so admin can see and clear lockouts under "Axes"). A lockout ends after
# LOGIN_COOLOFF_MINUTES; more failures during it start the wait again.
# AxesBackend, not AxesStandaloneBackend: being first, it is the backend that code making
# sessions by hand (bench/prepare.py) records, so it must also load users (ModelBackend).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesBackend",
    "django.contrib.auth.backends.ModelBackend",
    # Answers only the OpenID Connect callback; idle unless OIDC_ISSUER etc. are set.
    "accounts.oidc.backend.OIDCBackend",
]
LOGIN_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 5)
LOGIN_COOLOFF_MINUTES = envint("LOGIN_COOLOFF_MINUTES", 15)
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# A success must not wipe an address's failures: guessing four passwords, then logging in
# to one's own account, would start the count again.
AXES_RESET_ON_SUCCESS = False
AXES_LOCKOUT_CALLABLE = "accounts.throttle.locked_out"
AXES_CLIENT_IP_CALLABLE = "accounts.throttle.client_ip"
# Failures are kept; a row for every successful login would only grow.
AXES_DISABLE_ACCESS_LOG = True
# Accounts created per client address per hour (counted in the cache below).
SIGNUPS_PER_HOUR = envint("SIGNUPS_PER_HOUR", 3)
# How many proxies in front of the app append to X-Forwarded-For. 0 (the default) trusts no
# header: the address is the peer's (REMOTE_ADDR). deploy/ needs 0: Daphne's --proxy-headers
# already takes the address from nginx, which sets X-Forwarded-For to the peer it saw.
TRUSTED_PROXY_COUNT = envint("TRUSTED_PROXY_COUNT", 0)
# The signup counter must be shared by every worker: Redis when there is one.
CACHES: dict[str, Any] = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "chat-cache",
            "OPTIONS": {"socket_timeout": 3, "socket_connect_timeout": 3},
        }
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# As strict as the <meta> tag it replaces: our own scripts, styles, fonts and images only,
# no inline script or style. Admin needs nothing more ('self' scripts and styles). A header,
# unlike the tag, also covers admin, JSON and error responses, and can forbid framing.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# /metrics without METRICS_TOKEN: open in development, refused in production unless this
# says the network in front already keeps it private.
METRICS_PUBLIC = envbool("METRICS_PUBLIC", False)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- Chat -----------------------------------------------------------------------------
LLM_PROVIDER = envstr("LLM_PROVIDER", "demo")
GEMINI_API_KEY = envstr("GEMINI_API_KEY")
GEMINI_MODEL = envstr("GEMINI_MODEL", "gemini-2.5-flash")
GEMINI_BASE_URL = envstr("GEMINI_BASE_URL")
OPENAI_API_KEY = envstr("OPENAI_API_KEY")
OPENAI_MODEL = envstr("OPENAI_MODEL", "gpt-4o-mini")
OPENAI_BASE_URL = envstr("OPENAI_BASE_URL")
LLM_CONNECT_TIMEOUT = envfloat("LLM_CONNECT_TIMEOUT", 10.0)
LLM_FIRST_TOKEN_TIMEOUT = envfloat("LLM_FIRST_TOKEN_TIMEOUT", 60.0)
LLM_IDLE_TIMEOUT = envfloat("LLM_IDLE_TIMEOUT", 30.0)
LLM_RETRY_BACKOFF = envfloat("LLM_RETRY_BACKOFF", 0.5)  # first retry delay; doubles after
DEMO_TOKEN_DELAY_MS = envint("DEMO_TOKEN_DELAY_MS", 30)
DEMO_REPLY_WORDS = envint("DEMO_REPLY_WORDS", 0) or None
# Failure injection for chaos runs: the demo provider fails after this many words.
DEMO_FAIL_AFTER_WORDS = envint("DEMO_FAIL_AFTER_WORDS", 0) or None
# ...or fails part-way through this percentage of questions (chosen by their hash).
DEMO_FAIL_RATE = envint("DEMO_FAIL_RATE", 0)

MAX_MESSAGE_CHARS = envint("MAX_MESSAGE_CHARS", 16000)
# A message at the limit in the widest JSON escapes (an emoji as \ud83d\ude00: 12 bytes).
MAX_FRAME_BYTES = envint("MAX_FRAME_BYTES", MAX_MESSAGE_CHARS * 12 + 4096)
HISTORY_MAX_MESSAGES = envint("HISTORY_MAX_MESSAGES", 40)
# The history budget sent to the model, in characters (roughly 4 per token).
HISTORY_MAX_CHARS = envint("HISTORY_MAX_CHARS", 48000)
TITLE_TIMEOUT_SECONDS = envfloat("TITLE_TIMEOUT_SECONDS", 15.0)
STREAM_COALESCE_MS = envint("STREAM_COALESCE_MS", 40)
# The widest the window grows while the worker is short of CPU (conversations/replies/ticker.py).
STREAM_COALESCE_MAX_MS = envint("STREAM_COALESCE_MAX_MS", 160)
MAX_GENERATIONS_PER_USER = envint("MAX_GENERATIONS_PER_USER", 3)
MAX_GENERATIONS_PER_WORKER = envint("MAX_GENERATIONS_PER_WORKER", 200)
REPLY_SAVE_RETRY_SECONDS = envfloat("REPLY_SAVE_RETRY_SECONDS", 60.0)
MESSAGES_PER_MINUTE = envint("MESSAGES_PER_MINUTE", 20)
GENERATION_DRAIN_SECONDS = envfloat("GENERATION_DRAIN_SECONDS", 20.0)
# After the drain, the process ends within this many seconds whatever its sockets do (a
# client that never reads would otherwise hold the server's shutdown open).
SHUTDOWN_HARD_SECONDS = envfloat("SHUTDOWN_HARD_SECONDS", 5.0)
# A socket's outbound buffer (outbox.py): a client further behind than either bound is
# dropped (close code 4008) and resumes from after_seq when it reconnects.
SOCKET_BUFFER_BYTES = envint("SOCKET_BUFFER_BYTES", 1024 * 1024)
SOCKET_MAX_LAG_SECONDS = envfloat("SOCKET_MAX_LAG_SECONDS", 10.0)
# Frames a socket may send per second on average (three seconds' worth at once); a client
# past it is closed with 4029. People send a frame when they act; Daphne queues every frame.
SOCKET_FRAMES_PER_SECOND = envfloat("SOCKET_FRAMES_PER_SECOND", 20.0)
# The kernel's send buffer per socket (0: the kernel's own, which grows to 4 MiB for a client
# that never reads). Chat frames are small; 128 KiB is ample for a phone on a slow network.
SOCKET_SEND_BUFFER_BYTES = envint("SOCKET_SEND_BUFFER_BYTES", 128 * 1024)
# The reply log in Redis (cross-worker resume, stop, recovery after a worker dies).
# Generous: a busy event loop makes a prompt answer look late, and a false outage pauses
# the cross-worker features for REDIS_RETRY_SECONDS.
REDIS_TIMEOUT_SECONDS = envfloat("REDIS_TIMEOUT_SECONDS", 5.0)
REDIS_RETRY_SECONDS = envfloat("REDIS_RETRY_SECONDS", 5.0)
# Connections a worker may open to Redis for the reply log and the limits (the channel layer
# has its own). A call waits up to REDIS_TIMEOUT_SECONDS for one. A socket following a reply
# that runs on another worker holds one while it waits for the next entries.
REDIS_MAX_CONNECTIONS = envint("REDIS_MAX_CONNECTIONS", 200)
GRACEFUL_SHUTDOWN = envbool("GRACEFUL_SHUTDOWN", True)
HEARTBEAT_SECONDS = envfloat("HEARTBEAT_SECONDS", 1.0)
HEARTBEAT_TTL = envint("HEARTBEAT_TTL", 5)
GENERATION_TTL = envint("GENERATION_TTL", 3600)
REPLY_LOG_TTL = envint("REPLY_LOG_TTL", 3600)
REPLY_LOG_KEEP_SECONDS = envint("REPLY_LOG_KEEP_SECONDS", 7 * 24 * 3600)
RECOVERY_INTERVAL_SECONDS = envfloat("RECOVERY_INTERVAL_SECONDS", 3.0)
FOLLOW_GIVE_UP_SECONDS = envfloat("FOLLOW_GIVE_UP_SECONDS", 120.0)
# How often a worker checks that its sockets' sessions still sign their users in: a session
# deleted with no logout (an operator's "sign out everywhere", `clearsessions`), past its
# expiry, or whose user another process changed where no Redis carries the signal, ends its
# sockets (4401) within this. Two queries a round for up to a thousand sockets. 0: off.
SOCKET_SESSION_CHECK_SECONDS = envfloat("SOCKET_SESSION_CHECK_SECONDS", 30.0)
METRICS_TOKEN = envstr("METRICS_TOKEN")
# Tokens per user per period (input + output of saved replies); unset: no limit, unless an
# override in admin (per group, per user) sets one.
TOKEN_BUDGET: int | None = envint("TOKEN_BUDGET", 0) if envstr("TOKEN_BUDGET").strip() else None
if TOKEN_BUDGET is not None and TOKEN_BUDGET < 0:
    raise ImproperlyConfigured("TOKEN_BUDGET must be a number of tokens, 0 or more.")
# Token usage is counted per calendar period starting 00:00 UTC (weeks on Monday). A typo
# must stop the server, not silently count per day while the operator believes "per month".
TOKEN_BUDGET_PERIOD = envstr("TOKEN_BUDGET_PERIOD", "day").strip().lower() or "day"
if TOKEN_BUDGET_PERIOD not in ("day", "week", "month"):
    raise ImproperlyConfigured(
        f"TOKEN_BUDGET_PERIOD={os.environ['TOKEN_BUDGET_PERIOD']!r} is not one of day, week, month."
    )

# JSON lines in production, readable text in development; both carry turn_id and
# conversation_id. LOG_LEVEL=DEBUG shows when each turn's database work begins and ends.
from chatproject.ops.logging import logging_config  # noqa: E402

LOG_FORMAT = envstr("LOG_FORMAT", "text" if DEBUG else "json")
LOGGING: dict[str, Any] = logging_config(log_format=LOG_FORMAT, level=envstr("LOG_LEVEL", "INFO"))

# --- Sharing and attachments (issue 15) ------------------------------------------------
# Share links open to signed-in users of this site only, unless this says anyone with it.
SHARE_PUBLIC = envbool("SHARE_PUBLIC", False)
# Copies of shared conversations ("Continue this chat") a user may make per minute.
SHARE_FORKS_PER_MINUTE = envint("SHARE_FORKS_PER_MINUTE", 20)
# The largest file accepted, counted while the body streams in (attachments/limits.py).
MAX_UPLOAD_BYTES = envint("MAX_UPLOAD_BYTES", 10 * 1024 * 1024)
MAX_ATTACHMENTS_PER_MESSAGE = 4
# Where uploads live with the default (file system) storage; never served by the web server
# itself: files go out only through the authenticated views in attachments/views.py.
MEDIA_ROOT = Path(envstr("MEDIA_ROOT") or BASE_DIR / "media")
MEDIA_URL = "/media-not-served/"

# --- Upload storage and limits (issue 15; docs/attachments.md) ---------------------------
# Through Django's storage API: the file system under MEDIA_ROOT, or S3-compatible object
# storage (AWS, MinIO, Ceph, ...) through django-storages. Fails closed: an unknown backend,
# or s3 without a bucket, stops the server rather than writing files somewhere unexpected.
STORAGE_BACKEND = envstr("STORAGE_BACKEND", "filesystem").strip().lower() or "filesystem"
_upload_storage: dict[str, Any]
if STORAGE_BACKEND == "filesystem":
    _upload_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {
            "location": MEDIA_ROOT,
            "base_url": MEDIA_URL,
            "file_permissions_mode": 0o640,
            "directory_permissions_mode": 0o750,
        },
    }
elif STORAGE_BACKEND == "s3":
    if not envstr("AWS_STORAGE_BUCKET_NAME").strip():
        raise ImproperlyConfigured("STORAGE_BACKEND=s3 needs AWS_STORAGE_BUCKET_NAME.")
    _upload_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": envstr("AWS_STORAGE_BUCKET_NAME").strip(),
            # Unset: AWS itself; set: any S3-compatible server.
            "endpoint_url": envstr("AWS_S3_ENDPOINT_URL").strip() or None,
            "region_name": envstr("AWS_S3_REGION_NAME").strip() or None,
            # Unset: boto3 finds credentials itself (instance role, ~/.aws, ...).
            "access_key": envstr("AWS_ACCESS_KEY_ID") or None,
            "secret_key": envstr("AWS_SECRET_ACCESS_KEY") or None,
            "location": envstr("AWS_LOCATION").strip().strip("/"),
            # Private objects: files leave only through the views, never by a bucket URL.
            "default_acl": None,
            "querystring_auth": True,
            # Names are generated UUIDs: no need to ask the bucket whether one is taken.
            "file_overwrite": True,
        },
    }
else:
    raise ImproperlyConfigured(f"STORAGE_BACKEND={STORAGE_BACKEND!r} is not one of filesystem, s3.")
STORAGES = {
    "default": _upload_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Uploads per user per minute (every attempt counts), and the bytes a user may keep (0: no
# cap). 500 MiB is fifty files at the largest size.
UPLOADS_PER_MINUTE = envint("UPLOADS_PER_MINUTE", 30)
UPLOAD_QUOTA_BYTES = envint("UPLOAD_QUOTA_BYTES", 500 * 1024 * 1024)
# Images: refused beyond this many pixels before anything is decoded, kept at most this
# long on their longest side; an animation larger than the budget keeps its first frame.
UPLOAD_MAX_IMAGE_PIXELS = 40_000_000
UPLOAD_MAX_IMAGE_SIDE = 2048
UPLOAD_MAX_ANIMATION_PIXELS = 60_000_000
# Text files are refused beyond this many characters; a PDF's text is cut there.
UPLOAD_MAX_TEXT_CHARS = 200_000
# A PDF's text is read from its first pages only; no stream may decompress beyond this.
UPLOAD_MAX_PDF_PAGES = 100
UPLOAD_PDF_MAX_STREAM_BYTES = 20 * 1024 * 1024
# Each image or PDF is decoded in a child process with these limits, at most this many at
# once per server process (attachments/decode.py).
UPLOAD_DECODE_SECONDS = envfloat("UPLOAD_DECODE_SECONDS", 15.0)
UPLOAD_DECODE_MEMORY_BYTES = envint("UPLOAD_DECODE_MEMORY_BYTES", 1024 * 1024 * 1024)
UPLOAD_DECODERS = envint("UPLOAD_DECODERS", 2)

# Daphne serves /static/ itself unless a reverse proxy does (SERVE_STATIC=false).
SERVE_STATIC = envbool("SERVE_STATIC", True)
