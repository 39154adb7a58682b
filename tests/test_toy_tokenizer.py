"""The toy tokenizer: round trip, single-digit tokens, identical ids after reload next to a Qwen2 config,
the ChatML template and its assistant mask, determinism."""

import json
import random
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config
from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

from cft_rl.toy.tokenizer import (
    CHAT_TEMPLATE,
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    load_tokenizer,
    train_tokenizer,
)

NAMES = ["Tom", "Ann", "Lee", "Maria"]
ITEMS = ["apples", "pencils", "marbles", "cookies"]


def make_corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    corpus = []
    for _ in range(n):
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        a, b, c = rng.randint(1, 99), rng.randint(1, 9), rng.randint(1, 12)
        problem = f"{name} has {a} {item}. {name} buys {b} boxes with {c} {item} each."
        solution = (
            f"First, compute the {item} in the boxes: {b} * {c} = {b * c}. "
            f"Then {a} + {b * c} = {a + b * c}. The answer is \\boxed{{{a + b * c}}}."
        )
        corpus.append(f"{problem}\n{solution}")
        corpus.append(f"<|im_start|>user\n{problem}<|im_end|>\n<|im_start|>assistant\n{solution}<|im_end|>\n")
    return corpus


TEXTS = [
    "Tom has 12 apples. He buys 3 boxes with 4 apples each. First, compute the apples in the boxes: "
    "3 * 4 = 12. Then 12 + 12 = 24. The answer is \\boxed{24}.",
    "\\boxed{12}",
    "\\frac{1}{2} + \\sqrt{x^{2}} = {3}",
    "line one\nline two\n\n\tindented\r\nwindows",
    "   leading and trailing spaces   ",
    "a . b , c ! it 's don't",
    "café naïve 日本語 🙂 ½ ٣٤ Ωmega",
    "",
    " ",
    "\n",
    "0",
    "-1,000.50 and 3.14159",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
]

TINY_QWEN2 = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64
)

