"""Generated command-line override groups (experiments.option_groups)."""

import dataclasses
from typing import Literal, Optional

import pytest
import tyro

from experiments import option_groups


@dataclasses.dataclass(frozen=True)
class Opts:
    """Toy options.

    Attributes:
      beta: window fraction.
      mode: "a" or "b".
      start: first round; None disables.
      lr: learning rate. momentum: SGD momentum.
      widths: layer widths.
    """

    beta: float = 0.2
    mode: Literal["a", "b"] = "a"
    start: Optional[int] = 1
    lr: float = 0.01
    momentum: float = 0.0
    widths: tuple[int, int] = (4, 2)
    hidden_object: object = None

    @classmethod
    def preset(cls, variant="paper"):
        return cls() if variant == "paper" else cls(mode="b", start=None)


def test_attribute_docs_parses_google_style():
    docs = option_groups.attribute_docs(Opts)
    assert docs["beta"] == "window fraction."
    assert docs["lr"] == "learning rate." and docs["momentum"] == "SGD momentum."


def test_override_group_parses_and_resolves():
    group = option_groups.override_class(Opts, "OptsOverrides", exclude=("lr",))
    names = {f.name for f in dataclasses.fields(group)}
    assert names == {"beta", "mode", "start", "momentum", "widths"}  # no lr, no object field

    @dataclasses.dataclass(frozen=True)
    class Cli:
        o: group = group()

    parsed = tyro.cli(Cli, args=["--o.beta", "0.1", "--o.start", "none", "--o.widths", "8", "3"])
    assert option_groups.overrides_dict(parsed.o) == {"beta": 0.1, "start": None, "widths": (8, 3)}
    resolved = option_groups.resolve(Opts, "reference", parsed.o, lr=0.5)
    assert resolved == Opts(beta=0.1, mode="b", start=None, lr=0.5, widths=(8, 3))
    # Unset flags keep the variant preset's values.
    assert option_groups.resolve(Opts, "reference", group()) == Opts.preset("reference")
    assert option_groups.resolve(Opts, "paper", tyro.cli(Cli, args=["--o.start", "4"]).o).start == 4
    with pytest.raises(SystemExit):
        tyro.cli(Cli, args=["--o.mode", "c"])
