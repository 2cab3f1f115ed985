"""What stands around the server in the scale-out variants: nginx in front of several workers,
PgBouncer between them and PostgreSQL, Redis's own process, and older trees of the code.

Each is started per run in a temporary folder on its own ports (`BENCH_PORTS`), as the
deployment in deploy/ runs it, and stopped with the run. Their CPU counts as server side.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bench.common import children, wait_port


def _binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )


def _owned_tempdir(prefix: str) -> tuple[Path, list[str]]:
    """A folder the daemon may write to, and its `-u user` when we are root (nginx and
    PgBouncer drop root; PgBouncer refuses to keep it)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    tmp.chmod(0o755)
    if os.geteuid() != 0:
        return tmp, []
    owner = pwd.getpwnam("postgres")
    os.chown(tmp, owner.pw_uid, owner.pw_gid)
    return tmp, ["-u", "postgres"]


@dataclass
class Daemon:
    """One started helper: its process, its folder, the pids whose CPU counts."""

    name: str
    process: subprocess.Popen[bytes]
    tmp: Path
    port: int

    def pids(self) -> list[int]:
        return [self.process.pid, *children(self.process.pid)]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def nginx_available() -> bool:
    return _binary("nginx") is not None


def start_nginx(src: Path, port: int, workers: list[int], core_prefix: list[str]) -> Daemon:
    """nginx on `port` in front of `workers`, with deploy/nginx-proxy.conf's locations and
    deploy/nginx.conf's upstream (least_conn, keepalive); plain HTTP (TLS is not measured)."""
    binary = _binary("nginx")
    assert binary is not None
    tmp = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    servers = "".join(
        f"        server 127.0.0.1:{p} max_fails=3 fail_timeout=10s;\n" for p in workers
    )
    user = "user root;" if os.geteuid() == 0 else ""
    (tmp / "nginx.conf").write_text(
        f"""
daemon off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
{user}
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map $http_upgrade $personachat_connection_upgrade {{
        default upgrade;
        ""      "";
    }}
    map $scheme $personachat_proto {{
        default $scheme;
    }}
    limit_req_zone $binary_remote_addr zone=personachat_accounts:10m rate=30r/m;
    upstream personachat {{
        least_conn;
{servers}        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /static/ {{ return 404; }}
        include {src / "deploy" / "nginx-proxy.conf"};
    }}
}}
"""
    )
    argv = [binary, "-c", str(tmp / "nginx.conf"), "-p", str(tmp), "-e", str(tmp / "error.log")]
    process = subprocess.Popen(
        [*core_prefix, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_port(port, timeout=15)
    return Daemon("nginx", process, tmp, port)


def pgbouncer_available() -> bool:
    return _binary("pgbouncer") is not None


def start_pgbouncer(database_url: str, port: int, pool_size: int) -> Daemon:
    """PgBouncer in transaction pooling mode on `port`, for the database of `database_url`:
    `pool_size` server connections, trust auth (the bench's PostgreSQL is trust on 127.0.0.1)."""
    binary = _binary("pgbouncer")
    assert binary is not None
    parts = urlsplit(database_url)
    dbname = parts.path.lstrip("/")
    tmp, user = _owned_tempdir("bench-pgbouncer-")
    (tmp / "users.txt").write_text(f'"{parts.username or "postgres"}" ""\n')
    (tmp / "pgbouncer.ini").write_text(
        f"""
[databases]
{dbname} = host={parts.hostname or "127.0.0.1"} port={parts.port or 5432} dbname={dbname}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {tmp}/users.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 2000
ignore_startup_parameters = extra_float_digits
logfile = {tmp}/pgbouncer.log
pidfile =
"""
    )
    process = subprocess.Popen(
        [binary, *user, str(tmp / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, timeout=15)
    return Daemon("pgbouncer", process, tmp, port)


def behind(database_url: str, port: int) -> str:
    """`database_url` with PgBouncer's port in place of PostgreSQL's."""
    parts = urlsplit(database_url)
    netloc = f"{parts.username or 'postgres'}@127.0.0.1:{port}"
    return parts._replace(netloc=netloc).geturl()


def redis_pid(url: str) -> int:
    """redis-server's pid (`INFO server` process_id), or 0 when Redis is elsewhere or away."""
    host = urlsplit(url).hostname or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost", "::1"):
        return 0
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            return int(client.info("server")["process_id"])
        finally:
            client.close()
    return 0


def flush_redis(url: str) -> None:
    """Empty the bench's Redis database, so a run does not inherit another's reply logs."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.flushdb()
    finally:
        client.close()


@dataclass
class Revision:
    """A tree of the code at an older commit, served beside the current one."""

    rev: str
    short: str
    subject: str
    path: Path
    _tmp: str = field(default="", repr=False)

    @property
    def label(self) -> str:
        return f"the code at {self.rev} ({self.short}: {self.subject})"

    def drop(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def checkout(repo: Path, rev: str) -> Revision:
    """`git archive <rev>` of the repository into a temporary folder (read-only git)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()

    short = git("rev-parse", "--short", f"{rev}^{{commit}}")
    subject = git("log", "-1", "--format=%s", short)[:80]
    tmp = tempfile.mkdtemp(prefix=f"bench-rev-{short}-")
    path = Path(tmp) / "src"
    path.mkdir()
    archive = subprocess.Popen(
        ["git", "archive", "--format=tar", short], cwd=repo, stdout=subprocess.PIPE
    )
    subprocess.run(["tar", "-x", "-C", str(path)], stdin=archive.stdout, check=True)
    assert archive.stdout is not None
    archive.stdout.close()
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {rev} failed")
    return Revision(rev, short, subject, path, tmp)
