"""Critical-token annotation under a launcher: ``cft-rl annotate`` for ``accelerate launch`` and ``torchrun``.

    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml --num_processes 8 \\
        scripts/annotate.py --config recipes/Qwen2.5-Math-1.5B/annotate.yaml [--flag v]

Every flag is an ``AnnotateConfig`` field (``--max-new-tokens 512``); see :mod:`cft_rl.annotate.job`. Each
process annotates the rows of its shard (``$RANK`` of ``$WORLD_SIZE``, set by the launcher); shard 0
waits for the others, then merges them into ``OUT/dataset`` and ``OUT/summary.json``.
"""

import sys

from cft_rl.annotate.job import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
