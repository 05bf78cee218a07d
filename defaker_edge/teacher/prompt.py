"""Tokenizer and chat prompt.

No model hub: tiny and reference teachers use a small word-level tokenizer built offline from a
fixed vocabulary (chat-template pieces, the eight answer words, the questions' words and the
special tokens), wrapped in `PreTrainedTokenizerFast` and saved with the checkpoint. A real
DeFakerOne/Sa2VA directory carries its own tokenizer files and is loaded the same way.
"""

from __future__ import annotations

from pathlib import Path

from .config import ANSWER_WORDS, QUESTIONS, SPECIAL_TOKENS

IMG_START, IMG_END, IMG_CONTEXT, SEG = "<img>", "</img>", "<IMG_CONTEXT>", "[SEG]"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
PAD, UNK = "[PAD]", "[UNK]"

_BASE_WORDS = ("user", "assistant", "system", "<image>", ".", ",", "?", "!", ":", "It", "is", "the",
               "image", "a", "mask", "region", "fake", "real")


def vocabulary(questions=QUESTIONS) -> list[str]:
    """The fixed, ordered vocabulary: ids are positions, so the same list always gives the same ids."""
    words: list[str] = [PAD, UNK]
    seen = set(words) | set(SPECIAL_TOKENS)

    def add(w: str) -> None:
        if w not in seen:
            seen.add(w)
            words.append(w)

    for w in (*ANSWER_WORDS, *_BASE_WORDS):
        add(w)
    for q in questions:
        for w in q.split():
            add(w)
    return words + list(SPECIAL_TOKENS)


def build_tokenizer(questions=QUESTIONS):
    """A PreTrainedTokenizerFast over `vocabulary()`; whitespace/punctuation pre-tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AddedToken, PreTrainedTokenizerFast

    vocab = vocabulary(questions)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Added tokens are matched before pre-tokenization, so "<img><IMG_CONTEXT>" splits correctly.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, pad_token=PAD)
    return fast


def load_tokenizer(path: str | Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path))


def build_prompt(question: str, n_tiles: int, tokens_per_tile: int) -> str:
    """`<|im_start|>user\\n<image>\\n{q}<|im_end|>\\n<|im_start|>assistant\\n`, <image> expanded."""
    image = IMG_START + IMG_CONTEXT * (tokens_per_tile * n_tiles) + IMG_END
    return f"{IM_START}user\n{image}\n{question}{IM_END}\n{IM_START}assistant\n"


class TokenIds:
    """The ids the forward pass needs, resolved once (and checked: an unknown word is an error)."""

    def __init__(self, tokenizer, positive, negative):
        from ..errors import ArtifactError

        def one(word: str) -> int:
            ids = tokenizer.encode(word, add_special_tokens=False)
            if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
                raise ArtifactError(f"tokenizer has no single token for {word!r} (got ids {ids})")
            return int(ids[0])

        self.seg = one(SEG)
        self.img_context = one(IMG_CONTEXT)
        self.positive = [one(w) for w in positive]
        self.negative = [one(w) for w in negative]
        self.answers = self.positive + self.negative
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
