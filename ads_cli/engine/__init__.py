"""Model backends behind one interface (`base.Model`): local, OpenAI-compatible, LoRA, weights.

`roles.load_role` is the one place a backend is chosen."""
