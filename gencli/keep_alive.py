"""A model kept loaded between calls, as ollama's keep_alive: a background gencli per model and load
settings, reached over a Unix socket in a private per-user folder, that runs each call's command
line as a cold process would and relays its streams, exit status and signals.

The call that finds no such process starts one (one at a time: a lock) and waits for its socket.
The process runs one command at a time, with the caller's arguments, environment, working folder
and terminal; its stdin is the caller's, read only when the command reads it; Ctrl-C and SIGTERM
reach the command as they would a cold one. It exits after its keep-alive without a call.

No torch here, no typer: the caller's side must start as fast as `gencli --help`. The side that
runs commands gets a `run(argv) -> exit status` from the CLI.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import queue
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gencli.errors import GencliError

# What the caller sends: the command (JSON), stdin's bytes and its end, a signal (its number), and
# that one of its output streams failed (JSON: fd, errno, strerror); ps's and stop's questions.
RUN, STDIN, STDIN_END, SIGNAL, OUTPUT_FAILED, STATUS, STOP = range(1, 8)
# What the process sends: output (a byte for the stream, then the bytes), a request for stdin,
# the exit status (JSON), the answer to STATUS (JSON), and that the call is not its to run (another
# model or load settings, no keep-alive, or a command that runs in the caller's process).
OUTPUT, WANT_STDIN, EXIT, STATE, DECLINED = range(11, 16)
_HEADER = struct.Struct("!BI")  # kind, payload length

# The caller waits this long for a new process's socket before giving up.
START_TIMEOUT_S = 120.0


class KeepAliveError(GencliError):
    """The warm process could not be reached, started or trusted."""


# --- Where the processes live --------------------------------------------------------------------


def runtime_folder() -> Path:
    """The user's private folder for the sockets: $XDG_RUNTIME_DIR/gencli, else /tmp/gencli-UID;
    made with mode 0700, and refused unless it is the user's own folder that nobody else may enter."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(base) / "gencli" if base else Path("/tmp") / f"gencli-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700, parents=bool(base))
    check_private(folder)
    return folder


def check_private(folder: Path) -> None:
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or stat.S_ISLNK(info.st_mode):
        raise KeepAliveError(f"{folder} is not a folder; remove it so that gencli can make its own")
    problems = []
    if info.st_uid != os.getuid():
        problems.append(f"it belongs to user {info.st_uid}")
    if info.st_mode & 0o077:
        problems.append(f"its mode is {stat.S_IMODE(info.st_mode):04o}, not 0700")
    if problems:
        raise KeepAliveError(
            f"the keep-alive folder {folder} is not private ({' and '.join(problems)}): gencli will not "
            "use it; remove it, or set XDG_RUNTIME_DIR to a folder of your own"
        )


@dataclass(frozen=True)
class WarmProcess:
    """The files of the process for one model and its load settings."""

    folder: Path
    key: str

    @classmethod
    def for_settings(cls, load_settings: dict[str, Any], folder: Path | None = None) -> WarmProcess:
        digest = hashlib.sha256(json.dumps(load_settings, sort_keys=True).encode()).hexdigest()[:16]
        return cls(folder or runtime_folder(), digest)

    @property
    def socket(self) -> Path:
        return self.folder / f"{self.key}.sock"

    @property
    def lock(self) -> Path:
        return self.folder / f"{self.key}.lock"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.key}.log"

    def connect(self) -> socket.socket | None:
        """A connection to the process, or None when none listens (a dead one's socket is removed)."""
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(str(self.socket))
        except FileNotFoundError:
            connection.close()
            return None
        except ConnectionRefusedError:  # a process that died without removing its socket
            connection.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket.unlink()
            return None
        return connection


def warm_processes(folder: Path | None = None) -> list[WarmProcess]:
    """The processes whose sockets are in the runtime folder (checked to be private)."""
    if folder is None:
        folder = runtime_folder()
    else:
        check_private(folder)
    return [WarmProcess(folder, path.stem) for path in sorted(folder.glob("*.sock"))]


# --- Frames ---------------------------------------------------------------------------------------


def send(connection: socket.socket, kind: int, payload: bytes = b"") -> None:
    connection.sendall(_HEADER.pack(kind, len(payload)) + payload)


def send_json(connection: socket.socket, kind: int, data: Any) -> None:
    send(connection, kind, json.dumps(data).encode())


def receive(connection: socket.socket) -> tuple[int, bytes] | None:
    """The next frame, or None when the other side has closed the connection."""
    header = _read_exactly(connection, _HEADER.size)
    if header is None:
        return None
    kind, length = _HEADER.unpack(header)
    payload = _read_exactly(connection, length)
    return None if payload is None else (kind, payload)


