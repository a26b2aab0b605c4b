"""Start a SuperLink and K SuperNodes on loopback, run the app, stop everything.

Everything here is process management; nothing imports ``flwr`` or JAX, so the
launcher runs from any interpreter whose ``bin`` directory holds the Flower
executables (``flower-superlink``, ``flower-supernode``, ``flwr``).

Every process is started in its own session (process group), so stopping a
SuperNode also stops the SuperExec and ClientApp processes it spawned. Every
wait has a deadline, and :class:`LocalFederation` stops every process it
started on exit, on an exception and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

#: Name of the SuperLink connection written to the temporary ``FLWR_HOME``.
CONNECTION_NAME = "clapjax-local"
#: The Flower App directory shipped with this package.
APP_DIR = Path(__file__).resolve().parent / "app"
#: Status file the ServerApp writes into the run directory when it ends.
STATUS_FILE = "deploy_status.json"
#: ANSI escape sequences (Flower colours its log levels even when not on a terminal).
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """``text`` without ANSI colour and cursor sequences."""
    return _ANSI.sub("", text)


class DeploymentError(RuntimeError):
    """A process of the deployment failed, timed out or could not start."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Blocks until ``host:port`` accepts TCP connections.

    Raises:
      DeploymentError: after ``timeout`` seconds, or as soon as ``alive()`` is False.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise DeploymentError(f"process serving {host}:{port} exited before it accepted connections")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise DeploymentError(f"{host}:{port} did not accept connections within {timeout:.0f} s")


def _proc_table() -> list[tuple[int, str, int, int]]:
    """``(pid, state, ppid, pgid)`` of every process (Linux ``/proc``; empty elsewhere)."""
    rows = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process exited while we looked
        rows.append((int(stat.parent.name), fields[0], int(fields[1]), int(fields[2])))
    return rows


def descendants(pid: int) -> list[int]:
    """Pids of all running descendants of ``pid`` (children that started their
    own session, like Flower's SuperExec, are not in its process group)."""
    children: dict[int, list[int]] = {}
    for p, state, ppid, _ in _proc_table():
        if state not in ("Z", "X"):
            children.setdefault(ppid, []).append(p)
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def live_group_members(pgid: int) -> list[int]:
    """Pids of running (non-zombie) processes in process group ``pgid`` (Linux ``/proc``;
    an empty list where ``/proc`` is unavailable)."""
    return [p for p, state, _, group in _proc_table() if group == pgid and state not in ("Z", "X")]


