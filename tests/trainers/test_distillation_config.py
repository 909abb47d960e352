"""DistillationConfig takes its choices from hf_lite.losses, and HfArgumentParser turns them into flags."""

from __future__ import annotations

import pytest
from transformers import HfArgumentParser

from hf_lite import losses
from trainers import DistillationConfig


def test_the_parser_offers_the_losses_vocabulary():
    parser = HfArgumentParser(DistillationConfig)
    choices = {a.dest: a.choices for a in parser._actions}
    assert tuple(choices["loss_type"]) == losses.LOSS_TYPES
    assert tuple(choices["hidden_loss"]) == losses.HIDDEN_LOSS_KINDS
    assert tuple(choices["attention_loss"]) == losses.ATTENTION_LOSS_KINDS
    argv = ["--output_dir", "out", "--loss_type", "tv", "--hidden_loss", "cosine", "--report_to", "none"]
    (args,) = parser.parse_args_into_dataclasses(argv)
    assert (args.loss_type, args.hidden_loss) == ("tv", "cosine")
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--output_dir", "out", "--loss_type", "kl"])
