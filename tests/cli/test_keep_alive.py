"""--keep-alive: calls through a warm gencli print what cold ones print, start as fast as
`gencli --help`, and the warm processes are listed, stopped, expired, replaced and kept private."""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gencli.cli import app
from gencli.settings import MODES


def run(*args, env, input=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "gencli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        timeout=timeout,
    )


def processes(env):
    listed = run("ps", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


@pytest.fixture(scope="module")
def warm_env(tmp_path_factory):
    """An environment of its own (config, data, runtime folders) whose calls keep the tiny model
    warm; its warm processes are stopped at the end."""
    home = tmp_path_factory.mktemp("warm-home")
    runtime = Path(tempfile.mkdtemp(prefix="gencli-run-"))
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("GENCLI_")},
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_RUNTIME_DIR": str(runtime),
        "GENCLI_KEEP_ALIVE": "2m",
        "GENCLI_LOG": "0",
    }
    yield env
    run("stop", "--all", env=env)


def record_without_timings(stdout):
    record = json.loads(stdout)
    record.pop("timings")
    return record


def test_a_warm_call_prints_what_a_cold_one_prints_in_every_mode(tiny_model_dir, warm_env):
    first = run("generate", "Hello world", "-m", tiny_model_dir, "-n", 6, "--json", env=warm_env)
    assert first.returncode == 0, first.stderr
    (process,) = processes(warm_env)
    assert process["model"] == str(tiny_model_dir) and process["calls"] == 1
    for mode in MODES:
        argv = ["generate", "Hello world", "-m", tiny_model_dir, "-n", 6, "--mode", mode, "--json"]
        warm = run(*argv, env=warm_env)
        cold = CliRunner().invoke(app, [*map(str, argv), "--no-log"])
        assert warm.returncode == cold.exit_code == 0, warm.stderr
        assert record_without_timings(warm.stdout) == record_without_timings(cold.stdout), mode
    streamed = run(
        "generate", "-m", tiny_model_dir, "-n", 6, "--sample", "--seed", 3, env=warm_env, input="Hi\n"
    )
    cold = CliRunner().invoke(
        app,
        ["generate", "-m", str(tiny_model_dir), "-n", "6", "--sample", "--seed", "3", "--no-log"],
        input="Hi\n",
    )
    assert streamed.stdout == cold.stdout and streamed.stderr.startswith("kv-cache · 1 prompt token · 6 new")
    assert processes(warm_env)[0]["pid"] == process["pid"]  # every call went to the same process


def test_errors_and_exit_statuses_are_a_cold_runs(tiny_model_dir, warm_env):
    argv = ["generate", "Hello", "-m", str(tiny_model_dir), "-n", "5000"]
    warm = run(*argv, env=warm_env)
    cold = CliRunner().invoke(app, argv)
    assert warm.returncode == cold.exit_code == 2 and warm.stderr == cold.stderr
    assert "use --max-new-tokens 1023 or less" in warm.stderr
    tokens = run("tokenize", "Hello world", "-m", tiny_model_dir, env=warm_env)
    assert (
        tokens.returncode == 0
        and tokens.stdout
        == CliRunner().invoke(app, ["tokenize", "Hello world", "-m", str(tiny_model_dir)]).stdout
    )
    closed = subprocess.run(
        f"{sys.executable} -m gencli generate Hi -m {tiny_model_dir} -n 300 --ignore-eos | head -c 5; "
        "exit ${PIPESTATUS[0]}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        env=warm_env,
        stdin=subprocess.DEVNULL,
    )
    assert closed.returncode == 1 and len(closed.stdout) == 5 and "Traceback" not in closed.stderr


def test_a_warm_call_starts_as_fast_as_help(tiny_model_dir, warm_env):
    def seconds(*args):
        started = time.perf_counter()
        done = run(*args, env=warm_env)
        assert done.returncode == 0, done.stderr
        return time.perf_counter() - started

    run("generate", "Hi", "-m", tiny_model_dir, "-n", 1, env=warm_env)  # warm
    help_s, warm_s = [], []
    for _ in range(3):  # alternating, in one run: a ratio, not seconds
        help_s.append(seconds("--help"))
        warm_s.append(seconds("generate", "Hi", "-m", tiny_model_dir, "-n", 1, "-q"))
    assert statistics.median(warm_s) < 1.5 * statistics.median(help_s), (warm_s, help_s)