def flower_executable(name: str) -> str:
    """Path of a Flower console script, preferring this interpreter's ``bin``."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(
            f"{name!r} not found next to {sys.executable} or on PATH; install the extra: "
            f"python -m pip install -e '.[flower]'"
        )
    return found


def node_config_string(config: Mapping[str, object]) -> str:
    """``--node-config`` value: space-separated ``key=value``, strings quoted."""
    parts = []
    for key, value in config.items():
        if isinstance(value, str):
            parts.append(f'{key}="{value}"')
        elif isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def run_config_toml(config: Mapping[str, object]) -> str:
    """The run config as a TOML document (``flwr run --run-config <file>.toml``).

    A file avoids the quoting rules of the inline ``key=value`` form, which
    cannot carry strings holding both quote characters (e.g. JSON overrides).
    """
    lines = []
    for key, value in config.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            lines.append(f"{key} = {value!r}")
        elif isinstance(value, str):
            lines.append(f"{key} = {json.dumps(value)}")  # JSON escapes are valid TOML escapes
        else:
            raise TypeError(f"run config {key!r}: {type(value).__name__} is not a TOML scalar")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class ManagedProcess:
    """A child process in its own process group, with its log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the whole group, SIGKILL after ``grace`` seconds; then SIGKILL
        to any descendant that had left the group (its own session)."""
        family = descendants(self.popen.pid)
        try:
            self._stop_group(grace)
        finally:
            for pid in family:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def _stop_group(self, grace: float) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.popen.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; make sure no child of the group survives it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            return

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


@dataclasses.dataclass(frozen=True)
class RunResult:
    """Outcome of one ``flwr run``.

    Attributes:
      status: the ServerApp's status record (``deploy_status.json``).
      wall_time: seconds from ``flwr run`` to the end of the stream.
      output: the streamed log lines.
    """

    status: dict
    wall_time: float
    output: tuple[str, ...]


class LocalFederation:
    """A SuperLink and K SuperNodes on loopback, stopped on exit.

    Args:
      num_participants: K SuperNodes; SuperNode ``i`` gets node config
        ``partition-id=i num-partitions=K state-dir=<workdir>/participant_i``
        plus ``node_config[i]`` if given.
      workdir: directory for ``FLWR_HOME``, participant state and the XLA
        cache (a fresh temporary directory if None, removed on exit).
      log_dir: directory for the processes' logs (default ``<workdir>/logs``);
        kept on exit when given, so the logs can live in the run directory.
      node_config: extra per-node config entries (e.g. ``features-dir``).
      env: extra environment for every process.
      startup_timeout: seconds to wait for each server to come up.
      echo: called with every streamed log line (e.g. ``print``).
    """

    def __init__(
        self,
        num_participants: int,
        workdir: str | Path | None = None,
        node_config: Sequence[Mapping[str, object]] | None = None,
        log_dir: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
        echo: Callable[[str], None] | None = None,
        host: str = "127.0.0.1",
    ):
        if num_participants < 1:
            raise ValueError(f"num_participants must be >= 1, got {num_participants}")
        if node_config is not None and len(node_config) != num_participants:
            raise ValueError(f"node_config has {len(node_config)} entries for {num_participants} participants")
        self.num_participants = num_participants
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="clapjax-flower-")) if workdir is None else Path(workdir)
        self._log_dir = None if log_dir is None else Path(log_dir)
        self.extra_node_config = list(node_config) if node_config is not None else [{}] * num_participants
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.echo = echo or (lambda line: None)
        self.host = host
        self.superlink: ManagedProcess | None = None
        self.supernodes: list[ManagedProcess] = []
        self.port: int | None = None
        self._previous_sigterm = None

    # ----------------------------------------------------------------- set-up
    @property
    def flwr_home(self) -> Path:
        return self.workdir / "flwr_home"

    @property
    def log_dir(self) -> Path:
        return self._log_dir if self._log_dir is not None else self.workdir / "logs"

    def state_dir(self, partition_id: int) -> Path:
        """Participant ``partition_id``'s private directory (its own machine in a real deployment)."""
        return self.workdir / f"participant_{partition_id}"

    def environment(self) -> dict[str, str]:
        """Environment of every Flower process: telemetry off, no GPU pre-allocation,
        this interpreter's ``bin`` first on PATH, this checkout importable."""
        env = dict(os.environ)
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        repo_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH", "")) if p)
        env["FLWR_HOME"] = str(self.flwr_home)
        env["FLWR_TELEMETRY_ENABLED"] = "0"
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        # The SuperExec polls for tasks every second by default; a round trip
        # per round is dominated by such sleeps on loopback.
        env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.05")
        # Every ClientApp message runs in a fresh process: share compiled XLA
        # programs between them instead of recompiling every round.
        env.setdefault("JAX_COMPILATION_CACHE_DIR", str(self.workdir / "jax_cache"))
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
        env.update(self.extra_env)
        return env

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed with the process
        # Logs are appended across runs into the same directory: mark where this one starts.
        log_file.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        log_file.flush()
        try:
            popen = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.environment(), cwd=self.workdir, start_new_session=True,
            )
        finally:
            log_file.close()
        return ManagedProcess(name, popen, log_path)

    def start(self) -> "LocalFederation":
        """Starts the SuperLink, waits for it, then starts the SuperNodes."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.host)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION_NAME}"\n\n'
            f'[superlink.{CONNECTION_NAME}]\naddress = "{self.host}:{self.port}"\ninsecure = true\n'
        )
        self.superlink = self._spawn("superlink", [
            flower_executable("flower-superlink"), "--insecure",
            "--disable-runtime-dependency-installation",
            "--host", self.host, "--port", str(self.port),
        ])
        try:
            wait_for_port(self.host, self.port, self.startup_timeout, self.superlink.alive)
        except DeploymentError as err:
            raise DeploymentError(f"SuperLink failed to start: {err}\n{self.superlink.log_tail()}") from None
        for i in range(self.num_participants):
            state_dir = self.state_dir(i)
            state_dir.mkdir(parents=True, exist_ok=True)
            config = {"partition-id": i, "num-partitions": self.num_participants, "state-dir": str(state_dir)}
            config.update(self.extra_node_config[i])
            runtime_port = free_port(self.host)
            self.supernodes.append(self._spawn(f"supernode_{i}", [
                flower_executable("flower-supernode"), "--insecure",
                "--superlink", f"{self.host}:{self.port}",
                "--host", self.host, "--port", str(runtime_port),
                "--node-config", node_config_string(config),
                "--max-retries", "5", "--max-wait-time", str(int(self.startup_timeout)),
            ]))
        return self

    # -------------------------------------------------------------- the run
    def check_alive(self) -> None:
        """Raises a DeploymentError naming any process of the deployment that died."""
        if self.superlink is not None and not self.superlink.alive():
            raise DeploymentError(
                f"the SuperLink (pid {self.superlink.pid}) exited with code {self.superlink.popen.returncode}\n"
                f"{self.superlink.log_tail()}"
            )
        for i, node in enumerate(self.supernodes):
            if not node.alive():
                raise DeploymentError(
                    f"participant {i} (SuperNode pid {node.pid}) exited with code {node.popen.returncode} "
                    f"during the run; its log: {node.log_path}\n{node.log_tail(10)}"
                )

    def run(
        self,
        run_config: Mapping[str, object],
        run_dir: str | Path,
        timeout: float,
        app_dir: str | Path = APP_DIR,
        on_poll: Callable[[], None] | None = None,
    ) -> RunResult:
        """``flwr run <app> clapjax-local --stream`` with a deadline.

        The stream is read on a thread into ``<log_dir>/flwr_run.log`` (without
        colour codes) and passed to ``echo``; the main thread watches the
        deadline and every process of the deployment, so a dead participant or
        a stuck run raises instead of hanging.

        Args:
          on_poll: called about five times a second while the run is going and
            once after it ended (e.g. to report rounds from the run directory).

        Raises:
          DeploymentError: a process died, the run timed out, or the ServerApp
            reported a failure.
        """
        if self.superlink is None:
            raise DeploymentError("start() the federation before run()")
        run_dir = Path(run_dir)
        status_path = run_dir / STATUS_FILE
        with contextlib.suppress(FileNotFoundError):
            status_path.unlink()
        config_path = self.log_dir / "run_config.toml"
        config_path.write_text(run_config_toml(run_config))
        argv = [
            flower_executable("flwr"), "run", str(app_dir), CONNECTION_NAME, "--stream",
            "--run-config", str(config_path),
        ]
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.environment(), cwd=self.workdir, start_new_session=True, text=True, bufsize=1,
        )
        streamer = ManagedProcess("flwr_run", proc, self.log_dir / "flwr_run.log")
        lines: list[str] = []

        def pump() -> None:
            with open(streamer.log_path, "a") as log:
                log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
                for line in proc.stdout:  # ends when the process closes its stdout
                    line = strip_ansi(line.rstrip("\n"))
                    lines.append(line)
                    log.write(line + "\n")
                    log.flush()
                    self.echo(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        try:
            while True:
                if status_path.exists():
                    # The ServerApp finished (successfully or not): let the stream drain.
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=10.0)
                    break
                if proc.poll() is not None and not reader.is_alive():
                    # The stream ended; give the status file a moment to appear.
                    end = time.monotonic() + 5.0
                    while not status_path.exists() and time.monotonic() < end:
                        time.sleep(0.1)
                    break
                self.check_alive()
                if on_poll is not None:
                    on_poll()
                if time.monotonic() > deadline:
                    raise DeploymentError(
                        f"the run did not finish within {timeout:.0f} s; logs in {self.log_dir}"
                    )
                time.sleep(0.2)
        finally:
            streamer.stop(grace=2.0)
            reader.join(timeout=5.0)
        if on_poll is not None:
            on_poll()
        wall = time.perf_counter() - t0
        if not status_path.exists():
            self.check_alive()
            raise DeploymentError(
                f"the run ended without writing {status_path} (flwr run exit code {proc.returncode});"
                f" last output:\n" + "\n".join(lines[-20:])
            )
        status = json.loads(status_path.read_text())
        if status.get("status") != "completed":
            raise DeploymentError(f"the ServerApp failed: {status.get('error', status)}")
        return RunResult(status, wall, tuple(lines))

    # ------------------------------------------------------------- tear-down
    def stop(self) -> None:
        """Stops every process this federation started (SuperNodes first)."""
        for node in reversed(self.supernodes):
            node.stop()
        if self.superlink is not None:
            self.superlink.stop()

    def __enter__(self) -> "LocalFederation":
        # SIGTERM (e.g. from a CI runner) must also stop the children.
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            return self.start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
                self._previous_sigterm = None
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
