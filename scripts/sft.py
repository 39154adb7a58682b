"""Token-selective SFT under a launcher: ``cft-rl sft`` for ``accelerate launch`` and ``torchrun``.

    accelerate launch --num_processes 2 scripts/sft.py --config recipes/toy/sft/critical.yaml [--field v]

Every flag is a field of ``SelectiveSFTConfig``, TRL's ``ModelConfig`` or ``ScriptArguments``; see
the trainer in :mod:`cft_rl.sft.trainer`, the job in :mod:`cft_rl.sft.run`. On a CPU-only machine, several processes need ``--multi_gpu`` (the torchrun
launcher) and ``--use_cpu true``: accelerate's own ``--cpu`` multi-process launch goes through MPI.
"""

import sys

from cft_rl.sft.run import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