def test_ctrl_c_stops_a_warm_generation_and_keeps_its_text(tiny_model_dir, warm_env):
    argv = [sys.executable, "-m", "gencli", "generate", "Once", "-m", str(tiny_model_dir), "-n", "1000"]
    run("generate", "Hi", "-m", tiny_model_dir, "-n", 1, env=warm_env)  # warm
    call = subprocess.Popen(
        [*argv, "--ignore-eos", "--mode", "greedy"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=warm_env,
    )
    time.sleep(1)
    call.send_signal(signal.SIGINT)
    stdout, stderr = call.communicate(timeout=60)
    assert call.returncode == 130 and stdout and "(interrupted)" in stderr and "Traceback" not in stderr
    assert processes(warm_env)  # the warm process goes on
    killed = subprocess.Popen(
        [*argv, "--ignore-eos", "--mode", "greedy"],
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=warm_env,
    )
    time.sleep(1)
    killed.kill()  # a caller that cannot say goodbye: its call is stopped, not run to its end
    started = time.perf_counter()
    assert run("generate", "Hi", "-m", tiny_model_dir, "-n", 1, env=warm_env).returncode == 0
    assert time.perf_counter() - started < 5


def pid_alive(pid):
    """Whether the process still runs (a zombie that nobody has reaped yet does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def gone(pid, within_s=15):
    deadline = time.monotonic() + within_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pid_alive(pid)


def test_first_calls_at_once_start_one_process_a_killed_one_is_replaced_an_idle_one_expires(
    tiny_model_dir, warm_env
):
    # Through `tokenize`, which needs no torch: the processes start in a second, not six.
    env = {**warm_env, "XDG_RUNTIME_DIR": tempfile.mkdtemp(prefix="gencli-run-"), "GENCLI_KEEP_ALIVE": "1m"}
    argv = [sys.executable, "-m", "gencli", "tokenize", "Hello world", "-m", str(tiny_model_dir), "--ids"]
    calls = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)
        for _ in range(2)
    ]
    outputs = [call.communicate(timeout=120)[0] for call in calls]
    assert [call.returncode for call in calls] == [0, 0] and outputs == ["15496 995\n"] * 2
    (process,) = processes(env)
    assert process["calls"] == 2
    os.kill(process["pid"], signal.SIGKILL)
    time.sleep(0.2)
    again = run(*argv[3:], env={**env, "GENCLI_KEEP_ALIVE": "1"})
    assert again.returncode == 0 and again.stdout == outputs[0] and again.stderr == ""
    (replacement,) = processes(env)
    assert replacement["pid"] != process["pid"] and replacement["keep_alive_s"] == 1
    assert gone(replacement["pid"]) and processes(env) == []  # a second idle, and it is gone


@pytest.mark.parametrize("problem", ["mode", "owner"])
def test_a_folder_others_may_use_is_refused(tiny_model_dir, problem):
    runtime = Path(tempfile.mkdtemp(prefix="gencli-run-"))
    folder = runtime / "gencli"
    folder.mkdir(mode=0o700)
    if problem == "mode":
        folder.chmod(0o755)
    elif os.getuid() == 0:
        os.chown(folder, 12345, 12345)
    else:
        pytest.skip("giving a folder to another user needs root")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    refused = run("generate", "Hi", "-m", tiny_model_dir, "--keep-alive", "1m", env=env)
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
    assert refused.stderr.startswith(f"gencli: error: the keep-alive folder {folder} is not private (")
    assert ("its mode is 0755" if problem == "mode" else "it belongs to user 12345") in refused.stderr
    assert list(folder.iterdir()) == []


@pytest.fixture(scope="module")
def interpreter_start_s():
    """How long the bare interpreter takes to start here (site's .pth files included), which is
    before any of gencli's code runs: a Ctrl-C then is Python's own to report."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@pytest.mark.parametrize("after_s", [0.05, 0.1, 0.2, 0.3, 0.5])
def test_ctrl_c_while_starting_exits_130_without_a_traceback(tiny_model_dir, interpreter_start_s, after_s):
    after_s += interpreter_start_s
    call = subprocess.Popen(
        [sys.executable, "-m", "gencli", "generate", "Hi", "-m", str(tiny_model_dir), "-n", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    time.sleep(after_s)
    call.send_signal(signal.SIGINT)
    _, stderr = call.communicate(timeout=60)
    assert call.returncode == 130 and "Traceback" not in stderr, stderr


def test_the_warm_process_takes_only_its_own_calls(tiny_model_dir, warm_env):
    run("generate", "Hi", "-m", tiny_model_dir, "-n", 1, env=warm_env)  # warm
    (before,) = processes(warm_env)
    # Without a keep-alive the warm process declines the call, which then runs in its own process
    # (here it stops early: no prompt file).
    missing = Path(tempfile.mkdtemp()) / "missing.txt"
    cold = run("generate", "-f", missing, "-m", tiny_model_dir, "--keep-alive", "0", env=warm_env)
    chat = run("chat", "-m", tiny_model_dir, "-n", 4, "-q", env=warm_env, input="Good morning.\n")
    (after,) = processes(warm_env)
    assert cold.returncode == 2 and cold.stderr.startswith(
        f"gencli: error: cannot read the prompt file {missing}"
    )
    assert chat.returncode == 0
    assert after["calls"] == before["calls"] + 1  # the piped chat only
    here = CliRunner().invoke(
        app, ["chat", "-m", str(tiny_model_dir), "-n", "4", "-q"], input="Good morning.\n"
    )
    assert chat.stdout == here.stdout != ""


def test_ps_and_stop(tiny_model_dir, warm_env):  # last: it stops the module's warm process
    run("generate", "Hi", "-m", tiny_model_dir, "-n", 1, env=warm_env)
    (process,) = processes(warm_env)
    assert {"device": "auto", "dtype": "auto", "quantize": "none"}.items() <= process.items()
    assert process["memory_bytes"] > 10**8 and 0 < process["expires_in_s"] <= 120
    table = run("ps", env=warm_env)
    assert str(tiny_model_dir) in table.stdout and "EXPIRES IN" in table.stdout
    unknown = run("stop", "gpt-4", env=warm_env)
    assert (
        unknown.returncode == 2
        and unknown.stderr == "gencli: error: no warm gencli holds gpt-4; gencli ps lists them\n"
    )
    stopped = run("stop", tiny_model_dir, env=warm_env)
    assert stopped.returncode == 0 and stopped.stderr == "gencli: stopped 1 warm model\n"
    deadline = time.monotonic() + 10
    while processes(warm_env) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes(warm_env) == [] and gone(process["pid"])
