"""GRPO under a launcher: ``cft-rl grpo`` for ``accelerate launch`` and ``torchrun``.

    accelerate launch --num_processes 2 scripts/grpo.py --config recipes/toy/grpo/toy.yaml [--field v]

Every flag is a field of ``GRPORunConfig``, TRL's ``ModelConfig`` or ``ScriptArguments``; see
:mod:`cft_rl.grpo.run`. On a CPU-only machine, several processes need ``--multi_gpu`` (the torchrun
launcher) and ``--use_cpu true``: accelerate's own ``--cpu`` multi-process launch goes through MPI.
"""

import sys

from cft_rl.grpo.run import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
