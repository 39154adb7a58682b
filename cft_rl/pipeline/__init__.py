"""`cft-rl pipeline`: the recipe of the whole experiment, and its resumable run."""
