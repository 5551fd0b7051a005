"""`gencli serve` as a command: refusals before the model loads, and the loopback rule."""

import socket
import sys

import pytest
from typer.testing import CliRunner

from gencli.cli import app
from gencli.cli.serve import _is_loopback

runner = CliRunner()


def test_without_the_extra_it_says_how_to_install_it(monkeypatch, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # an import of it now fails
    result = runner.invoke(app, ["serve", "--model", str(tiny_model_dir)])
    assert result.exit_code == 2
    assert result.stderr == "gencli: error: gencli serve needs its extra: pip install 'gencli[serve]'\n"


def test_a_taken_port_is_one_line_before_loading(tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "--model", str(tiny_model_dir), "--port", str(port)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"gencli: error: cannot listen on 127.0.0.1:{port}: ")
    assert "pick another --port" in result.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("127.1.2.3", True),
        ("0.0.0.0", False),
        ("::", False),
    ],
)
def test_which_addresses_count_as_loopback(host, loopback):
    assert _is_loopback(host) is loopback
