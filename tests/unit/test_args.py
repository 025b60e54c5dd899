"""run_clm.py's flags, parsed as the command parses them."""

from clmkit.args import parse_args


def test_gradient_checkpointing_on_by_default():
    _, _, on, _ = parse_args(["--output_dir", "x", "--do_train"])
    _, _, off, _ = parse_args(["--output_dir", "x", "--do_train", "--no_gradient_checkpointing"])
    assert on.gradient_checkpointing is True
    assert off.gradient_checkpointing is False
