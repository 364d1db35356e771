"""How an execution strategy is applied to a built module: the module gets a subclass.

The way Detectron2's ``convert_frozen_batchnorm`` and its export code swap modules, a strategy
changes how a module runs, never what it computes or holds: the module keeps its identity, its
parameters, buffers and ``state_dict`` keys; only its class becomes ``Strategy + original class``
(created once per pair), whose ``forward`` (or another method) does the same computation another
way and defers to the original where it does not apply. Strategies stack (autocast over
channels-last, say) and are removed by :func:`remove_strategies`.

Export always sees the plain module, and never changes the eager one: ``torch.jit.script`` of a
module with a strategy compiles a plain deep copy of it (``__prepare_scriptable__``), and the
strategies step aside while ``torch.jit.trace`` runs. TorchScript puts what a child's
``__prepare_scriptable__`` returns into its parent's module dict, so :func:`mark_ancestors` gives
every module above a strategy :class:`ScriptsPlainCopy`, which makes the copy one level up:
scripting the model (or any part of it) leaves the user's model as it was.
"""

import copy
from typing import Dict, List, Tuple, Type

from torch import nn

__all__ = [
    "Strategy",
    "ScriptsPlainCopy",
    "apply_strategy",
    "mark_ancestors",
    "plain_class",
    "strategies_of",
    "remove_strategies",
]

# (strategy, class) -> the combined class, and back.
_COMBINED: Dict[Tuple[type, type], type] = {}
_PARTS: Dict[type, Tuple[type, type]] = {}


class Strategy:
    """Base of the strategy mixins. A subclass lists in ``_transient`` the attributes it rebuilds
    on demand (caches, workspaces, locks): they are not copied or pickled."""

    _transient: Tuple[str, ...] = ()

    def __getstate__(self):
        getstate = getattr(super(), "__getstate__", None)  # object.__getstate__ is Python >= 3.11
        state = dict(getstate() if getstate is not None else self.__dict__)
        for cls in type(self).__mro__:
            for name in getattr(cls, "_transient", ()):
                state.pop(name, None)
        return state

    def __reduce_ex__(self, protocol):
        # Pickle (and deepcopy) as the plain class plus the list of strategies: the combined
        # classes are made at run time, so pickle could not find them by name.
        return (
            _new_with_strategies,
            (plain_class(type(self)), tuple(strategies_of(self))),
            self.__getstate__(),
        )

    def __prepare_scriptable__(self):
        # A plain deep copy: TorchScript compiles it and puts it where this module was in the
        # module dict of the one it is scripting, never this module (the user's) itself.
        plain = remove_strategies(copy.deepcopy(self))
        prepare = getattr(plain, "__prepare_scriptable__", None)  # the plain class's, if any
        return prepare() if prepare is not None else plain


class ScriptsPlainCopy(Strategy):
    """On a module above a strategy (:func:`mark_ancestors`): changes nothing but scripting, which
    compiles a plain deep copy (see the module doc). Its combined class keeps the plain class's
    name (``type(model).__name__`` is still e.g. ``GeneralizedRCNN``): the user's detector itself
    gets it, and code that looks at that name must see no difference."""

    def _get_name(self) -> str:
        return plain_class(type(self)).__name__  # printed as the plain module


def _combined_class(strategy: type, cls: type) -> type:
    combined = _COMBINED.get((strategy, cls))
    if combined is None:
        plain = plain_class(cls)
        if strategy is ScriptsPlainCopy:
            name, module = plain.__name__, plain.__module__
        else:
            name, module = strategy.__name__ + plain.__name__, strategy.__module__
        combined = type(name, (strategy, cls), {"__module__": module, "__qualname__": name})
        _COMBINED[(strategy, cls)] = combined
        _PARTS[combined] = (strategy, cls)
    return combined


def _new_with_strategies(cls: type, strategies: Tuple[type, ...]) -> nn.Module:
    """An empty instance of ``cls`` with ``strategies``; pickle and copy then set its state."""
    module = cls.__new__(cls)
    for strategy in strategies:
        module.__class__ = _combined_class(strategy, type(module))
    return module


def apply_strategy(module: nn.Module, strategy: Type[Strategy], **attributes) -> nn.Module:
    """Give ``module`` the class ``strategy + type(module)`` in place and set ``attributes`` on it
    (the strategy's settings); a strategy already applied is not applied twice. Returns
    ``module``."""
    if not isinstance(module, strategy):
        module.__class__ = _combined_class(strategy, type(module))
    for name, value in attributes.items():
        setattr(module, name, value)
    return module


def plain_class(cls: type) -> type:
    """``cls`` without the strategies applied to it."""
    while cls in _PARTS:
        cls = _PARTS[cls][1]
    return cls


def strategies_of(module: nn.Module) -> List[type]:
    """The strategies applied to ``module``, first applied first."""
    out, cls = [], type(module)
    while cls in _PARTS:
        strategy, cls = _PARTS[cls]
        out.append(strategy)
    return out[::-1]


def _make_plain(module: nn.Module) -> None:
    if type(module) in _PARTS:
        state = Strategy.__getstate__(module)
        module.__class__ = plain_class(type(module))
        module.__dict__.clear()
        module.__dict__.update(state)


def mark_ancestors(model: nn.Module) -> nn.Module:
    """:class:`ScriptsPlainCopy` on every module of ``model`` (``model`` included) that has no
    strategy but holds a module with one (in place); returns ``model``."""
    modules = dict(model.named_modules())
    for name, module in list(modules.items()):
        if type(module) not in _PARTS or not name:
            continue
        parts = name.split(".")
        for i in range(len(parts)):
            ancestor = modules[".".join(parts[:i])]
            if type(ancestor) not in _PARTS:
                apply_strategy(ancestor, ScriptsPlainCopy)
    return model


def remove_strategies(model: nn.Module) -> nn.Module:
    """Every submodule of ``model`` back to its plain class, transient state dropped (in place)."""
    for module in model.modules():
        _make_plain(module)
    return model
