"""Token pieces: the bytes each token stands for, round-tripping to the text."""

import pytest
from transformers import AutoTokenizer

from gencli.catalog import bundled_model_dir
from gencli.tokens import (
    BUNDLED_TOKENIZER,
    FastTokenizer,
    TokenPiece,
    TokenText,
    load_tokenizer,
    tokenize,
)

TEXTS = [
    "Hello world! The meaning of life is",
    "Ça va? Crème brûlée.",
    "世界你好",
    "ok 🙂👍🏽 done",
    "tab\tnew\nline  two",
]


@pytest.fixture(scope="module", params=["gpt2", "demo"])
def tokenizer(request):
    if request.param == "gpt2":
        return AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER))
    return load_tokenizer(bundled_model_dir())


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_round_trip_to_the_text(tokenizer, text):
    pieces = tokenize(tokenizer, text)
    assert [piece.id for piece in pieces] == tokenizer.encode(text, add_special_tokens=False)
    assert b"".join(piece.data for piece in pieces) == text.encode("utf-8")


def test_known_gpt2_ids_and_labels():
    pieces = tokenize(
        AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER)), "Hello world! The meaning of life is"
    )
    assert [piece.id for piece in pieces] == [15496, 995, 0, 383, 3616, 286, 1204, 318]
    assert [piece.label for piece in pieces][:3] == ["Hello", "·world", "!"]


def test_a_character_split_across_tokens_shows_its_bytes():
    piece = TokenPiece(1, "é".encode()[:1])
    assert piece.text is None and piece.label == "\\xc3"
    assert TokenPiece(2, b" \n").label == "·\\n"
    assert TokenPiece(3, b"\xf0\x9f\x99\x82").to_dict() == {
        "id": 3,
        "text": "🙂",
        "bytes": [240, 159, 153, 130],
        "label": "🙂",
    }


def test_streamed_text_holds_a_split_character_back_and_adds_up_to_the_decode():
    import random

    tokenizer = AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER))
    ids = tokenizer.encode(" a😀b")  # the emoji's four bytes take more than one token
    streamed = TokenText(tokenizer)
    pieces = [streamed.add(token) for token in ids]
    assert pieces[0] == " a" and pieces[-1] == "b" and streamed.rest() == ""
    assert [piece for piece in pieces[1:-1] if piece] == ["😀"] and "" in pieces
    rng = random.Random(0)
    for _ in range(200):  # any ids, special ones and broken characters included
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 30))]
        for skip in (True, False):
            streamed = TokenText(tokenizer, skip)
            text = "".join(streamed.add(token) for token in ids) + streamed.rest()
            assert text == tokenizer.decode(ids, skip_special_tokens=skip)


def test_the_tokenizers_library_alone_gives_transformers_results(tokenizer):
    """What `tokenize` and `detokenize` read without transformers equals transformers' tokenizer:
    ids of book text and odd text, decoded random ids (special ones included) and token strings."""
    import random
    from pathlib import Path

    folder = Path(str(BUNDLED_TOKENIZER)) if len(tokenizer) == 50257 else bundled_model_dir()
    fast = FastTokenizer.read(folder)
    assert len(fast) == len(tokenizer)
    rng = random.Random(0)
    source = Path(__file__).read_text(encoding="utf-8")  # text with code, quotes, newlines, indents
    samples = [*TEXTS, "a <|endoftext|> b", "  two spaces", "", source]
    for text in samples:
        assert fast.encode(text) == tokenizer.encode(text, add_special_tokens=False)
    for _ in range(200):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 30))] + [len(tokenizer) - 1]
        for skip in (True, False):
            assert fast.decode(ids, skip_special_tokens=skip) == tokenizer.decode(
                ids, skip_special_tokens=skip
            )
        assert [fast.convert_ids_to_tokens(token) for token in ids] == tokenizer.convert_ids_to_tokens(ids)
