"""The keep-alive plumbing: the private runtime folder, one socket per model and load settings,
the frames, and durations."""

import os
import socket
import threading

import pytest

from gencli.keep_alive import (
    OUTPUT,
    KeepAliveError,
    WarmProcess,
    check_private,
    receive,
    runtime_folder,
    send,
    warm_processes,
)
from gencli.settings import duration_seconds


def test_the_runtime_folder_is_made_private_and_refused_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    folder = runtime_folder()
    assert folder == tmp_path / "gencli" and (folder.stat().st_mode & 0o777) == 0o700
    folder.chmod(0o750)
    with pytest.raises(KeepAliveError, match=r"its mode is 0750, not 0700"):
        runtime_folder()
    folder.rmdir()
    folder.symlink_to(tmp_path)
    with pytest.raises(KeepAliveError, match="is not a folder"):
        check_private(folder)


def test_one_process_per_model_and_load_settings(tmp_path):
    settings = {"model": "demo", "device": "auto", "dtype": "auto", "quantize": "none", "fallback": True}
    same = WarmProcess.for_settings(dict(reversed(settings.items())), tmp_path)
    assert WarmProcess.for_settings(settings, tmp_path) == same
    assert WarmProcess.for_settings({**settings, "dtype": "bfloat16"}, tmp_path).key != same.key
    assert same.connect() is None  # nothing listens
    listener = socket.socket(socket.AF_UNIX)  # a dead process's socket: refused, then removed
    listener.bind(str(same.socket))
    listener.close()  # bound, never listening: connecting is refused
    assert same.connect() is None and not same.socket.exists()
    os.chmod(tmp_path, 0o700)
    assert warm_processes(tmp_path) == []


def test_frames_cross_whole_whatever_their_size():
    left, right = socket.socketpair()
    payload = bytes(range(256)) * 3000  # larger than a socket buffer
    sender = threading.Thread(target=send, args=(left, OUTPUT, payload))
    sender.start()
    assert receive(right) == (OUTPUT, payload)
    sender.join()
    left.close()
    assert receive(right) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("300", 300),
        ("30s", 30),
        ("5m", 300),
        ("1.5h", 5400),
        ("5x", None),
        ("-1", None),
        ("m", None),
    ],
)
def test_durations(text, seconds):
    assert duration_seconds(text) == seconds
