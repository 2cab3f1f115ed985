"""The deployment in deploy/, for real: Debian's nginx with deploy/nginx.conf and its proxy
snippet, in front of two Uvicorn workers run as deploy/uvicorn@.service runs them, with Redis and
PostgreSQL. Everything listens on 127.0.0.1 and stops at the end.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect
from websockets.typing import Origin

from conversations.models import Message
from tests.conftest import PASSWORD, subprocess_database_url
from tests.ops.conftest import (
    OUTPUT,
    ROOT,
    Daphne,
    Response,
    UnitWorker,
    daphne_env,
    free_port,
    needs_postgresql,
    port_open,
    wait_for,
)
from tests.ops.conftest import fetch as plain_fetch

DEPLOY = ROOT / "deploy"
METRICS_TOKEN = "deploy-test-metrics-token"


def _sub(pattern: str, replacement: str, text: str) -> str:
    """re.sub that insists on a match: if deploy/nginx.conf changes shape, this test says so."""
    new, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert count, f"deploy/nginx.conf no longer has {pattern!r}"
    return new


def render_site(
    *, http_port: int, https_port: int, workers: list[int], static_root: Path, cert: Path, key: Path
) -> str:
    """deploy/nginx.conf with this machine's ports and paths, everything else untouched."""
    site = (DEPLOY / "nginx.conf").read_text()
    site = _sub(r"^\s*listen \[::\]:\d+.*\n", "", site)
    site = _sub(r"listen 80;", f"listen 127.0.0.1:{http_port};", site)
    site = _sub(r"listen 443 ssl", f"listen 127.0.0.1:{https_port} ssl", site)
    site = _sub(r"^\s*server 127\.0\.0\.1:\d+ .*\n", "", site)
    servers = "".join(f"    server 127.0.0.1:{port};\n" for port in workers)
    site = _sub(r"(upstream personachat \{\n)", rf"\g<1>{servers}", site)
    site = _sub(r"ssl_certificate /\S+;", f"ssl_certificate {cert};", site)
    site = _sub(r"ssl_certificate_key /\S+;", f"ssl_certificate_key {key};", site)
    site = _sub(r"alias /\S+/;", f"alias {static_root}/;", site)
    return _sub(
        r"include /etc/nginx/snippets/personachat-proxy.conf;",
        f"include {DEPLOY / 'nginx-proxy.conf'};",
        site,
    )


def render_main(tmp: Path, site: Path) -> str:
    # As root, nginx's workers would run as `nobody`, who cannot read pytest's private tmp.
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
{user}
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {site};
}}
"""


def self_signed_certificate(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


def collect_static(tmp: Path) -> Path:
    """`manage.py collectstatic` into a directory of the test's own, as a deploy would."""
    static_root = tmp / "staticfiles"
    (tmp / "ops_static_settings.py").write_text(
        f"from chatproject.settings import *  # noqa: F403\nSTATIC_ROOT = {str(static_root)!r}\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp}{os.pathsep}{ROOT}",
        "DJANGO_SETTINGS_MODULE": "ops_static_settings",
    }
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
    )
    return static_root


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        pytest.skip("nginx is missing (apt-get install nginx)")
    return found


