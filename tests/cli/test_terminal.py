"""What a person sees on a real terminal: the start-up status, then the text and the stats."""

import sys

import pytest

pexpect = pytest.importorskip("pexpect")


def test_start_up_status_names_each_step_then_clears(tiny_model_dir, user_dirs):
    child = pexpect.spawn(
        sys.executable,
        [
            "-m",
            "gencli",
            "generate",
            "Hello world",
            "--model",
            str(tiny_model_dir),
            "-n",
            "4",
            "--mode",
            "kv-cache",
        ],
        env={"XDG_DATA_HOME": str(user_dirs / "user-data"), "PATH": "/usr/bin:/bin", "TERM": "xterm"},
        encoding="utf-8",
        timeout=60,
        dimensions=(24, 200),
    )
    child.expect("importing torch and transformers")
    child.expect(f"loading model {tiny_model_dir}")
    child.expect("kv-cache · 2 prompt tokens · 4 new tokens")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