def _read_exactly(connection: socket.socket, count: int) -> bytes | None:
    data = bytearray()
    while len(data) < count:
        try:
            piece = connection.recv(count - len(data))
        except (ConnectionResetError, OSError):
            return None
        if not piece:
            return None
        data += piece
    return bytes(data)


def ask(process: WarmProcess, kind: int) -> dict[str, Any] | None:
    """STATUS or STOP to a process: its answer, or None when it is gone."""
    connection = process.connect()
    if connection is None:
        return None
    with connection:
        connection.settimeout(10)
        try:
            send(connection, kind)
            frame = receive(connection)
        except OSError:
            return None
    return json.loads(frame[1]) if frame is not None and frame[0] == STATE else None


# --- The caller's side ----------------------------------------------------------------------------


class _GoneBeforeStarting(Exception):
    """The process closed the connection before the command started (it was expiring)."""


def run_through(
    process: WarmProcess,
    command: dict[str, Any],
    start: Callable[[], subprocess.Popen],
    waiting: Callable[[], contextlib.AbstractContextManager[Any]],
) -> int:
    """Run `command` (argv, env, cwd, terminal) in the warm process, starting it with `start()` if
    none listens (`waiting()` wraps the wait: a start-up status); relay its streams and the
    caller's signals; return its exit status."""
    for _ in range(3):  # a process that was expiring as we connected closes at once: start anew
        connection = process.connect() or _started(process, start, waiting)
        try:
            code = _relay(connection, command)
        except _GoneBeforeStarting:
            continue
        finally:
            connection.close()
        if code is None:
            raise KeepAliveError(f"the warm gencli declined the call; see its log {process.log}")
        return code
    raise KeepAliveError(f"the warm gencli would not take the call; see its log {process.log}")


def offer(process: WarmProcess, command: dict[str, Any]) -> int | None:
    """Run `command` in this process if it is there and takes it (its model, load settings and a
    keep-alive): its exit status; None when it declines or is gone."""
    connection = process.connect()
    if connection is None:
        return None
    try:
        return _relay(connection, command)
    except _GoneBeforeStarting:
        return None
    finally:
        connection.close()


