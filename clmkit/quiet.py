"""Messages of the libraries that are known to be harmless here, silenced by their exact text; every other warning
is kept. Imported with clmkit, before the libraries log anything."""

import logging
import warnings

# (logger, the text a harmless message contains), each with why it is harmless
HARMLESS = [
    # Transformers imports torchao (the 8-bit AdamW's library) when it is installed; on a machine without CUDA, or
    # with another torch than its wheel was built for, torchao fails to load its own CUDA kernels, which the
    # optimizer does not use.
    ("torchao", "Failed to load "),
    # torch's notice to torchao's authors about enum registration, on every import of torchao.
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported"),
    # DeepSpeed on a machine without a GPU, which --use_cpu asks for.
    ("DeepSpeed", "Setting accelerator to CPU"),
    # DeepSpeed's warmup scheduler is read for the first logged learning rate before its first step.
    ("DeepSpeed", "Attempting to get learning rate from scheduler before it has started"),
    # Under DeepSpeed the Trainer gives accelerate an accumulation of 1 and DeepSpeed's config holds the flag's value
    # (the input checks refuse a config that disagrees with --gradient_accumulation_steps).
    ("accelerate.accelerator", "Gradient accumulation steps mismatch: GradientAccumulationPlugin has 1,"),
]


class _DropHarmless(logging.Filter):
    def __init__(self, texts):
        super().__init__()
        self.texts = texts

    def filter(self, record):
        message = record.getMessage()
        return not any(text in message for text in self.texts)


def silence_known_noise():
    by_logger = {}
    for name, text in HARMLESS:
        by_logger.setdefault(name, []).append(text)
    for name, texts in by_logger.items():
        logging.getLogger(name).addFilter(_DropHarmless(texts))
    # torchao's 8-bit optimizer state, compiled by torch: a notice to torchao's authors about caching.
    warnings.filterwarnings("ignore", message=r"OptimState8bit does not implement _stable_hash_for_caching")
    # torch 2.13 renamed the collectives DeepSpeed's ZeRO-3 calls (all_gather_into_tensor, reduce_scatter_tensor):
    # a notice to DeepSpeed's authors, three times a run.
    warnings.filterwarnings("ignore", category=FutureWarning,
                            message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated")


silence_known_noise()


def settle_log_level(training_args):
    """--log_level (and --log_level_replica) for Transformers' and datasets' loggers from the start, as upstream
    run_clm.py sets them: the Trainer would set them only once it is built, after the model has loaded."""
    import datasets
    import transformers

    level = training_args.get_process_log_level()
    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(level)
