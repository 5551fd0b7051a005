"""What a person sees on a real terminal: the start-up status, then the text and the stats."""

import sys

import pytest

pexpect = pytest.importorskip("pexpect")


def spawn_gencli(user_dirs, *args, rows=24):
    """`gencli ARGS` on a pseudo-terminal of `rows` x 200, with the test's own user folders."""
    return pexpect.spawn(
        sys.executable,
        ["-m", "gencli", *args],
        env={
            "XDG_DATA_HOME": str(user_dirs / "user-data"),
            "XDG_CONFIG_HOME": str(user_dirs / "user-config"),
            "PATH": "/usr/bin:/bin",
            "TERM": "xterm",
        },
        encoding="utf-8",
        timeout=60,
        dimensions=(rows, 200),
    )


def test_start_up_status_names_each_step_then_show_probs_colours_each_token(tiny_model_dir, user_dirs):
    arguments = ["generate", "Hello world", "--model", str(tiny_model_dir), "-n", "6", "--mode", "kv-cache"]
    child = spawn_gencli(user_dirs, *arguments, "--show-probs", "--no-log", rows=40)
    child.expect("importing torch and transformers")
    child.expect(f"loading model {tiny_model_dir}")
    child.expect(r"\x1b\[(3[12]|33|38;5;208)m")  # a token in green, red, yellow or orange
    child.expect("Next-token probabilities")
    child.expect("kv-cache · 2 prompt tokens · 6 new tokens")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def spawn_chat(model, user_dirs, *args):
    return spawn_gencli(user_dirs, "chat", "--model", str(model), "--mode", "kv-cache", *args, rows=40)


def test_chat_prompt_commands_ctrl_c_ctrl_d_and_sigterm(tiny_model_dir, user_dirs):
    import signal

    # A second session, started alongside (each spends seconds importing), is ended by SIGTERM
    # at its prompt, where Ctrl-C would only drop the line.
    terminated = spawn_chat(tiny_model_dir, user_dirs, "-n", "4")
    child = spawn_chat(tiny_model_dir, user_dirs, "-n", "6")
    child.expect("/help lists the commands")
    child.expect(">>> ")
    child.sendline("Good morning.")
    child.expect(r"turn 1 · 0 tokens from the cache \+ \d+ prefilled")
    child.expect(">>> ")
    child.sendline("What news?")
    child.expect(r"turn 2 · [1-9]\d* tokens from the cache")
    child.expect(">>> ")
    child.sendline("/help")
    child.expect("/undo")
    child.expect(">>> ")
    child.sendline("/set max_new_tokens 500")
    child.expect(">>> ")
    child.sendline("/set ignore_eos true")
    child.expect(">>> ")
    child.sendline("Tell me everything.")
    child.expect("Tell me everything.\r\n")
    child.expect(r"\S")  # the reply has begun
    child.sendintr()  # Ctrl-C stops the reply and keeps the session
    child.expect(r"turn 3 · .*\(interrupted\)")
    child.expect(">>> ")
    child.sendline("/show")
    child.expect("3 turns")
    child.expect(">>> ")
    child.sendintr()  # Ctrl-C at the prompt drops the line
    child.expect(">>> ")
    child.sendeof()  # Ctrl-D leaves
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    history = (user_dirs / "user-data" / "gencli" / "chat_history").read_text()
    assert "What news?" in history and "/show" in history
    terminated.expect(">>> ")
    terminated.kill(signal.SIGTERM)
    terminated.expect(pexpect.EOF)
    terminated.close()
    assert terminated.exitstatus == 130


def test_batch_records_never_share_a_line_with_the_progress_bar(tiny_model_dir, user_dirs, tmp_path):
    import json
    import re

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": str(i), "prompt": f"Prompt {i}"}) + "\n" for i in range(6)))
    arguments = ["batch", str(source), "--model", str(tiny_model_dir), "-n", "3", "--batch-size", "2"]
    child = spawn_gencli(user_dirs, *arguments)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    # What the screen shows, line by line: escape sequences dropped, a carriage return starts over.
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before)
    screen = [line.rsplit("\r", 1)[-1] for line in plain.split("\r\n")]
    records = [line for line in screen if '"id"' in line]
    assert [json.loads(line)["id"] for line in records] == ["0", "1", "2", "3", "4", "5"]
