"""What the trainer relies on in Transformers and Accelerate beyond their public hooks, named so that a release that
changes it fails here, by name, rather than as a wrong number in a run. Each entry says what the override does;
the e2e tests check the behaviour (the fp16 mode's clipping and skipped steps, a tied head's resume, DDP's bucket
views). Everything else the trainer does goes through public hooks: compute_loss, training_step, log,
evaluation_loop, create_optimizer, get_optimizer_cls_and_kwargs, train and callbacks."""

import inspect

import pytest
import torch
from accelerate.optimizer import AcceleratedOptimizer
from transformers import Trainer

from clmkit.trainer import ClmTrainer

# Trainer method: (the parameters ClmTrainer's override takes and passes on, why it is overridden)
PRIVATE_OVERRIDES = {
    "_clip_grad_norm": (["model"], "the fp16 mode's optimizer measures the norm in fp32 with the loss scale out"),
    "_get_grad_norm": (["model", "grad_norm"], "the same norm, for the logs"),
    "_issue_warnings_after_load": (["load_result"], "a tied LM head saved once is not a missing weight"),
    "_build_accelerator_args": (["kwargs"], "DDP's gradients as views into its buckets, one copy fewer"),
    "_prepare_for_training": (["max_steps", "train_dataloader", "resume_from_checkpoint"],
                              "DDP's gradients zeroed in place, so they stay those views"),
}


@pytest.mark.parametrize("name", sorted(PRIVATE_OVERRIDES))
def test_each_private_method_overridden_is_still_the_trainers_with_the_same_parameters(name):
    parameters, why = PRIVATE_OVERRIDES[name]
    assert hasattr(Trainer, name), f"Trainer.{name} is gone: {why} needs another way"
    theirs = [p for p in inspect.signature(getattr(Trainer, name)).parameters if p != "self"]
    ours = [p for p in inspect.signature(getattr(ClmTrainer, name)).parameters if p != "self"]
    assert theirs == ours == parameters, f"Trainer.{name}{theirs}: {why}"


def test_no_other_private_trainer_method_is_overridden():
    private = {name for name, value in vars(ClmTrainer).items() if name.startswith("_") and not name.startswith("__")
               and callable(value) and hasattr(Trainer, name)}
    assert private == set(PRIVATE_OVERRIDES)


def test_save_model_still_says_when_a_checkpoint_calls_it():
    """save_model(_internal_call=True) marks a checkpoint's write: its timer and the test hooks start there."""
    assert "_internal_call" in inspect.signature(Trainer.save_model).parameters


def test_accelerates_optimizer_reads_a_skipped_step_from_is_overflow():
    """The fp16 mode tells Accelerate's optimizer wrapper that it skipped a step (overflowed gradients) through
    _is_overflow, which step_was_skipped reads; the Trainer then leaves the learning-rate schedule where it was."""
    from accelerate import Accelerator

    Accelerator(cpu=True)  # the state the wrapper reads, as the Trainer's own accelerator sets it up
    weight = torch.nn.Parameter(torch.zeros(2))
    wrapped = AcceleratedOptimizer(torch.optim.SGD([weight], lr=0.1), device_placement=False)
    wrapped._is_overflow = True
    assert wrapped.step_was_skipped is True
    wrapped._is_overflow = False
    assert wrapped.step_was_skipped is False
