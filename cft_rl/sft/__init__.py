"""Token-selective SFT: the selection strategies, the selective loss and the trainer."""
