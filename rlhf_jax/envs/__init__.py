"""Multi-turn RL's other side: environments that answer the policy's turns (environments.py),
tools in TRL's convention and the tagged call format (tools.py), and the built-in tools: a
calculator (calculator.py) and Python run in a sandbox (sandbox.py)."""
