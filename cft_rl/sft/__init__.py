"""Token-selective SFT: the selection strategies, the selective loss and the trainer.

:class:`SelectionError` is the stage's error, here so that the selection and the entropy scorer it
calls (:mod:`cft_rl.sft.entropy`) both raise it without importing each other.
"""


class SelectionError(ValueError):
    """Bad selection input; the message names the row or setting and says how to fix it."""
