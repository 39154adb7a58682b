"""The prompt and tokenisation contract every stage shares.

:func:`build_prompt` is the one user message that training, annotation and evaluation send, so a model
is always scored on exactly the prompt it was trained with. :func:`encode_example` tokenises a prompt
and a solution the way the trainers do: the rendered prompt and the completion ``solution + eos``
*separately*, then concatenated, so a position annotated critical is a position the loss is put on.
"""

from __future__ import annotations

# The standard Qwen-Math instruction.
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
PROMPT_TEMPLATE = "{question}\n" + BOXED_INSTRUCTION.replace("{}", "{{}}")


def build_prompt(question: str) -> list[dict[str, str]]:
    """The one user message every stage sends: the question, then the boxed-answer instruction."""
    return [{"role": "user", "content": PROMPT_TEMPLATE.format(question=question.strip())}]


def encode_example(tokenizer, prompt_messages, solution: str):
    """``(prompt_ids, completion_ids, offsets)``; offsets are character spans of completion tokens.

    Raises when tokenising ``solution + eos`` is not ``tokens(solution) + [eos]``: the offsets would
    then point at the wrong characters.
    """
    prompt_text = tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(solution + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    enc = tokenizer(solution, return_offsets_mapping=True, add_special_tokens=False)
    if completion_ids != enc["input_ids"] + [tokenizer.eos_token_id]:
        raise ValueError("tokenising solution + eos does not append exactly one eos token to the solution")
    offsets = [tuple(span) for span in enc["offset_mapping"]] + [(len(solution), len(solution))]
    return prompt_ids, completion_ids, offsets
