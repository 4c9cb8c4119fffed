#!/usr/bin/env python3
"""Writes engine/tests/golden/tokenizer.json: token ids of a set of texts as llama.cpp produces them.

The file is a JSON list; each case is {"name", "text", "ids", "llama_decode"}: `ids` from
`llm.tokenize(text.encode(), add_bos=False, special=True)` on the model's GGUF loaded with
`vocab_only=True`, and `llama_decode` llama.cpp's own detokenization of those ids (special tokens
rendered), so the Rust test can tell where a round trip differs because llama.cpp's does too.

Usage (with llama-cpp-python installed, e.g. in /root/.cache/sieve-anchor/venv):

    python scripts/golden_tokenizer.py [--model PATH] [--wikitext PATH] [--out PATH]

The model defaults to $SIEVE_MODEL, else ~/.cache/sieve/models/SmolLM2-135M-Instruct.Q4_1.gguf.
"""

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chat_prompt_one_user(text: str) -> str:
    """Mirrors sieve_engine::chat::user_prompt."""
    return (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{text}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def default_model() -> Path:
    env = os.environ.get("SIEVE_MODEL")
    if env:
        return Path(env)
    home = os.environ.get("SIEVE_HOME")
    if home:
        return Path(home) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) / "sieve" if xdg else Path.home() / ".cache" / "sieve"
    return base / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def wikitext_paragraph(path: Path, n: int = 2000) -> str:
    text = path.read_text(encoding="utf-8")[:n]
    # End at a line boundary so the case is a whole paragraph.
    cut = text.rfind("\n")
    return text[: cut + 1] if cut > 0 else text


def cases(wikitext: Path):
    return [
        ("english", "The quick brown fox jumps over the lazy dog. It was a bright cold day in April."),
        ("hello_numbers", "Hello world 12345"),
        ("space_runs", "a  b   c    d"),
        ("leading_trailing_spaces", "   leading and trailing   "),
        ("single_leading_space", " Hello"),
        ("tabs", "col1\tcol2\t\tcol3\t"),
        ("newlines", "line one\n\nline two\n\n\nline three\n"),
        ("mixed_whitespace", " \n \t\n  x \n\n y  \n"),
        ("non_ascii", "Café naïve 北京 Привет"),
        ("emoji", "I ❤️ 🦀 and 👨‍👩‍👧"),
        (
            "python_code",
            "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n"
            "for i in range(10):\n    print(i, fib(i))\n",
        ),
        ("chatml_prompt", chat_prompt_one_user("What is the capital of France?")),
        ("special_tokens_inline", "text<|endoftext|>more<|im_start|>user<|im_end|> <file_sep>x"),
        ("empty", ""),
        ("numbers", "3.14159 and 1,000,000"),
        ("contractions", "don't I'm we'll they've she'd it's DON'T"),
        ("wikitext_paragraph", wikitext_paragraph(wikitext)),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=default_model())
    ap.add_argument("--wikitext", type=Path, default=Path("/work/shared/data/wikitext2-test.raw.txt"))
    ap.add_argument("--out", type=Path, default=ROOT / "engine" / "tests" / "golden" / "tokenizer.json")
    a = ap.parse_args()

    if not a.model.exists():
        print(f"model not found at {a.model} — run ./scripts/setup.sh first", file=sys.stderr)
        return 1
    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama_cpp is not installed (pip install llama-cpp-python)", file=sys.stderr)
        return 1

    llm = Llama(model_path=str(a.model), vocab_only=True, verbose=False)
    out = []
    for name, text in cases(a.wikitext):
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        dec = llm.detokenize(ids, special=True).decode("utf-8", errors="replace")
        out.append({"name": name, "text": text, "ids": ids, "llama_decode": dec})
        same = "ok" if dec == text else "DIFFERS"
        print(f"{name:26s} {len(ids):4d} ids  round trip {same}")

    a.out.parent.mkdir(parents=True, exist_ok=True)
    # A list, one case per line (ids on the line too) to keep diffs readable.
    body = ",\n".join(" " + json.dumps(c, ensure_ascii=False) for c in out)
    a.out.write_text("[\n" + body + "\n]\n", encoding="utf-8")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
