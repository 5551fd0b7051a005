"""`gencli explore` as a command: the address it prints and opens, on a loopback port."""

import socket

import pytest
from typer.testing import CliRunner

from gencli.cli import app
from gencli.cli import explore as explore_command

runner = CliRunner()


@pytest.fixture
def served_apps(monkeypatch) -> list:
    """Instead of serving: the app and the socket it would be served on."""
    served = []

    def run(app, listener: socket.socket) -> None:
        served.append((app, listener.getsockname()))
        listener.close()

    monkeypatch.setattr(explore_command, "run_until_stopped", run)
    return served


def test_it_opens_the_page_with_the_prompt_on_a_free_loopback_port(tiny_model_dir, served_apps, monkeypatch):
    opened = []
    monkeypatch.setattr(explore_command.webbrowser, "open", lambda address: opened.append(address) or True)
    result = runner.invoke(app, ["explore", "The cat sat", "--model", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    ((_, (host, port)),) = served_apps
    address = f"http://127.0.0.1:{port}/?prompt=The+cat+sat"
    assert host == "127.0.0.1" and port > 0 and opened == [address]
    assert result.stderr == f"gencli: exploring {tiny_model_dir} at {address} — Ctrl-C stops\n"


def test_no_browser_prints_the_address_only(tiny_model_dir, served_apps, monkeypatch):
    monkeypatch.setattr(explore_command.webbrowser, "open", lambda address: pytest.fail("opened a browser"))
    result = runner.invoke(app, ["explore", "--model", str(tiny_model_dir), "--no-browser"])
    assert result.exit_code == 0, result.output
    ((_, (_, port)),) = served_apps
    assert f"at http://127.0.0.1:{port}/ — Ctrl-C stops" in result.stderr


def test_without_a_browser_it_says_to_open_the_address(tiny_model_dir, served_apps, monkeypatch):
    monkeypatch.setattr(explore_command.webbrowser, "open", lambda address: False)
    result = runner.invoke(app, ["explore", "--model", str(tiny_model_dir)])
    assert result.exit_code == 0
    assert result.stderr.endswith("gencli: no browser could be opened: open the address above in one\n")