def nginx_check(nginx: str, main: Path, tmp: Path) -> None:
    checked = subprocess.run(
        [nginx, "-t", "-c", str(main), "-p", str(tmp), "-e", str(tmp / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr


@dataclass
class Deployment:
    https: str
    http: str
    workers: Sequence[Daphne]
    context: ssl.SSLContext

    def fetch(self, method: str, path: str, **kwargs: Any) -> Response:
        return https_fetch(self.context, method, f"{self.https}{path}", **kwargs)


def https_fetch(
    context: ssl.SSLContext,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Response:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(
        parts.hostname or "127.0.0.1", parts.port, context=context, timeout=15
    )
    try:
        conn.request(method, parts.path or "/", body=body, headers=headers or {})
        raw = conn.getresponse()
        return Response(raw.status, raw.headers, raw.read())
    finally:
        conn.close()


@pytest.fixture
def deployment(tmp_path: Path, throwaway_redis: Any) -> Iterator[Deployment]:
    needs_postgresql()
    nginx = nginx_binary()
    http_port, https_port = free_port(), free_port()
    origin = f"https://127.0.0.1:{https_port}"
    env = daphne_env(
        DATABASE_URL=subprocess_database_url(),
        REDIS_URL=throwaway_redis.url,
        SERVE_STATIC="false",
        METRICS_TOKEN=METRICS_TOKEN,
        LOG_LEVEL="DEBUG",
        CSRF_TRUSTED_ORIGINS=origin,
        MEDIA_ROOT=str(tmp_path / "media"),
    )
    workers = [UnitWorker(env, name=f"deploy-worker-{n}") for n in (1, 2)]
    for worker in workers:
        worker.start()  # both boot while static files are collected
    process = None
    try:
        static_root = collect_static(tmp_path)
        cert, key = self_signed_certificate(tmp_path)
        for worker in workers:
            worker.wait_ready()
        site = tmp_path / "site.conf"
        site.write_text(
            render_site(
                http_port=http_port,
                https_port=https_port,
                workers=[w.port for w in workers],
                static_root=static_root,
                cert=cert,
                key=key,
            )
        )
        main = tmp_path / "nginx.conf"
        main.write_text(render_main(tmp_path, site))
        nginx_check(nginx, main, tmp_path)
        process = subprocess.Popen(
            [nginx, "-c", str(main), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: port_open(https_port) and port_open(http_port), 15, "nginx listening")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        yield Deployment(
            https=origin, http=f"http://127.0.0.1:{http_port}", workers=workers, context=context
        )
    finally:
        if process is not None:
            process.terminate()
            process.wait(15)
            OUTPUT.mkdir(parents=True, exist_ok=True)
            for name in ("error.log", "access.log"):
                if (tmp_path / name).exists():
                    shutil.copy(tmp_path / name, OUTPUT / f"nginx-{name}")
        # Before the test database is flushed: the workers' pools hold connections to it.
        for worker in workers:
            worker.stop()


def post_login(
    deploy: Deployment, username: str, password: str, headers: dict[str, str] | None = None
) -> Response:
    """The login form, filled in and sent as a browser would."""
    page = deploy.fetch("GET", "/accounts/login/")
    assert page.status == 200
    csrf_cookie = page.cookies()[settings.CSRF_COOKIE_NAME]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token is not None
    body = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": token[1]}
    ).encode()
    return deploy.fetch(
        "POST",
        "/accounts/login/",
        body=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"{settings.CSRF_COOKIE_NAME}={csrf_cookie}",
            "Origin": deploy.https,
            "Referer": f"{deploy.https}/accounts/login/",
            **(headers or {}),
        },
    )


def login(deploy: Deployment) -> str:
    """Sign in through the login form, as a browser would; returns the session cookie."""
    answer = post_login(deploy, "alice", PASSWORD)
    assert answer.status == 302, answer.text[:500]
    assert answer.headers["Location"] == "/"
    # Behind TLS the session cookie is Secure and HttpOnly.
    cookie_line = next(
        line
        for line in answer.headers.get_all("Set-Cookie") or []
        if line.startswith(settings.SESSION_COOKIE_NAME)
    )
    assert "Secure" in cookie_line and "HttpOnly" in cookie_line
    return answer.cookies()[settings.SESSION_COOKIE_NAME]


def noise_png() -> bytes:
    """A 1000 by 1000 photo-like PNG of about 3 MiB: noise does not compress."""
    out = io.BytesIO()
    Image.frombytes("RGB", (1000, 1000), os.urandom(3_000_000)).save(out, "PNG")
    return out.getvalue()


def upload(deploy: Deployment, cookies: str, csrf: str, data: bytes) -> Response:
    """POST /api/uploads/ as the page's FormData sends it."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="photo.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return deploy.fetch(
        "POST",
        "/api/uploads/",
        body=body,
        headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Cookie": cookies,
            "X-CSRFToken": csrf,
            "Origin": deploy.https,
            "Referer": f"{deploy.https}/",
        },
    )


def worker_samples(worker: Daphne) -> dict[tuple[str, str], float]:
    text = plain_fetch(
        "GET", f"{worker.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    ).text
    return {
        (sample.name, json.dumps(sample.labels, sort_keys=True)): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_nginx_and_two_workers_serve_pages_static_files_uploads_and_a_streamed_chat(
    alice: Any, persona: Any, deployment: Deployment
) -> None:
    deploy = deployment

    # Plain HTTP goes to HTTPS, except the probes.
    redirect = plain_fetch("GET", f"{deploy.http}/accounts/login/")
    assert redirect.status == 301
    assert redirect.headers["Location"].startswith("https://")
    assert plain_fetch("GET", f"{deploy.http}/readyz").status == 200

    # The page, through nginx, over TLS.
    session = login(deploy)
    cookie = f"{settings.SESSION_COOKIE_NAME}={session}"
    page = deploy.fetch("GET", "/", headers={"Cookie": cookie})
    assert page.status == 200
    assert page.headers["Server"].startswith("nginx")
    assert "/static/chat/main.js" in page.text

    # A photo of a few MiB goes through nginx's own body limit to the worker and is stored;
    # past the worker's limit the answer is 413.
    csrf = page.cookies()[settings.CSRF_COOKIE_NAME]
    uploaded = upload(deploy, f"{cookie}; {settings.CSRF_COOKIE_NAME}={csrf}", csrf, noise_png())
    assert uploaded.status == 201, uploaded.text[:300]
    assert json.loads(uploaded.body)["content_type"] == "image/png"
    too_large = upload(
        deploy, f"{cookie}; {settings.CSRF_COOKIE_NAME}={csrf}", csrf, bytes(12 << 20)
    )
    assert too_large.status == 413

    # Static files come from nginx: the workers run with SERVE_STATIC=false and have none.
    static = deploy.fetch("GET", "/static/chat/main.js")
    assert static.status == 200
    assert static.body == (ROOT / "static" / "chat" / "main.js").read_bytes()
    assert "public" in static.headers["Cache-Control"]
    as_if_proxied = {"X-Forwarded-Proto": "https", "Host": "127.0.0.1"}
    worker_static = f"{deploy.workers[0].url}/static/chat/main.js"
    assert plain_fetch("GET", worker_static, headers=as_if_proxied).status == 404
    admin_css = deploy.fetch("GET", "/static/admin/css/base.css")
    assert admin_css.status == 200

    # A full streamed chat through /ws/chat/.
    ws_url = deploy.https.replace("https://", "wss://") + "/ws/chat/"
    client_id = str(uuid.uuid4())
    with connect(
        ws_url,
        ssl=deploy.context,
        origin=Origin(deploy.https),
        additional_headers={"Cookie": cookie},
        proxy=None,
        open_timeout=10,
    ) as socket:
        socket.send(
            json.dumps(
                {
                    "type": "chat.send",
                    "conversation_id": None,
                    "persona": None,
                    "content": "Hello through nginx",
                    "client_id": client_id,
                }
            )
        )
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["type"] != "chat.done":
            frames.append(json.loads(socket.recv(timeout=20)))

    accepted = frames[0]
    assert accepted["type"] == "chat.accepted"
    assert accepted["client_id"] == client_id
    deltas = [f for f in frames if f["type"] == "chat.delta"]
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert len(deltas) > 1, "the reply must arrive streamed, not in one piece"
    done = frames[-1]
    text = "".join(d["text"] for d in deltas)
    assert done["status"] == "complete"
    assert done["content"] == text
    assert len(text.split()) == 40
    saved = Message.objects.get(id=accepted["message_id"])
    assert (saved.status, saved.content) == ("complete", text)

    # Each worker is scraped on its own, with the token; nginx keeps /metrics private.
    assert deploy.fetch("GET", "/metrics").status == 404
    assert plain_fetch("GET", f"{deploy.workers[0].url}/metrics").status == 401
    samples = [worker_samples(worker) for worker in deploy.workers]
    complete = json.dumps({"status": "complete"})
    assert sum(s.get(("chat_turns_total", complete), 0) for s in samples) == 1
    assert all(("chat_db_pool_size", "{}") in s for s in samples)

    # The worker that ran the turn logged its database work as JSON lines with the turn's ids.
    logged = [
        json.loads(line)
        for worker in deploy.workers
        for line in worker.logs().splitlines()
        if line.startswith("{")
    ]
    turn_lines = [e for e in logged if e["turn_id"] == accepted["message_id"]]
    assert {e["conversation_id"] for e in turn_lines} == {accepted["conversation_id"]}
    assert any(e["message"].startswith("turn save: database work ends") for e in turn_lines)

    # db_report reads both workers' pools and finds nothing wrong.
    report = subprocess.run(
        [
            sys.executable, "manage.py", "db_report", "--max-connections-ratio", "0.99",
            "--worker", f"{deploy.workers[0].url}/metrics",
            "--worker", f"{deploy.workers[1].url}/metrics",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": subprocess_database_url(),
            "METRICS_TOKEN": METRICS_TOKEN,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    (OUTPUT / "db_report.txt").write_text(report.stdout + report.stderr)
    assert report.returncode == 0, report.stdout + report.stderr
    for worker in deploy.workers:
        assert f"pool {worker.url}/metrics: size " in report.stdout
    assert report.stdout.strip().splitlines()[-1].startswith("db_report: OK")

    # Last, since they lock this client out. A forged X-Forwarded-For does not give a guesser
    # a new address: nginx passes on the peer it saw, so five failures lock 127.0.0.1.
    for n, name in enumerate(("carol", "dave", "erin", "frank", "grace")):
        post_login(deploy, name, "guess", headers={"X-Forwarded-For": f"192.0.2.{n}"})
    locked = post_login(deploy, "alice", PASSWORD, headers={"X-Forwarded-For": "192.0.2.99"})
    assert locked.status == 429
    assert "Too many attempts. Try again in 15 minutes." in locked.text

    # And nginx itself turns a flood of the account pages away before it reaches a worker.
    statuses = []
    for _ in range(60):
        statuses.append(deploy.fetch("GET", "/accounts/login/").status)
        if statuses[-1] == 429:
            break
    assert statuses[-1] == 429, statuses
    assert set(statuses) == {200, 429}


def test_the_compose_nginx_config_is_valid(tmp_path: Path) -> None:
    """deploy/nginx-compose.conf with the proxy snippet, as the nginx container loads them."""
    nginx = nginx_binary()
    site = (DEPLOY / "nginx-compose.conf").read_text()
    # Compose's service names do not resolve here; loopback stands in for them.
    site = _sub(r"server worker\d+:8000", "server 127.0.0.1:8000", site)
    site = _sub(r"listen 80 ", f"listen 127.0.0.1:{free_port()} ", site)
    site = _sub(
        r"include /etc/nginx/snippets/personachat-proxy.conf;",
        f"include {DEPLOY / 'nginx-proxy.conf'};",
        site,
    )
    (tmp_path / "site.conf").write_text(site)
    main = tmp_path / "nginx.conf"
    main.write_text(render_main(tmp_path, tmp_path / "site.conf"))
    nginx_check(nginx, main, tmp_path)
