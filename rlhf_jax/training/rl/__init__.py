"""The RL stage: its static config and state, the rollout and the update, the iteration drivers (fused, host rewards, off-policy) and vmapped seeds."""
