"""Throw-away servers on 127.0.0.1 for tests and benchmarks: a PostgreSQL cluster and a one-node Ray head.

Each is a context manager that starts the server from the binaries on this machine, yields its URL, and
stops it (and everything it started) on exit; `Unavailable` says which binaries are missing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

POSTGRES_BIN = Path(os.environ.get("WORKBENCH_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))


class Unavailable(RuntimeError):
    """The server cannot be started here; the message says what to install."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its binaries as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server; yields its base URL (no database name). fsync is off: the data is thrown away."""
    missing = [name for name in ("initdb", "pg_ctl") if not (POSTGRES_BIN / name).is_file()]
    if missing:
        raise Unavailable(f"PostgreSQL needs the server binaries in {POSTGRES_BIN} (missing: {', '.join(missing)}); "
                          "install them with `apt-get install -y postgresql` or set WORKBENCH_POSTGRES_BIN")
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="workbench-pg-"))
    if os.geteuid() == 0:
        os.chown(root, pwd.getpwnam("postgres").pw_uid, -1)
    data, log, port = root / "data", root / "server.log", free_port()
    pg_ctl = str(POSTGRES_BIN / "pg_ctl")
    try:
        subprocess.run(_as_postgres_user([str(POSTGRES_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U",
                                          "postgres", "--no-sync", "-E", "UTF8"]), check=True, capture_output=True)
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        started = subprocess.run(_as_postgres_user([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w",
                                                    "start"]), capture_output=True, text=True)
        if started.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr or started.stdout}")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def new_postgres_database(server_url: str) -> str:
    """Create an empty database on a server from `postgres_server`; returns its URL."""
    import psycopg

    name = f"wb_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url.replace("postgresql+psycopg", "postgresql") + "/postgres",
                         autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{server_url}/{name}"


@contextlib.contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[str]:
    """A one-node Ray cluster (no GPU); yields its dashboard URL.

    Started with `ray start --head --block` in its own process group and a private temp folder, and stopped
    through that process (SIGTERM stops the head's processes), then anything left of its group or naming its
    temp folder is killed, so Ray clusters of other programs on this machine are left alone.
    """
    ray = Path(sys.executable).with_name("ray")
    if not ray.is_file():
        raise Unavailable(f"Ray needs the `ray` command beside {sys.executable} (pip install 'ray[default]')")
    temp = Path(tempfile.mkdtemp(prefix="wbray-"))
    dashboard_port = free_port()
    with (temp / "head.log").open("w") as log:
        head = subprocess.Popen(
            [str(ray), "start", "--head", "--block", "--port", str(free_port()), "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(dashboard_port), "--num-cpus", str(num_cpus), "--num-gpus", "0",
             "--disable-usage-stats", "--include-dashboard", "true", "--temp-dir", str(temp)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        )
        address = f"http://127.0.0.1:{dashboard_port}"
        try:
            _wait_for_job_server(address, head, temp / "head.log")
            yield address
        finally:
            head.send_signal(signal.SIGTERM)
            try:
                head.wait(30)
            except subprocess.TimeoutExpired:
                head.kill()
                head.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
            _kill_leftovers(temp)
    shutil.rmtree(temp, ignore_errors=True)


def _wait_for_job_server(address: str, head: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"the Ray head exited with code {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the Ray head's job server at {address} did not answer within {timeout:.0f} s")


def _kill_leftovers(temp: Path) -> None:
    """Ray processes of this head that left its process group (they name its temp folder on their command line)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(temp) in command:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