MESSAGES = [
    {"role": "user", "content": "Ann has 5 pens and buys 7 more. How many pens?"},
    {"role": "assistant", "content": "5 + 7 = 12. The answer is \\boxed{12}."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(make_corpus())


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# --- round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tokenizer, text):
    assert tokenizer.decode(ids(tokenizer, text)) == text


def test_no_unknown_tokens(tokenizer):
    # Byte-level: unseen characters become byte tokens, never an unknown token.
    assert tokenizer.unk_token is None
    assert all(i is not None for i in ids(tokenizer, "ß∑∂ƒ©˙∆˚¬ 🙂"))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_round_trip_property(tokenizer, text):
    # NFC is part of the pipeline Qwen2Tokenizer rebuilds on reload, so arbitrary text comes back in NFC form.
    assert tokenizer.decode(ids(tokenizer, text)) == unicodedata.normalize("NFC", text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(codec="ascii"), max_size=200))
def test_round_trip_exact_on_ascii(tokenizer, text):
    assert tokenizer.decode(ids(tokenizer, text)) == text


# --- digits -------------------------------------------------------------------------------------


def test_digits_are_single_tokens(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(ids(tokenizer, "12345 + 678"))
    # Each digit is a token; the space before a number is a token of its own ("Ġ"), never glued to a digit.
    assert tokens == ["1", "2", "3", "4", "5", "Ġ+", "Ġ", "6", "7", "8"]


def test_no_token_holds_a_digit_and_anything_else(tokenizer):
    vocab = tokenizer.get_vocab()
    # The corpus is full of numbers, so BPE would merge them if the pre-tokenizer let it.
    assert not [tok for tok in vocab if any(ch.isdigit() for ch in tok) and len(tok) > 1]
    text = " ".join(TEXTS) + " 9876543210 x1 a2b 3.5"
    for token in tokenizer.convert_ids_to_tokens(ids(tokenizer, text)):
        assert not any(ch.isdigit() for ch in token) or len(token) == 1, token


# --- reload next to a Qwen2 config ---------------------------------------------------------------


def save_with_qwen2_config(tok, path):
    tok.save_pretrained(path)
    Qwen2Config(vocab_size=len(tok), **TINY_QWEN2).save_pretrained(path)


def test_reload_next_to_qwen2_config_gives_identical_ids(tokenizer, tmp_path):
    save_with_qwen2_config(tokenizer, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "qwen2"
    assert (
        json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"
    )

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    # transformers 5 swaps in Qwen2Tokenizer here, which rebuilds the pre-tokenizer: the ids must not move.
    for text in [*TEXTS, "cafe\u0301 12345 + 678"]:
        assert ids(reloaded, text) == ids(tokenizer, text), text
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert (reloaded.eos_token, reloaded.pad_token, reloaded.bos_token) == (EOS_TOKEN, PAD_TOKEN, None)
    assert set(reloaded.all_special_tokens) == set(SPECIAL_TOKENS)
    assert reloaded.chat_template == CHAT_TEMPLATE
    for add in (False, True):
        assert reloaded.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=add) == (
            tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=add)
        )
    pieces = reloaded.backend_tokenizer.pre_tokenizer.pre_tokenize_str("12345")
    assert [piece for piece, _ in pieces] == list("12345")
    assert load_tokenizer(tmp_path)(TEXTS[0])["input_ids"] == ids(tokenizer, TEXTS[0])


def test_reload_without_model_config_is_generic(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = load_tokenizer(tmp_path)
    assert type(reloaded) is PreTrainedTokenizerFast
    assert all(ids(reloaded, text) == ids(tokenizer, text) for text in TEXTS)


def test_load_tokenizer_catches_the_reload_trap(tmp_path):
    # The pipeline the brief first suggested: digits + ByteLevel, saved next to a qwen2 config. transformers
    # rebuilds it as Qwen2Tokenizer and the ids change; load_tokenizer must refuse it.
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(make_corpus(100), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    save_with_qwen2_config(tok, tmp_path)
    with pytest.raises(RuntimeError, match="does not encode like"):
        load_tokenizer(tmp_path)


# --- chat template ------------------------------------------------------------------------------


def test_chat_template_is_chatml(tokenizer):
    user, assistant = MESSAGES[0]["content"], MESSAGES[1]["content"]
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    assert text == f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n"
    prompt = tokenizer.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    # No default system message.
    assert "system" not in prompt


def test_assistant_mask_covers_content_and_im_end(tokenizer):
    out = tokenizer.apply_chat_template(
        MESSAGES, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    prompt = tokenizer.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True)
    before = ids(tokenizer, prompt)
    inside = ids(tokenizer, MESSAGES[1]["content"] + "<|im_end|>")
    after = ids(tokenizer, "\n")
    assert out["input_ids"] == before + inside + after
    assert out["assistant_masks"] == [0] * len(before) + [1] * len(inside) + [0] * len(after)
    assert inside[-1] == tokenizer.convert_tokens_to_ids(EOS_TOKEN)


def test_assistant_mask_multi_turn(tokenizer):
    messages = [*MESSAGES, {"role": "user", "content": "And 2 more?"}, {"role": "assistant", "content": "14"}]
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    expected = MESSAGES[1]["content"] + "<|im_end|>" + "14<|im_end|>"
    assert tokenizer.decode(masked) == expected


def test_trl_accepts_the_template(tokenizer):
    assert has_generation_markers(tokenizer.chat_template)
    assert is_chat_template_stop_token_trained(tokenizer)


def test_skip_special_tokens_drops_chat_markers(tokenizer):
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    decoded = tokenizer.decode(ids(tokenizer, text), skip_special_tokens=True)
    assert "<|" not in decoded and MESSAGES[1]["content"] in decoded


# --- determinism and ids ------------------------------------------------------------------------


def test_same_texts_same_vocab(tokenizer):
    again = train_tokenizer(make_corpus())
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_special_token_ids_and_vocab_size(tokenizer):
    assert tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2]
    assert 259 < len(tokenizer) <= 512
    with pytest.raises(ValueError):
        train_tokenizer(["x"], vocab_size=100)


def test_out_dir_saves(tmp_path):
    tok = train_tokenizer(make_corpus(50), vocab_size=300, out_dir=tmp_path)
    assert (tmp_path / "tokenizer.json").exists()
    assert ids(load_tokenizer(tmp_path), TEXTS[0]) == ids(tok, TEXTS[0])
