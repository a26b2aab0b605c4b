"""Command-line override groups generated from the library's option dataclasses.

Every field of an options dataclass (``PseudoLabelOptions``, ``ModelOptions``,
``TrainOptions``) becomes an optional flag of a nested tyro group, e.g.
``--pl.beta 0.1`` or ``--train.lr 0.05``. A flag left at ``None`` keeps the
value of the ``--variant`` preset, so ``--variant reference --pl.beta 0.1`` is
"the released code, but with β = 0.1". Fields whose own type allows ``None``
(e.g. ``plr_start_round``) accept the word ``none`` to set ``None``.

The groups are generated, not hand-written, so a new option in the library is
a new flag here without any change.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Annotated, Any, Literal, Optional, Union

import tyro

#: The word that sets a ``None``-able option to ``None`` on the command line.
NONE_WORD = "none"
_SCALARS = (bool, int, float, str)


def _is_cli_type(tp: Any) -> bool:
    """Scalars, literals, optionals and tuples of those (what a flag can carry)."""
    if tp in _SCALARS or tp is type(None):
        return True
    origin = typing.get_origin(tp)
    if origin is Literal:
        return True
    if origin in (Union, types.UnionType):
        return all(_is_cli_type(a) for a in typing.get_args(tp))
    if origin is tuple:
        return all(a is Ellipsis or _is_cli_type(a) for a in typing.get_args(tp))
    return False


def _allows_none(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def _without_none(tp: Any) -> Any:
    args = tuple(a for a in typing.get_args(tp) if a is not type(None))
    return args[0] if len(args) == 1 else Union[args]  # type: ignore[return-value]


def attribute_docs(cls: type) -> dict[str, str]:
    """Field descriptions from a Google-style ``Attributes:`` docstring section.

    Handles ``a, b: text`` entries and several ``name: text.`` entries on one line.
    """
    doc = cls.__doc__ or ""
    if "Attributes:" not in doc:
        return {}
    section = doc.split("Attributes:", 1)[1]
    out: dict[str, str] = {}
    current: list[str] | None = None
    names: list[str] = []
    indent = None
    for line in section.splitlines():
        if not line.strip():
            continue
        lead = len(line) - len(line.lstrip())
        if indent is None:
            indent = lead
        if lead < indent:
            break
        # "name: text" or "a, b: text" or "a: text. b: text" lines of the same indent.
        m = re.match(r"^\s*([A-Za-z_][\w]*(?:\s*,\s*[A-Za-z_][\w]*)*)\s*:\s*(.*)$", line)
        if lead == indent and m:
            names = [n.strip() for n in m.group(1).split(",")]
            current = [m.group(2).strip()]
            for n in names:
                out[n] = ""
        elif current is not None:
            current.append(line.strip())
        if current is not None:
            for n in names:
                out[n] = " ".join(current)
    # Split "lr: text. momentum: text" into separate entries.
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    for name in list(out):
        pieces = re.split(r"(?<=\.)\s+([A-Za-z_]\w*):\s", out[name])
        if len(pieces) > 1 and all(p in fields for p in pieces[1::2]):
            out[name] = pieces[0]
            for other, text in zip(pieces[1::2], pieces[2::2]):
                out.setdefault(other, text)
                if not out[other]:
                    out[other] = text
    return out


def _show(value: Any) -> str:
    """A value as typed on the command line (``None`` as the word ``none``)."""
    if value is None:
        return NONE_WORD
    if isinstance(value, tuple):
        return " ".join(_show(v) for v in value)
    return str(value)


def _metavar(tp: Any) -> str:
    """What a flag takes, e.g. ``FLOAT``, ``{sgd,adam}``, ``INT|none``."""
    if _allows_none(tp):
        return f"{_metavar(_without_none(tp))}|{NONE_WORD}"
    if tp is bool:
        return "{True,False}"
    if tp in _SCALARS:
        return tp.__name__.upper()
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
    if origin is tuple:
        return " ".join(_metavar(a) for a in typing.get_args(tp) if a is not Ellipsis)
    return "VALUE"


def _preset(cls: type, variant: str):
    preset = getattr(cls, "preset", None)
    return preset(variant) if callable(preset) else cls()


def override_class(cls: type, name: str, *, exclude: tuple[str, ...] = (),
                   variants: tuple[str, ...] = ("paper", "reference")) -> type:
    """A frozen dataclass of optional overrides for ``cls``'s fields.

    Args:
      cls: an options dataclass, optionally with ``preset(variant)``.
      name: class name of the generated group.
      exclude: fields set elsewhere (top-level flags).
      variants: presets whose values the help text shows.
    """
    hints = typing.get_type_hints(cls, include_extras=False)
    docs = attribute_docs(cls)
    presets = {v: _preset(cls, v) for v in variants}
    fields = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude or f.name.startswith("_"):
            continue
        tp = hints[f.name]
        if not _is_cli_type(tp):
            continue
        if _allows_none(tp):
            flag_type = Optional[Union[_without_none(tp), Literal["none"]]]
        else:
            flag_type = Optional[tp]
        values = {v: getattr(p, f.name) for v, p in presets.items()}
        shown = [_show(x) for x in values.values()]
        if len(set(shown)) == 1:
            hint = f"(default: {shown[0]}, from --variant)"
        else:
            hint = "(default from --variant: " + ", ".join(f"{v} {_show(x)}" for v, x in values.items()) + ")"
        help_text = docs.get(f.name, "").strip()
        arg = tyro.conf.arg(help=help_text, help_behavior_hint=hint, metavar=_metavar(tp))
        fields.append((f.name, Annotated[flag_type, arg], dataclasses.field(default=None)))
    group = dataclasses.make_dataclass(name, fields, frozen=True)
    group.__doc__ = f"Overrides of {cls.__module__}.{cls.__qualname__} (unset = variant preset)."
    group.__module__ = __name__
    return group


def overrides_dict(group: Any) -> dict[str, Any]:
    """The set fields of an override group, with ``"none"`` mapped to ``None``."""
    out = {}
    for f in dataclasses.fields(group):
        value = getattr(group, f.name)
        if value is None:
            continue
        out[f.name] = None if value == NONE_WORD else value
    return out


def resolve(cls: type, variant: str, group: Any = None, **fixed: Any):
    """``cls.preset(variant)`` with the group's overrides and ``fixed`` values applied."""
    base = _preset(cls, variant)
    changes = overrides_dict(group) if group is not None else {}
    changes.update(fixed)
    return dataclasses.replace(base, **changes)
