"""What evaluates or samples a policy beside training it: evaluation against the reference, the frozen models (reference, reward scorer) and best-of-n."""
