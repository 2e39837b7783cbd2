"""The parts every stage's trainer shares: the loop, the state, the optimiser, the guards, the compute clock, the jit helpers, run set-up and log-probs."""
