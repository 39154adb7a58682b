"""Two SGD steps of selective SFT on the toy, for the one- vs two-process normalisation test.

    python tests/sft_ddp_job.py TOY_DIR OUT_JSON GRAD_ACCUM            # one process
    accelerate launch --cpu --num_processes 2 tests/sft_ddp_job.py TOY_DIR OUT_JSON 1

Each optimizer step sees the same four rows either way (sequential sampling: micro-batches 0 and 1
go to accumulation steps 0 and 1, or to ranks 0 and 1). The main process writes the logged losses
and a fingerprint of the trained weights to OUT_JSON.

First, every rank prepares the same rows for the ``entropy`` control and writes, to
OUT_JSON.rankN.json, how many forward passes its model ran and the weights it got: the scoring runs
on the main process alone, and every rank must still get the same weights.
"""

import json
import sys

import torch
from accelerate import PartialState

from cft_rl.cpu import QUIET_CPU_RUN
from cft_rl.resume import end_processes
from cft_rl.sft.selection import prepare_dataset
from cft_rl.sft.trainer import SelectiveSFTConfig, SelectiveSFTTrainer
from cft_rl.toy.build import load_toy


def main() -> None:
    toy_dir, out, grad_accum = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    model, tokenizer, data = load_toy(toy_dir)
    args = SelectiveSFTConfig(
        output_dir=out + ".run",
        strategy="numeric",
        per_device_train_batch_size=2,
        gradient_accumulation_steps=grad_accum,
        max_steps=2,
        optim="sgd",  # SGD keeps the loss scale in the update: Adam would hide a normalisation error
        learning_rate=0.5,
        lr_scheduler_type="constant",
        train_sampling_strategy="sequential",
        logging_steps=1,
        **QUIET_CPU_RUN,
        seed=0,
    )
    train = data["train"].select(range(8))
    _entropy_control(model, tokenizer, train, out)
    trainer = SelectiveSFTTrainer(model, args=args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    if trainer.accelerator.is_main_process:
        weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        # Tokens each micro-batch selects (rows 0-1, rows 2-3): unequal, so a per-device mean would be wrong.
        selected = [sum(w > 0 for w in row[1:]) for row in trainer.train_dataset["loss_weights"][:4]]
        result = {
            "selected_per_micro_batch": [selected[0] + selected[1], selected[2] + selected[3]],
            "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
            "weights_head": weights[:2000].tolist(),
            "world_size": trainer.accelerator.num_processes,
        }
        with open(out, "w") as handle:
            json.dump(result, handle)
    end_processes()  # else a rank can abort at exit


def _entropy_control(model, tokenizer, train, out: str) -> None:
    forwards = []
    hook = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    args = SelectiveSFTConfig(
        output_dir=out + ".entropy", strategy="entropy", selection_fraction=0.25, **QUIET_CPU_RUN
    )
    prepared, _ = prepare_dataset(train, tokenizer, args, model)
    hook.remove()
    rank = PartialState().process_index
    with open(f"{out}.rank{rank}.json", "w") as handle:
        json.dump({"forwards": len(forwards), "loss_weights": list(prepared["loss_weights"])}, handle)


if __name__ == "__main__":
    main()
