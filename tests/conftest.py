"""Shared fixtures: a small random GPT-2 saved with the real GPT-2 tokenizer, loaded once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from gencli.loading import LoadedModel, load_model
from gencli.tokens import BUNDLED_TOKENIZER

# The kernel choices (gencli.kernels) of the whole session in one cache of its own: each kind of
# weight is measured once per session, and the user's cache is left alone. The Hugging Face cache
# stays where it was (it defaults to a folder under XDG_CACHE_HOME).
os.environ.setdefault(
    "HF_HOME", os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
)
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="gencli-test-cache-")

TINY_CONFIG = {
    "n_layer": 2,
    "n_head": 4,
    "n_embd": 64,
    "n_positions": 1024,
    # Larger than GPT-2's 0.02 so the random model's greedy output varies from token to token
    # and depends on positions: agreement tests then catch cache and position bugs.
    "initializer_range": 0.2,
}


def save_tiny_model(folder: Path, with_tokenizer: bool = True, seed: int = 0, **config: object) -> Path:
    """A tiny random GPT-2 in `folder`; `config` overrides TINY_CONFIG's values."""
    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config(**{**TINY_CONFIG, **config})).save_pretrained(folder)
    if with_tokenizer:
        AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER)).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own empty config, data and runtime directories and no GENCLI_*
    variables, so neither the developer's settings, the history nor warm processes leak in or out.
    (The runtime folder is short: a Unix socket's path may not be longer than 107 bytes.)"""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "user-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "user-data"))
    runtime = Path(tempfile.mkdtemp(prefix="gencli-run-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    for name in os.environ:
        if name.startswith("GENCLI_"):
            monkeypatch.delenv(name)
    yield tmp_path
    shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny(tiny_model_dir: Path) -> LoadedModel:
    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def demo() -> LoadedModel:
    """The bundled demo model: trained weights, its own 4,096-token BPE tokenizer."""
    return load_model("demo", device="cpu")


@pytest.fixture
def eos_as(tiny: LoadedModel) -> Iterator:
    """Make a given token the model's EOS for one test, so that a random model does stop at EOS."""
    config = tiny.model.generation_config
    original = config.eos_token_id

    def set_eos(token_id: int) -> LoadedModel:
        config.eos_token_id = token_id
        return tiny

    yield set_eos
    config.eos_token_id = original


@pytest.fixture
def model_without_tokenizer(tmp_path: Path) -> Path:
    return save_tiny_model(tmp_path / "no-tokenizer", with_tokenizer=False)


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, offline, so hub look-ups fail fast and deterministically."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    return cache


def populate_hub_cache(cache: Path, repo_id: str, model_folder: Path) -> Path:
    """Lay a model folder out as huggingface_hub caches a download: blobs, refs, snapshots."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for index, file in enumerate(sorted(model_folder.iterdir())):
        blob = repo / "blobs" / f"{index:040x}"
        blob.write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(blob)
    return snapshot


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    url: str
    api_key: str | None
    process: subprocess.Popen
    # What it wrote on stderr, line by line, read as it comes (an unread pipe would fill and stall it).
    log: list[str] = field(default_factory=list)

    def get(self, path: str) -> dict:
        request = urllib.request.Request(self.url + path, headers=self.headers)
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def stderr(self) -> str:
        return "".join(self.log)


def launch_server(model: Path | str, home: Path, *args: str, api_key: str | None = "secret") -> Server:
    """Start `gencli serve` without waiting for it: servers launched together start side by side."""
    port = free_port()
    env = {**os.environ, "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config")}
    command = [sys.executable, "-m", "gencli", "serve", "--model", str(model), "--port", str(port)]
    process = subprocess.Popen(
        [*command, *(["--api-key", api_key] if api_key else []), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    server = Server(f"http://127.0.0.1:{port}", api_key, process)
    threading.Thread(target=lambda: server.log.extend(process.stderr), daemon=True).start()
    return server


def wait_until_ready(server: Server) -> Server:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            server.process.wait()
            time.sleep(0.2)  # the reader thread takes the last lines
            raise RuntimeError(f"gencli serve exited: {server.stderr()}")
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=1):
                return server
        except OSError:
            time.sleep(0.2)
    server.process.kill()
    raise RuntimeError("gencli serve did not answer /health in 90 s")


def stop_server(server: Server) -> int:
    """SIGTERM, as a service manager stops it; returns the exit status."""
    server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout=30)
    finally:
        server.process.kill()


@pytest.fixture(scope="session")
def servers(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server, Server]]:
    """The session's `gencli serve`s, started side by side (each spends seconds importing): two of
    the tiny model, `served` and a spare one that a test may stop, and the demo model's with no
    flags at all, as a new user starts it."""
    main = launch_server(
        tiny_model_dir,
        tmp_path_factory.mktemp("serve-home"),
        "--mode",
        "kv-cache",
        "-n",
        "8",
        "--max-queue",
        "8",
        "--served-model-name",
        str(tiny_model_dir),
        "--served-model-name",
        "gpt2",
    )
    spare = launch_server(tiny_model_dir, tmp_path_factory.mktemp("spare-home"), "--mode", "kv-cache")
    plain = launch_server("demo", tmp_path_factory.mktemp("demo-home"), api_key=None)
    yield wait_until_ready(main), wait_until_ready(spare), wait_until_ready(plain)
    for server in (main, spare, plain):
        if server.process.poll() is None:
            stop_server(server)


@pytest.fixture(scope="session")
def served(servers: tuple[Server, Server, Server]) -> Server:
    """One `gencli serve` of the tiny model for the session: kv-cache, 8 new tokens by default, an
    API key, a queue of 8, and 'gpt2' as a second name for the model."""
    return servers[0]


@pytest.fixture(scope="session")
def spare_server(servers: tuple[Server, Server, Server]) -> Server:
    """A second `gencli serve` of the tiny model (kv-cache), for a test that stops it."""
    return servers[1]


@pytest.fixture(scope="session")
def demo_server(servers: tuple[Server, Server, Server]) -> Server:
    """`gencli serve -m demo` with no other flag (and no API key): every default as shipped."""
    return servers[2]
