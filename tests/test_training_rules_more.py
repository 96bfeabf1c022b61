"""Training options that mean "none" keep that meaning (issue 21, item 13)."""

from __future__ import annotations

from reflectune.training.rules import make_config


def test_save_total_limit_zero_from_the_cli_keeps_every_checkpoint() -> None:
    """``--save-total-limit 0`` ("keep all") reaches the config as no limit, not the default 2."""
    assert make_config(save_total_limit=None).save_total_limit is None
    assert make_config(save_total_limit=3).save_total_limit == 3
    assert make_config().save_total_limit == 2
