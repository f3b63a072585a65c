"""Typed settings: dataclass fields with a type, a default and a help line, set by name from
strings (`gencore train RECIPE --set key=value`) or Python values, with an error that names the
setting, the value and what is valid.

    @dataclass
    class Example:
        lr: float = setting(1e-3, "learning rate")
        clip: Optional[float] = setting(1.0, "max gradient norm; None: no clipping")
        norm: str = setting("layernorm", "normalisation", choices=("layernorm", "rmsnorm"))
        model: GPTConfig = setting(help="the model", factory=GPTConfig)   # a nested group

    s = apply(Example(), {"lr": "3e-3", "n_layer": "2"})    # nested fields by their own name
    flat(s)                                                  # {"lr": 0.003, "clip": 1.0, ...}

Settings are the leaves of a tree of dataclasses: a field whose value is a dataclass is a group,
and its fields are settings under their own (flat) names, which must be unique in the tree. A
field marked `run=True` is not a setting: the run fills it (a TrainerConfig's out_dir, a model's
vocab_size from its tokenizer). `None` means "off" (or "not given": the help says which); it is
written `none` on the command line. Types: bool, int, float, str, and Optional of those. Values are
checked twice: here against the type and `choices`, then by the dataclass's own `__post_init__`
(its ranges and cross-field rules), which `dataclasses.replace` runs again for every change.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING
from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

__all__ = ["setting", "Spec", "specs", "parse", "apply", "flat", "describe"]

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def setting(default: Any = MISSING, help: str = "", *, choices: Optional[Sequence] = None,
            factory: Any = MISSING, run: bool = False) -> Any:
    """A dataclass field that is a setting: its default (or `factory` for a nested group or a
    mutable default), one line of help, and optionally the values it may take. `run=True`: a
    field the run fills, not a setting (hidden from --set, --help and run.json)."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "run": run}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Spec(NamedTuple):
    """One setting: where it lives in the tree, its type, its current value, help, choices."""
    name: str
    path: Tuple[str, ...]
    type: Any
    value: Any
    help: str
    choices: Optional[tuple]


def _hints(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _base(tp) -> Tuple[Any, bool]:
    """(the plain type, whether None is allowed) of an annotation."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
        return tp, type(None) in typing.get_args(tp)
    return tp, False


def specs(settings: Any) -> Dict[str, Spec]:
    """Every setting of the tree rooted at `settings` (a dataclass instance), by name, with its
    value in `settings` as the default."""
    out: Dict[str, Spec] = {}

    def walk(obj, path):  # a group's own settings first, then its groups
        hints = _hints(type(obj))
        fields = [f for f in dataclasses.fields(obj) if not f.metadata.get("run")]
        for f in fields:
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                continue
            if f.name in out:
                raise TypeError(f"settings {type(settings).__name__}: {f.name!r} is declared twice "
                                f"({'.'.join(out[f.name].path) or 'top'} and {'.'.join(path) or 'top'})")
            out[f.name] = Spec(f.name, path, hints[f.name], value, f.metadata.get("help", ""),
                               f.metadata.get("choices"))
        for f in fields:
            if dataclasses.is_dataclass(getattr(obj, f.name)):
                walk(getattr(obj, f.name), path + (f.name,))
    walk(settings, ())
    return out


def type_name(tp) -> str:
    base, optional = _base(tp)
    name = getattr(base, "__name__", str(base))
    return f"{name} or none" if optional else name


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def parse(spec: Spec, value: Any, who: str = "") -> Any:
    """`value` (a string as typed on the command line, or a Python value: from code or run.json)
    as the setting's type. ValueError naming the setting, the value and what is valid."""
    base, optional = _base(spec.type)
    valid = (f"choose one of {list(spec.choices)}" if spec.choices else f"expected {type_name(spec.type)}")

    def bad(what: str = "is not valid"):
        return ValueError(f"{who}{spec.name}={value!r} {what}; {valid} (default {spec.value!r})")

    v = value
    if isinstance(v, str) and base is not str:
        text = v.strip()
        if optional and text.lower() in ("none", "null"):
            v = None
        elif base is bool:
            if text.lower() not in _TRUE + _FALSE:
                raise bad("is not a valid bool")
            v = text.lower() in _TRUE
        elif base in (int, float):
            try:
                v = base(text)
            except ValueError:
                raise bad(f"is not a valid {base.__name__}") from None
        else:
            raise TypeError(f"setting {spec.name}: unsupported type {spec.type!r}")
    elif isinstance(v, str) and optional and v.strip().lower() in ("none", "null"):
        v = None
    if v is None:
        if not optional:
            raise bad("may not be none")
        return None
    if base is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, base) or (base is not bool and isinstance(v, bool)):
        raise bad(f"is not {_a(base.__name__)}")
    if spec.choices is not None and v not in spec.choices:
        raise bad()
    return v


def apply(settings: Any, overrides: Mapping[str, Any], who: str = "") -> Any:
    """A copy of `settings` with `overrides` (setting name -> value, parsed by `parse`) applied
    through `dataclasses.replace`, so each group's own checks run on its new values. Unknown
    names raise ValueError listing the valid ones."""
    table = specs(settings)
    by_group: Dict[Tuple[str, ...], Dict[str, Any]] = {}
    for name, value in overrides.items():
        if name not in table:
            raise ValueError(f"{who}no setting {name!r}; valid settings: {', '.join(sorted(table))}")
        spec = table[name]
        by_group.setdefault(spec.path, {})[name] = parse(spec, value, who)

    def rebuild(obj, path):
        changes = dict(by_group.get(path, {}))
        for f in dataclasses.fields(obj):
            sub = getattr(obj, f.name)
            if dataclasses.is_dataclass(sub) and not f.metadata.get("run") and any(
                    p[:len(path) + 1] == path + (f.name,) for p in by_group):
                changes[f.name] = rebuild(sub, path + (f.name,))
        if not changes:
            return obj
        try:
            return dataclasses.replace(obj, **changes)
        except (ValueError, TypeError) as exc:  # the group's own checks (__post_init__)
            shown = " ".join(f"{k}={overrides[k]!r}" for k in by_group.get(path, {}))
            raise ValueError(f"{who}{shown + ': ' if shown else ''}{exc}") from None
    return rebuild(settings, ())


def flat(settings: Any) -> Dict[str, Any]:
    """name -> value of every setting (plain JSON values): what run.json keeps."""
    return {name: spec.value for name, spec in specs(settings).items()}


def describe(settings: Any, width: int = 100) -> str:
    """One line per setting, `name=default (type): help`, under a heading per group (the
    dataclass it is a field of): what `gencore train RECIPE --help` shows."""
    import functools
    import textwrap
    lines, group = [], None
    for name, spec in specs(settings).items():
        if spec.path != group:
            group = spec.path
            owner = type(functools.reduce(getattr, group, settings)).__name__
            lines.append(f"{'.'.join(group) + ': ' if group else ''}{owner}")
        kind = "|".join(map(str, spec.choices)) if spec.choices else type_name(spec.type)
        head = f"  {name}={'none' if spec.value is None else spec.value} ({kind})"
        lines.extend(textwrap.wrap(f"{head}: {spec.help}" if spec.help else head, width,
                                   subsequent_indent=" " * 6))
    return "\n".join(lines)
