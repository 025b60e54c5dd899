"""The pieces of the fine-tuning tool, one home for each piece of logic; machine.py and errors.py are the bottom.

Imports sit at the top of each module, except deepspeed, datasets and matplotlib: each takes seconds to import and
many runs never need it (--plan, a refused input, a run without DeepSpeed), so they are imported where they are used.
"""

import logging

# Transformers imports torchao (the library of the 8-bit AdamW) whenever it is installed. On a machine without
# CUDA, or with a newer torch than its wheel was built for, torchao logs failures to load its own CUDA kernels
# (which the optimizer does not use) and torch logs deprecation notices about it: only their errors are shown.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
