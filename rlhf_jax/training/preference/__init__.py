"""Training on preference pairs: the pairs' batches, the reward model (Bradley-Terry) and DPO."""
