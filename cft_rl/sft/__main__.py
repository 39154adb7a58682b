"""``python -m cft_rl.sft``: the SFT run as a process, e.g. under a launcher
(``accelerate launch -m cft_rl.sft --config ...``), which is how the pipeline starts it.

A package entry rather than ``-m cft_rl.sft.run``, which would run that module twice (once as
``__main__``, once when imported by name), with two copies of its classes.
"""

import sys

from cft_rl.sft.run import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
