"""A 3-node RabbitMQ cluster on this machine, beside the shared broker and never touching it.

Nodes cv1..cv3@localhost, AMQP on 5681-5683, distribution on 25681-25683, each with its own
data, log and config files under one directory, an enabled-plugins file of their own and an
Erlang cookie of their own (the shared node's cookie and files are left alone). The nodes run
as root from RabbitMQ's own scripts in /usr/lib/rabbitmq/bin, so HOME (the cookie) is ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

NODES = ("cv1", "cv2", "cv3")
AMQP_PORTS = {node: 5681 + index for index, node in enumerate(NODES)}
DIST_PORTS = {node: 25681 + index for index, node in enumerate(NODES)}
SCRIPTS = Path("/usr/lib/rabbitmq/bin")
BASE = Path(tempfile.gettempdir()) / "conveyor-cluster-test"
START_TIMEOUT = 180.0  # three nodes booting at once on two cores took about 30 s here
# The consistent-hash exchange: ordered subscriptions declare one.
PLUGINS = "[rabbitmq_consistent_hash_exchange].\n"


def full_name(node: str) -> str:
    return f"{node}@localhost"


@dataclass
class RabbitCluster:
    base: Path = BASE
    started_in: float = 0.0  # seconds from the first start to three nodes clustered
    timings: dict[str, float] = field(default_factory=dict)

    # -- addresses ---------------------------------------------------------------------------

    def url(self, node: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{AMQP_PORTS[node]}/"

    @property
    def addresses(self) -> str:
        """All three nodes, as CONVEYOR_AMQP_URL takes them."""
        return ",".join(self.url(node) for node in NODES)

    def node_of_port(self, port: int) -> str:
        return next(node for node, amqp in AMQP_PORTS.items() if amqp == port)

    # -- running RabbitMQ's tools -------------------------------------------------------------

    def _environment(self, node: str | None = None) -> dict[str, str]:
        environment = {
            **os.environ,
            "HOME": str(self.base / "home"),  # the cookie of this cluster
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            # The Erlang VM of a failing CLI call writes a crash dump: not into the repository.
            "ERL_CRASH_DUMP": str(self.base / "erl_crash.dump"),
        }
        if node is not None:
            directory = self.base / node
            environment |= {
                "RABBITMQ_NODENAME": full_name(node),
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(AMQP_PORTS[node]),
                "RABBITMQ_DIST_PORT": str(DIST_PORTS[node]),
                "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
                "RABBITMQ_LOG_BASE": str(directory / "log"),
                "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
                "RABBITMQ_PID_FILE": str(directory / "pid"),
            }
        return environment

    def ctl(self, node: str, *arguments: str, timeout: float = 90.0, check: bool = True) -> str:
        """rabbitmqctl against one of our nodes; its output."""
        result = subprocess.run(  # noqa: S603 - RabbitMQ's own tool, our arguments
            [str(SCRIPTS / "rabbitmqctl"), "-n", full_name(node), *arguments],
            env=self._environment(),
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"rabbitmqctl -n {full_name(node)} {' '.join(arguments)} exited "
                f"{result.returncode}: {result.stderr.strip() or result.stdout.strip()}"
            )
        return result.stdout

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Three nodes booted and clustered, or pytest.fail saying what did not come up."""
        if not (SCRIPTS / "rabbitmq-server").exists():
            pytest.fail(f"the cluster test needs RabbitMQ's scripts in {SCRIPTS}", pytrace=False)
        self.destroy()  # what a crashed earlier run left behind
        busy = [p for p in (*AMQP_PORTS.values(), *DIST_PORTS.values()) if _listening(p)]
        if busy:
            pytest.fail(f"ports the cluster test needs are taken: {busy}", pytrace=False)
        self._write_files()
        began = time.monotonic()
        for node in NODES:
            subprocess.run(  # noqa: S603 - RabbitMQ's own script, our arguments
                [str(SCRIPTS / "rabbitmq-server"), "-detached"],
                env=self._environment(node),
                cwd=self.base,
                check=True,
                capture_output=True,
                timeout=60,
            )
        for node in NODES:
            self._await_boot(node, deadline=began + START_TIMEOUT)
        self.timings["boot"] = time.monotonic() - began
        for node in NODES[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", full_name(NODES[0]))
            self.ctl(node, "start_app")
        running = self.running_nodes()
        if sorted(running) != [full_name(node) for node in NODES]:
            pytest.fail(f"the cluster formed with {running} only", pytrace=False)
        self.started_in = time.monotonic() - began

    def _write_files(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
        home = self.base / "home"
        home.mkdir(parents=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o400)
        # Our own env file: the system one names the shared node (NODENAME=rabbit@localhost).
        (self.base / "rabbitmq-env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
        (self.base / "enabled_plugins").write_text(PLUGINS)
        for node in NODES:
            directory = self.base / node
            directory.mkdir()
            (directory / "rabbitmq.conf").write_text(
                f"listeners.tcp.default = 127.0.0.1:{AMQP_PORTS[node]}\n"
            )

    def _await_boot(self, node: str, *, deadline: float) -> None:
        # await_startup fails at once while the node has not registered with epmd yet.
        while True:
            answer = subprocess.run(  # noqa: S603 - RabbitMQ's own tool
                [str(SCRIPTS / "rabbitmqctl"), "-n", full_name(node), "await_startup", "-t", "10"],
                env=self._environment(),
                cwd=self.base,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if answer.returncode == 0:
                return
            if time.monotonic() > deadline:
                log = self.log_tail(node)
                pytest.fail(
                    f"{full_name(node)} did not boot within {START_TIMEOUT:g} s: "
                    f"{answer.stderr.strip()[:300]}\n{log}",
                    pytrace=False,
                )
            time.sleep(1.0)

    def log_tail(self, node: str, lines: int = 20) -> str:
        logs = sorted((self.base / node / "log").glob("*.log"))
        if not logs:
            return "(no log)"
        return "\n".join(logs[0].read_text(errors="replace").splitlines()[-lines:])

    def stop_app(self, node: str) -> None:
        """The node stays up but RabbitMQ on it stops: connections closed, port shut."""
        self.ctl(node, "stop_app")

    def start_app(self, node: str) -> None:
        self.ctl(node, "start_app")
        self.ctl(node, "await_startup", "-t", "120", timeout=150)

    def running_nodes(self, via: str = NODES[0]) -> list[str]:
        status = json.loads(self.ctl(via, "cluster_status", "--formatter", "json"))
        return list(status["running_nodes"])

    def queues(self, namespace: str, via: str = NODES[0]) -> list[dict[str, Any]]:
        """Every queue of `namespace`: name, type, members, online members, consumers."""
        listed = json.loads(
            self.ctl(
                via,
                "list_queues",
                "name",
                "type",
                "members",
                "online",
                "consumers",
                "--formatter",
                "json",
            )
        )
        return [queue for queue in listed if str(queue["name"]).startswith(namespace + ".")]

    def destroy(self) -> None:
        """Stop every node of ours, kill what does not stop, remove the files. Never fails."""
        for node in NODES if (self.base / "home" / ".erlang.cookie").exists() else ():
            with contextlib.suppress(subprocess.SubprocessError, AssertionError, OSError):
                self.ctl(node, "stop", timeout=30, check=False)
        for pid in _our_processes(self.base):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _our_processes(base: Path) -> list[int]:
    """Processes started for this cluster: their command line names our directory (the data
    directories are passed to the Erlang VM), so the shared node is never among them."""
    marker = str(base).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found
