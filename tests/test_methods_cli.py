"""``--method`` and the methods' option groups on the command line."""

import pytest

from experiments import run
from experiments.config import ConfigError, validate


def _resolve(*args):
    return validate(run.parse(list(args) + ["--preset", "tiny"]))


def test_method_presets_and_groups_resolve():
    r = _resolve("--method", "c2fpl", "--variant", "reference", "--c2fpl.alpha", "none",
                 "--train.lr-milestones", "3", "5")
    assert r.method_options.split_rule == "low_likelihood" and r.method_options.alpha is None
    # the engine's reference preset, then C2FPL's training values, then the user's flags
    assert (r.train.lr, r.train.nesterov, r.train.rounds, r.train.lr_milestones) == (0.001, True, 20, (3, 5))
    assert r.model.attention is False and r.train.plr_start_round is None
    rec = r.record()
    assert rec["run"]["method"] == "c2fpl" and rec["run"]["overrides"]["c2fpl"] == {"alpha": None}
    assert rec["resolved"]["pseudo_labels"] is None and rec["resolved"]["method_options"]["eta"] == 1.0
    g = _resolve("--method", "gcl", "--gcl.gen-hidden", "64", "32")
    assert g.model is None and g.method_options.gen_hidden == (64, 32) and g.train.optimizer == "adam"
    assert str(g.workdir).startswith("runs/gcl-ucf-random-5-collaborative")
    c = _resolve()
    assert c.method_options is None and c.train.plr_start_round == 1 and "clap" not in str(c.workdir)


@pytest.mark.parametrize("args, message", [
    (["--method", "gcl", "--model.dropout-rate", "0.1"], "--model.* applies to the scorer"),
    (["--gcl.threshold-k", "2"], "--gcl.* options apply to --method gcl, not --method clap"),
    (["--method", "c2fpl", "--pl.beta", "0.1"], "its pseudo-label options are --c2fpl"),
    (["--method", "gcl", "--weak-labels", "1"], "no video labels to replace"),
    (["--method", "c2fpl", "--train.plr-start-round", "1"], "no pseudo-label refinement"),
    (["--method", "gcl", "--null-model", "local"], "--null-model applies to --method clap"),
    (["--method", "c2fpl", "--variant", "reference", "--train.momentum", "0"], "nesterov"),
])
def test_method_flags_of_other_methods_are_errors(args, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace(".", r"\.")):
        _resolve(*args)
