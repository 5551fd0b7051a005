"""How text becomes tokens: each token's id and the bytes it stands for, readable.

GPT-2's tokenizer is byte-level BPE: a token stands for a run of UTF-8 bytes, written in its
vocabulary with one printable character per byte (`Ġ` is a space). A token can hold part of a
character (an accented letter, CJK or emoji take 2-4 bytes), so a piece is shown as text when its
bytes are whole UTF-8 and as byte values when they are not.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from gencli.catalog import read_config
from gencli.errors import GencliError

BUNDLED_TOKENIZER = resources.files("gencli") / "assets" / "gpt2-tokenizer"
GPT2_VOCAB_SIZE = 50257
# Hub models whose tokenizer is GPT-2's own, the one bundled: tokenizing for them needs no network.
GPT2_TOKENIZER_MODELS = frozenset(
    [
        *(
            f"{owner}gpt2{size}"
            for owner in ("", "openai-community/")
            for size in ("", "-medium", "-large", "-xl")
        ),
        "distilgpt2",
        "distilbert/distilgpt2",
    ]
)


def load_tokenizer(folder: Path, vocab_size: int | None = None) -> Any:
    """The model folder's tokenizer; GPT-2's bundled one for a GPT-2-sized vocabulary without
    tokenizer files. `vocab_size` defaults to the folder's config."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError):
        tokenizer = None
    # transformers 5.x builds an EMPTY tokenizer, without error, for a folder lacking tokenizer files.
    if tokenizer is not None and len(tokenizer) > 1:
        return tokenizer
    vocab_size = read_config(folder).get("vocab_size") if vocab_size is None else vocab_size
    if vocab_size == GPT2_VOCAB_SIZE:
        return AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER))
    raise GencliError(
        f"model folder {folder} has no tokenizer files and a vocabulary of {vocab_size} "
        "tokens; save its tokenizer into the model folder (tokenizer.save_pretrained(folder))"
    )


def model_tokenizer(name: str, fallback: bool = False) -> tuple[Any, str, str | None]:
    """(the tokenizer of model `name`, the model it belongs to, a notice or None), loading no
    weights. A model here uses its own files; GPT-2's hub models use the bundled tokenizer, which
    is theirs byte for byte; any other is fetched, or with `fallback` the demo model stands in.
    A byte-level BPE tokenizer is read with the `tokenizers` library alone (`FastTokenizer`):
    importing transformers would cost seconds."""
    from gencli.catalog import locate_model
    from gencli.hub import runnable_folder

    if name in GPT2_TOKENIZER_MODELS and locate_model(name) is None:
        return FastTokenizer.read(Path(str(BUNDLED_TOKENIZER))), name, None
    name, folder, notice = runnable_folder(name, fallback)
    return FastTokenizer.read(folder) or load_tokenizer(folder), name, notice


class FastTokenizer:
    """A byte-level BPE tokenizer (GPT-2's, the demo model's) read with the `tokenizers` library,
    the one transformers' own tokenizers run on, without transformers itself: what `tokenize` and
    `detokenize` call (encode, decode, token strings, length) gives transformers' results."""

    def __init__(self, backend: Any):
        self.backend = backend

    @classmethod
    def read(cls, folder: Path) -> FastTokenizer | None:
        """The folder's tokenizer: its tokenizer.json, or GPT-2's vocab.json and merges.txt built
        as transformers' GPT2Tokenizer builds them; None for any other kind."""
        import json

        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        if (folder / "tokenizer.json").exists():
            return cls(Tokenizer.from_file(str(folder / "tokenizer.json")))
        config_path = folder / "tokenizer_config.json"
        if (
            not (folder / "vocab.json").exists()
            or not (folder / "merges.txt").exists()
            or not config_path.exists()
        ):
            return None
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.get("tokenizer_class") not in ("GPT2Tokenizer", "GPT2TokenizerFast"):
            return None
        vocab, merges = models.BPE.read_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
        backend = Tokenizer(
            models.BPE(
                vocab=vocab,
                merges=merges,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix="",
                fuse_unk=False,
            )
        )
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(
            add_prefix_space=bool(config.get("add_prefix_space"))
        )
        backend.decoder = decoders.ByteLevel()
        specials = {
            config[key] for key in ("bos_token", "eos_token", "unk_token") if isinstance(config.get(key), str)
        }
        backend.add_special_tokens([AddedToken(token, special=True) for token in sorted(specials)])
        return cls(backend)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)


@cache
def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-character table, inverted: printable bytes stand for themselves, the
    others (controls, space, ...) for characters from 256 on, in order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    characters, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            characters[chr(byte)] = byte
        else:
            characters[chr(256 + extra)] = byte
            extra += 1
    return characters


@dataclass(frozen=True)
class TokenPiece:
    id: int
    data: bytes  # the UTF-8 bytes this token stands for

    @property
    def text(self) -> str | None:
        """The piece as text, or None when its bytes are part of a character."""
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            return None

    @property
    def label(self) -> str:
        """Readable at a glance: spaces as ·, newlines and tabs escaped, bytes of a partial
        character as \\xNN."""
        text = self.data.decode("utf-8", "backslashreplace")
        return text.replace(" ", "·").replace("\n", "\\n").replace("\t", "\\t")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "bytes": list(self.data), "label": self.label}


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    token = tokenizer.convert_ids_to_tokens(token_id)
    table = byte_decoder()
    if token is not None and all(character in table for character in token):
        return bytes(table[character] for character in token)
    # A special token (<|endoftext|>) or a tokenizer that is not byte-level: its decoded text.
    return tokenizer.decode([token_id]).encode("utf-8")


def tokenize(tokenizer: Any, text: str) -> list[TokenPiece]:
    return pieces(tokenizer, tokenizer.encode(text, add_special_tokens=False))


def pieces(tokenizer: Any, ids: list[int]) -> list[TokenPiece]:
    """Each id with the bytes it stands for."""
    return [TokenPiece(token_id, token_bytes(tokenizer, token_id)) for token_id in ids]


def detokenize(tokenizer: Any, ids: list[int]) -> str:
    """The text of `ids`; GencliError-free: the caller checks the ids against the vocabulary."""
    return tokenizer.decode(ids)


class TokenText:
    """Streamed text, a token at a time: `add(id)` returns the text that token completes, "" while
    its bytes end inside a character (held back until the character is whole), and `rest()` what
    is still held when the run ends. Their concatenation is the tokenizer's decode of all the ids.

    Each call decodes a short window (the tokens since the last text given out, after the ones
    before them), as vLLM's incremental detokenizer does, so a long run costs no more per token
    than a short one."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.window_start = 0  # where the decoded window starts
        self.shown_until = 0  # the ids before this have had their text given out

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        shown = self._decode(self.ids[self.window_start : self.shown_until])
        text = self._decode(self.ids[self.window_start :])
        if text.endswith("\ufffd") or len(text) <= len(shown):
            return ""  # a character not yet whole, or a token with no text (skipped special)
        self.window_start, self.shown_until = self.shown_until, len(self.ids)
        return text[len(shown) :]

    def rest(self) -> str:
        """What has not been given out yet, whole or not (a run may end inside a character)."""
        shown = self._decode(self.ids[self.window_start : self.shown_until])
        text = self._decode(self.ids[self.window_start :])
        self.window_start = self.shown_until = len(self.ids)
        return text[len(shown) :]
