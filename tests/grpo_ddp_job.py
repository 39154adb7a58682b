"""Two GRPO steps on the toy with scripted completions, for the one- vs two-process monitor test.

    python tests/grpo_ddp_job.py TOY_DIR OUT_JSON 12                                  # one process
    accelerate launch --multi_gpu --num_processes 2 tests/grpo_ddp_job.py TOY_DIR OUT_JSON 6

Completions come from a scripted ``rollout_func``: row r of a step's generation batch (counted across
processes) always gets the same completion, so both runs see the same samples and the same rewards,
and only the split across processes differs. With G=4 and 6 rows per process, the middle group of
each step is split between the two processes. The main process writes the log history to OUT_JSON.
"""

import json
import sys

import torch

from cft_rl.cpu import QUIET_CPU_RUN
from cft_rl.generation import render_prompts
from cft_rl.grpo.run import GRPORunConfig, build_trainer
from cft_rl.resume import end_processes
from cft_rl.toy.build import load_toy


def scripted_rollout(solutions: dict[str, tuple[str, str]]):
    """A ``rollout_func`` whose completions depend only on the row's global position and the step."""

    def rollout(prompts, trainer):
        tokenizer = trainer.processing_class
        first = trainer.accelerator.process_index * len(prompts)
        prompt_ids, completion_ids = [], []
        for i, (prompt, text) in enumerate(zip(prompts, render_prompts(tokenizer, prompts), strict=True)):
            solution, answer = solutions[prompt[-1]["content"]]
            row = first + i + 100 * trainer.state.global_step
            choices = [
                solution,  # correct
                solution.replace(f"\\boxed{{{answer}}}", f"\\boxed{{{int(answer) + 1}}}"),  # wrong answer
                solution.split(".")[0] + ".",  # no answer
                f"So the final answer is \\boxed{{{answer}}}.",  # correct, short
            ]
            completion = choices[(row * 7 + row // 3) % len(choices)] + tokenizer.eos_token
            prompt_ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
            completion_ids.append(tokenizer(completion, add_special_tokens=False)["input_ids"])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout


def main() -> None:
    toy_dir, out, per_device = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    model, tokenizer, data = load_toy(toy_dir)
    with torch.no_grad():  # sharpen the tiny, near-uniform model so token entropies spread out
        model.get_input_embeddings().weight.mul_(6)
    train = data["train"].select(range(24))
    solutions = {row["prompt"][-1]["content"]: (row["solution"], row["answer"]) for row in train}
    config = GRPORunConfig(
        output_dir=out + ".run",
        num_generations=4,
        per_device_train_batch_size=per_device,
        max_completion_length=128,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        **QUIET_CPU_RUN,
        reward_funcs=["math_reward", "format_reward"],
        reward_weights=[1.0, 0.5],
        log_completions=False,
        disable_tqdm=True,
        seed=0,
    )
    rollout = scripted_rollout(solutions)
    trainer = build_trainer(config, model, train, tokenizer=tokenizer, rollout_func=rollout)
    trainer.train()
    if trainer.accelerator.is_main_process:
        result = {"world_size": trainer.accelerator.num_processes, "log_history": trainer.state.log_history}
        with open(out, "w") as handle:
            json.dump(result, handle)
    end_processes()  # else a rank can abort at exit


if __name__ == "__main__":
    main()
