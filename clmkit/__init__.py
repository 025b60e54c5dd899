"""Shared pieces of the GPT-2 fine-tuning tool: one home for each piece of logic."""
