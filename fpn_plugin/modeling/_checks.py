"""Argument checks shared by the modeling components: each error names the config key and the
fix."""

from typing import Iterable, Sequence

__all__ = ["check_choice", "check_in_features"]


def check_choice(value: str, choices: Iterable[str], key: str) -> None:
    """``ValueError`` naming the config ``key`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{key} = {value!r} is not supported; use one of {list(choices)}.")


def check_in_features(in_features: Sequence[str]) -> None:
    """``ValueError`` for an empty ``MODEL.FPN.IN_FEATURES``."""
    if not in_features:
        raise ValueError(
            "MODEL.FPN.IN_FEATURES is empty; list the bottom-up outputs, e.g. ['res2', 'res3', "
            "'res4', 'res5']."
        )
