"""The pieces of the fine-tuning tool, one home for each piece of logic; machine.py and errors.py are the bottom.

Imports sit at the top of each module, except deepspeed, datasets and matplotlib: each takes seconds to import and
many runs never need it (--plan, a refused input, a run without DeepSpeed), so they are imported where they are used.
"""

from . import quiet  # noqa: F401  (first: the libraries log from their own imports on)
