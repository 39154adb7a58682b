"""The toy world's tokenizer: byte-level BPE trained locally, every digit its own token.

Why the pieces are what they are:

- Byte-level BPE: every string encodes (no unknown token) and decodes back to itself, so completions,
  rewards and critical-token positions never meet a lossy step.
- Single-digit tokens: a tiny model can only learn carrying arithmetic if "12" and "21" share their
  pieces, and "numeric tokens" downstream are then exactly the digit tokens.
- ChatML with ``{% generation %}`` markers: Qwen2 is the architecture of the toy model, and TRL's
  ``assistant_only_loss=True`` needs the markers to mask everything but the assistant's words.

The reload trap, as read in transformers 5.23 (``models/auto/tokenization_auto.py``): when the folder
also holds a ``config.json`` with ``model_type: qwen2`` (the toy model is saved next to its tokenizer),
``AutoTokenizer.from_pretrained`` returns ``Qwen2Tokenizer`` whatever ``tokenizer_config.json`` pins,
because ``qwen2`` is in ``MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS``. ``Qwen2Tokenizer.__init__`` then
keeps only the vocab and merges of ``tokenizer.json`` and rebuilds the normalizer, pre-tokenizer and
decoder from its own hard-coded recipe. A tokenizer trained with any other pre-tokenizer (say ``Digits``
+ ``ByteLevel``) silently changes its ids on reload. Pinning a generic class is not enough, and
dodging the override (an ``auto_map`` entry) breaks under ``trust_remote_code=True``; vLLM, which loads
the tokenizer from the model folder by itself, would then see other ids than training did.

So we train *inside* the pipeline ``Qwen2Tokenizer`` rebuilds (copied from an instance, not retyped, so it
follows the installed transformers): NFC, then Qwen2's split regex (``\\p{N}`` alone: one digit per
piece; a space before a number is a piece of its own, "Ġ"), then ByteLevel. Then it does not matter
which class loads the folder: the ids are the same. ``tokenizer_config.json`` still pins the generic
``TokenizersBackend`` (the default on save), which reads ``tokenizer.json`` verbatim when no model
config sits next to it. :func:`load_tokenizer` checks the loaded tokenizer against ``tokenizer.json``.

The price of NFC: ``decode(encode(x)) == unicodedata.normalize("NFC", x)``, which is ``x`` for any NFC
text (all ASCII, and the corpus is ASCII). Exact round trip of non-NFC text would need a pipeline the
reload does not keep.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Tokenizer

# ChatML, as Qwen2 uses. Order fixes the ids: 0, 1, 2 (the trainer puts special tokens first).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# As in Qwen2-Instruct: a chat turn ends on <|im_end|>, so generation must stop there; <|endoftext|>
# only pads. No BOS: Qwen2 has none, and the tiny model is pretrained without one.
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

# Qwen2.5's layout without its default system message (prompts stay short for a tiny model). The
# generation block holds the assistant's content and its <|im_end|>: the model must learn to stop.
# The "\n" after <|im_end|> stays out: generation ends at EOS, so the model never emits it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# What load_tokenizer encodes both ways: digits, runs of spaces, newlines, LaTeX, specials, unicode
# (including a non-NFC "e" + combining accent, where a pipeline without NFC would differ).
_PROBE = (
    "<|im_start|>user\nTom has 12 apples.  He buys 3 boxes of 40.<|im_end|>\n<|im_start|>assistant\n"
    "3 * 40 = 120, then 12 + 120 = 132.\n\nThe answer is \\boxed{132}.<|im_end|>\n<|endoftext|>"
    " \t\r\n x^{2} - 0.5 = -1,000 ½ ٣ café cafe\u0301 日本 🙂 it's"
)


def _qwen2_pipeline() -> Tokenizer:
    """An untrained BPE tokenizer with exactly the normalizer/pre-tokenizer/decoder of ``Qwen2Tokenizer``.

    Copied from a live instance so a transformers upgrade that changes Qwen2's recipe changes ours with it
    (and :func:`load_tokenizer` flags folders saved under the old recipe).
    """
    reference = Qwen2Tokenizer().backend_tokenizer
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = reference.normalizer
    tokenizer.pre_tokenizer = reference.pre_tokenizer
    tokenizer.decoder = reference.decoder
    return tokenizer


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    # PreTrainedTokenizerFast is transformers 5's alias of TokenizersBackend: the generic class, which is
    # what tokenizer_config.json names on save.
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        # Saved as null, so a reload does not invent one (Qwen2Tokenizer would default to <|endoftext|>).
        unk_token=None,
        # Registered as special so that decode(..., skip_special_tokens=True), as TRL decodes completions,
        # drops the chat markers too.
        extra_special_tokens=SPECIAL_TOKENS[1:],
        # Cleanup would turn "a ." into "a." and break the round trip.
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, out_dir: str | os.PathLike | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``; save it to ``out_dir`` if given.

    Deterministic: the same texts give the same vocab and merges (the trainer sorts its alphabet and
    breaks count ties by pair id). ``vocab_size`` counts the 256 byte tokens and the special tokens, so it
    must exceed 259; a small corpus may stop short of it when nothing is left to merge.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} cannot hold the 256 byte tokens and the special tokens")
    tokenizer = _qwen2_pipeline()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        # All 256 bytes, seen or not: this is what makes any string encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = _wrap(tokenizer)
    if out_dir is not None:
        wrapped.save_pretrained(out_dir)
    return wrapped


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load with ``AutoTokenizer`` (as TRL and vLLM do) and check it still encodes as ``tokenizer.json`` does.

    The check costs one short encode. It fails loudly where transformers would otherwise hand back a
    rebuilt tokenizer with other ids: a folder saved under a different pre-tokenizer, or a transformers
    upgrade that changed the class it swaps in.
    """
    tokenizer = AutoTokenizer.from_pretrained(path)
    saved = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    expected = saved.encode(_PROBE, add_special_tokens=False).ids
    got = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    if got != expected:
        raise RuntimeError(
            f"{type(tokenizer).__name__} loaded from {path} does not encode like its tokenizer.json "
            "(transformers rebuilt the pre-tokenizer?); ids on the probe differ"
        )
    if (tokenizer.eos_token, tokenizer.pad_token) != (EOS_TOKEN, PAD_TOKEN):
        raise RuntimeError(f"{path}: eos/pad are {tokenizer.eos_token!r}/{tokenizer.pad_token!r}")
    return tokenizer