def _started(
    process: WarmProcess,
    start: Callable[[], subprocess.Popen],
    waiting: Callable[[], contextlib.AbstractContextManager[Any]],
) -> socket.socket:
    """Connect to the process, starting it first if no other caller has (a lock: one process)."""
    with _locked(process.lock), waiting():
        connection = process.connect()
        if connection is not None:
            return connection
        child = start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            connection = process.connect()
            if connection is not None:
                return connection
            if child.poll() is not None:
                raise KeepAliveError(
                    f"the warm gencli exited as it started: {_last_line(process.log)}; see {process.log}"
                )
            time.sleep(0.02)
        child.kill()
        raise KeepAliveError(f"the warm gencli did not start in {START_TIMEOUT_S:.0f} s; see {process.log}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


def _relay(connection: socket.socket, command: dict[str, Any]) -> int | None:
    """The caller's half of a run: the command out; output, stdin and signals across; the exit
    status back, or None when the process declines the call."""
    sending = threading.RLock()

    def say(kind: int, payload: bytes = b"") -> None:
        with sending, contextlib.suppress(OSError):
            send(connection, kind, payload)

    def forward(signal_number: int, frame: object) -> None:
        say(SIGNAL, json.dumps(signal_number).encode())

    previous = {number: signal.signal(number, forward) for number in (signal.SIGINT, signal.SIGTERM)}
    failed: set[int] = set()
    started = False
    try:
        say(RUN, json.dumps(command).encode())
        while (frame := receive(connection)) is not None:
            started = True
            kind, payload = frame
            if kind == OUTPUT:
                descriptor = payload[0]
                if descriptor not in failed and (problem := _write(descriptor, payload[1:])) is not None:
                    failed.add(descriptor)
                    say(OUTPUT_FAILED, json.dumps({"fd": descriptor, **problem}).encode())
            elif kind == WANT_STDIN:
                threading.Thread(target=_pump_stdin, args=(say,), daemon=True).start()
            elif kind == EXIT:
                return int(json.loads(payload))
            elif kind == DECLINED:
                return None
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if not started:
        raise _GoneBeforeStarting
    raise KeepAliveError("the warm gencli stopped during the call (killed?); the next call starts a new one")


def _write(descriptor: int, data: bytes) -> dict[str, Any] | None:
    """Write to our stdout or stderr as the command would have; the error, if it fails."""
    stream = sys.stdout if descriptor == 1 else sys.stderr
    try:
        if hasattr(stream, "buffer"):
            stream.buffer.write(data)
        else:
            stream.write(data.decode("utf-8", "replace"))
        stream.flush()
    except OSError as problem:
        return {"errno": problem.errno or errno.EIO, "strerror": problem.strerror or str(problem)}
    return None


def _pump_stdin(say: Callable[[int, bytes], None]) -> None:
    while True:
        try:
            data = os.read(0, 65536)
        except OSError:
            data = b""
        if not data:
            say(STDIN_END, b"")
            return
        say(STDIN, data)


def terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def describe_caller(argv: list[str]) -> dict[str, Any]:
    """The command to run, as this process was asked to run it."""
    environment = dict(os.environ)
    if terminal(sys.stdout) or terminal(sys.stderr):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(1 if terminal(sys.stdout) else 2)
            environment.setdefault("COLUMNS", str(size.columns))
            environment.setdefault("LINES", str(size.lines))
    return {
        "argv": argv,
        "env": environment,
        "cwd": os.getcwd(),
        "tty": {name: terminal(getattr(sys, name)) for name in ("stdin", "stdout", "stderr")},
    }


# --- The warm process's side ----------------------------------------------------------------------


class _OutputFailed(Exception):
    pass


class _Connection:
    """One caller's connection while its command runs: frames out under a lock, and a reader of
    what the caller sends (stdin, signals, failed outputs)."""

    def __init__(self, connection: socket.socket, interrupt: Callable[[int], None]):
        self.connection = connection
        self.lock = threading.Lock()
        self.failures: dict[int, OSError] = {}
        self.stdin_read, self.stdin_write = os.pipe()
        self.stdin_asked = False
        self.interrupt = interrupt
        self.finished = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def send(self, kind: int, payload: bytes = b"") -> None:
        with self.lock, contextlib.suppress(OSError):
            send(self.connection, kind, payload)

    def ask_for_stdin(self) -> None:
        if not self.stdin_asked:
            self.stdin_asked = True
            self.send(WANT_STDIN)

    def _read(self) -> None:
        while (frame := receive(self.connection)) is not None:
            kind, payload = frame
            if kind == STDIN:
                with contextlib.suppress(OSError):
                    os.write(self.stdin_write, payload)
            elif kind == STDIN_END:
                self._end_stdin()
            elif kind == SIGNAL:
                self.interrupt(int(json.loads(payload)))
            elif kind == OUTPUT_FAILED:
                problem = json.loads(payload)
                self.failures[problem["fd"]] = OSError(problem["errno"], problem["strerror"])
        self._end_stdin()
        if not self.finished:  # the caller is gone (killed): its command need not go on
            self.interrupt(signal.SIGINT)

    def _end_stdin(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.stdin_write)

    def close(self) -> None:
        self.finished = True
        self._end_stdin()
        with contextlib.suppress(OSError):
            os.close(self.stdin_read)
        self.connection.close()


class _Output(io.RawIOBase):
    """The command's stdout or stderr: each write goes to the caller at once; a write after the
    caller's stream failed fails as it did there (a closed pipe, a full disk)."""

    def __init__(self, connection: _Connection, descriptor: int, tty: bool):
        self.connection, self.descriptor, self.tty = connection, descriptor, tty

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.tty

    def write(self, data: bytes) -> int:  # type: ignore[override]
        failure = self.connection.failures.get(self.descriptor)
        if failure is not None:
            raise type(failure)(failure.errno, failure.strerror)
        self.connection.send(OUTPUT, bytes([self.descriptor]) + bytes(data))
        return len(data)


class _Input(io.RawIOBase):
    """The command's stdin: the caller's, asked for at the first read (a command that never reads
    it leaves it to the caller's shell, as a cold one does)."""

    def __init__(self, connection: _Connection, tty: bool):
        self.connection, self.tty = connection, tty

    def readable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.tty

    def readinto(self, buffer: Any) -> int:  # type: ignore[override]
        self.connection.ask_for_stdin()
        data = os.read(self.connection.stdin_read, len(buffer))
        buffer[: len(data)] = data
        return len(data)


@dataclass
class Caller:
    """A run's context, swapped in around the command: streams, environment, folder."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    tty: dict[str, bool]


@contextlib.contextmanager
def _as_caller(caller: Caller, connection: _Connection) -> Iterator[None]:
    saved = (sys.stdin, sys.stdout, sys.stderr, dict(os.environ), os.getcwd())

    def text(raw: io.RawIOBase, readable: bool) -> io.TextIOWrapper:
        buffered = io.BufferedReader(raw) if readable else io.BufferedWriter(raw)
        return io.TextIOWrapper(buffered, encoding="utf-8", errors="surrogateescape", write_through=True)

    sys.stdin = text(_Input(connection, caller.tty["stdin"]), readable=True)
    sys.stdout = text(_Output(connection, 1, caller.tty["stdout"]), readable=False)
    sys.stderr = text(_Output(connection, 2, caller.tty["stderr"]), readable=False)
    os.environ.clear()
    os.environ.update(caller.env)
    try:
        os.chdir(caller.cwd)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        sys.stdin, sys.stdout, sys.stderr = saved[:3]
        os.environ.clear()
        os.environ.update(saved[3])
        os.chdir(saved[4])


class WarmServer:
    """The warm process: answers ps's and stop's questions at any time, runs one command at a time
    (`run(argv) -> exit status`, or None when the call is not this process's to run, in this, the
    main thread, so that signal handlers work), and exits after `keep_alive_s` without a call
    (`keep_alive_s` follows the latest call's). `about` is what ps shows of it;
    `interrupt(signal)` delivers a caller's signal to the running command."""

    def __init__(
        self,
        process: WarmProcess,
        keep_alive_s: float,
        run: Callable[[list[str]], int | None],
        about: dict[str, Any],
        interrupt: Callable[[int], None],
    ):
        self.process, self.keep_alive_s, self.run, self.about = process, keep_alive_s, run, about
        self.interrupt = interrupt
        self.calls: queue.Queue[tuple[socket.socket, Caller] | None] = queue.Queue()
        self.last_call = time.monotonic()
        self.busy = False
        self.stopping = False
        self.calls_run = 0
        self.signalled = False  # a signal was sent on (a caller's Ctrl-C, a stop): not ours to obey

    def serve(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            self.process.socket.unlink()
        listener.bind(str(self.process.socket))
        os.chmod(self.process.socket, 0o600)
        listener.listen(64)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        try:
            while not self.stopping:
                call = self._next_call()
                if call is not None:
                    with contextlib.suppress(KeyboardInterrupt):  # a signal that came as the call ended
                        self._run(*call)
        finally:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.process.socket.unlink()
            while not self.calls.empty():  # callers that came as it closed start a new process
                left = self.calls.get()
                if left is not None:
                    left[0].close()

    def _next_call(self) -> tuple[socket.socket, Caller] | None:
        try:
            return self.calls.get(timeout=0.2)
        except queue.Empty:
            if time.monotonic() - self.last_call > self.keep_alive_s:
                self.stopping = True
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM sent to this process itself: stop
            self.stopping = self.stopping or not self.signalled
            self.signalled = False
        return None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connection.settimeout(10)  # a caller says what it wants at once
            frame = receive(connection)
            connection.settimeout(None)
            if frame is None:
                connection.close()
            elif frame[0] == RUN:
                request = json.loads(frame[1])
                caller = Caller(request["argv"], request["env"], request["cwd"], request["tty"])
                self.calls.put((connection, caller))
            else:
                if frame[0] == STOP:
                    self.stopping = True
                    self.calls.put(None)
                    if self.busy:
                        self._signal(signal.SIGINT)
                with connection:
                    send_json(connection, STATE, self.state())

    def state(self) -> dict[str, Any]:
        idle = 0.0 if self.busy else time.monotonic() - self.last_call
        return {
            **self.about,
            "pid": os.getpid(),
            "memory_bytes": _resident_bytes(),
            "busy": self.busy,
            "idle_s": round(idle, 1),
            "expires_in_s": None if self.busy else round(max(0.0, self.keep_alive_s - idle), 1),
            "keep_alive_s": self.keep_alive_s,
            "calls": self.calls_run,
            "stopping": self.stopping,
        }

    def _signal(self, number: int) -> None:
        self.signalled = True
        self.interrupt(number)

    def _run(self, connection: socket.socket, caller: Caller) -> None:
        self.busy = True
        link = _Connection(connection, self._signal)
        code: int | None = 1
        try:
            with _as_caller(caller, link):
                code = self.run(caller.argv)
        except KeyboardInterrupt:  # a signal that came after the command's own handling ended
            code = 130
        except Exception as problem:  # the call's fault (its folder is gone, ...), not the process's
            message = f"gencli: error: the warm gencli could not run the call: {problem}\n"
            link.send(OUTPUT, b"\x02" + message.encode())
        finally:
            link.finished = True  # from here on, the caller leaving is no interruption
            if code is None:
                link.send(DECLINED)
            else:
                link.send(EXIT, json.dumps(code).encode())
                self.calls_run += 1
                self.last_call = time.monotonic()
            link.close()
            self.busy = self.signalled = False


def _resident_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def start_command(process: WarmProcess, arguments: list[str]) -> subprocess.Popen:
    """Start the warm process (gencli.cli.keep_alive's `main(ARGUMENTS)`) on its own, detached
    from the caller's terminal and session, its output in its log."""
    with open(process.log, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-c", "from gencli.cli.keep_alive import main; main()", *arguments],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=process.folder,
            start_new_session=True,
        )
