"""Argument checks shared by the models: one message format for every constructor."""


def positive_int(value, name: str, who: str = "") -> int:
    """`value` if it is an int >= 1 (not a bool), else ValueError naming `who`.`name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        prefix = f"{who}: " if who else ""
        raise ValueError(f"{prefix}{name} must be a positive integer, got {value!r}")
    return value
