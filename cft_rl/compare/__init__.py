"""`cft-rl compare`: training runs' curves aligned and analysed, and the figures and report."""
