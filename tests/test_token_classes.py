"""Token classes (cft_rl.token_classes): one definition for the annotation summary and GRPO's entropy."""

import pytest
import torch

from cft_rl.token_classes import ENTROPY_CLASSES, entropy_class, token_class, token_class_table


@pytest.mark.parametrize(
    "token, cls",
    [
        ("7", "digit"),
        (" 42", "digit"),
        ("+", "operator"),
        (" =", "operator"),
        (" ×", "operator"),
        ("x", "operator"),
        (")", "operator"),
        ("\\boxed", "format"),
        ("{", "format"),
        ("}.", "format"),
        ("$", "format"),
        ("\n", "format"),
        ("  ", "format"),
        ("<|im_end|>", "format"),
        ("</s>", "format"),
        (" apples", "word"),
        (".", "word"),
        ("²", "word"),  # isdigit() is true for it, but it is not a plain digit
    ],
)
def test_token_class(token, cls):
    assert token_class(token) == cls


def test_entropy_classes_pool_digits_and_operators():
    tokens = ["3", " +", " the", "\\frac", "<|im_end|>", "12"]
    assert [entropy_class(t) for t in tokens] == ["numeric", "numeric", "word", "format", "format", "numeric"]


class _Tokenizer:
    """The two methods the table reads, over a made-up vocabulary (None: an id with no token)."""

    vocab = ["7", "Ġ+", "Ġapples", "\\boxed", None]

    def __len__(self):
        return len(self.vocab)

    def convert_ids_to_tokens(self, ids):
        return [self.vocab[i] for i in ids]

    def convert_tokens_to_string(self, tokens):
        return "".join(tokens).replace("Ġ", " ")


def test_token_class_table_indexes_every_id_and_pads_the_model_rows_as_format():
    table = token_class_table(_Tokenizer(), size=7)
    names = [ENTROPY_CLASSES[i] for i in table.tolist()]
    assert table.dtype == torch.int8
    assert names == ["numeric", "numeric", "word", "format", "format", "format", "format"]
