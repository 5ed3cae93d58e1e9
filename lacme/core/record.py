"""Small value classes without the import-time cost of ``dataclasses``.

Pure.  ``class Point(Record): x: int; y: int = 0`` gives what the frozen
dataclasses of this package relied on: construction by position or keyword
with defaults (``Factory(callable)`` for a fresh default per instance),
equality and hashing over the fields, a repr, immutability, ``replace``
and ``asdict``.  ``class Plan(Record, frozen=False)`` is a mutable one
(unhashable, like a dataclass with ``eq`` and no ``frozen``).

Why not dataclasses: importing ``dataclasses`` pulls in ``inspect`` (and
``ast``, ``dis``, ``tokenize``...), and every decorated class compiles its
generated methods with ``exec``.  For the master's no-op renewal, which
imports about twenty such classes and then does a few milliseconds of work,
that was most of the run.  Here a class costs one ``__init_subclass__``
call; the methods are shared.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself is not imported at run time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    R = TypeVar("R", bound="Record")
    _T = TypeVar("_T")
else:
    def dataclass_transform(**_kwargs: object) -> object:
        return lambda cls: cls

_MISSING = object()


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record."""


class _Factory:
    """A default made afresh for each instance (see ``Factory``)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def Factory(make: Callable[[], _T]) -> _T:
    """A default made afresh for each instance: ``environ: dict = Factory(dict)``.

    Typed as returning what ``make`` returns, so that a type checker accepts
    it as the field's default; the instance holds the marker instead."""
    return _Factory(make)  # type: ignore[return-value]  # the marker stands in for the value


@dataclass_transform(frozen_default=True, field_specifiers=())
class Record:
    """Base class: annotated class attributes are the fields, in order."""

    _fields: tuple[str, ...] = ()
    _defaults: dict[str, Any] = {}
    _field_set: frozenset[str] = frozenset()
    _frozen: bool = True

    def __init_subclass__(cls, frozen: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 - inspect is too costly
        own = [name for name, kind in annotations.items()
               if not str(kind).startswith(("ClassVar", "typing.ClassVar"))]
        fields = tuple(dict.fromkeys((*cls._fields, *own)))
        defaults = dict(cls._defaults)
        for name in own:
            if name in cls.__dict__:
                defaults[name] = cls.__dict__[name]
            else:
                defaults.pop(name, None)
        seen_default = False
        for name in fields:
            if name in defaults:
                seen_default = True
            elif seen_default:
                raise TypeError(f"{cls.__name__}: field {name!r} without a default "
                                "follows one with a default")
        cls._fields, cls._defaults, cls._frozen = fields, defaults, frozen
        cls._field_set = frozenset(fields)
        setattr(cls, "__match_args__", fields)  # noqa: B010 - the field names are known only here
        if "__hash__" not in cls.__dict__:
            cls.__hash__ = Record._hash if frozen else None  # type: ignore[assignment]  # None: unhashable, as for mutable dataclasses

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields, name = self._fields, type(self).__name__
        if len(args) > len(fields):
            raise TypeError(f"{name}() takes {len(fields)} positional arguments "
                            f"but {len(args)} were given")
        if not args:
            values = kwargs  # this call's own dict
        else:
            values = dict(zip(fields, args, strict=False))  # fewer arguments than fields: defaults
            for key, value in kwargs.items():
                if key in values:
                    raise TypeError(f"{name}() got multiple values for argument {key!r}")
                values[key] = value
        if len(values) != len(fields) or not values.keys() <= self._field_set:
            values = self._complete(values)
        self.__dict__.update((field, values[field]) for field in fields)

    def _complete(self, values: dict[str, Any]) -> dict[str, Any]:
        name, defaults = type(self).__name__, self._defaults
        for key in values:
            if key not in defaults and key not in self._fields:
                raise TypeError(f"{name}() got an unexpected keyword argument {key!r}")
        for field in self._fields:
            if field not in values:
                default = defaults.get(field, _MISSING)
                if default is _MISSING:
                    raise TypeError(f"{name}() missing required argument: {field!r}")
                values[field] = default.make() if type(default) is _Factory else default
        return values

    @classmethod
    def _trusted(cls: type[R], values: dict[str, Any]) -> R:
        """An instance from ``values``: every field, in order, already checked."""
        obj = cls.__new__(cls)
        obj.__dict__.update(values)
        return obj

    def _values(self) -> tuple[Any, ...]:
        d = self.__dict__
        return tuple(d[field] for field in self._fields)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def _hash(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        d = self.__dict__
        inner = ", ".join(f"{field}={d[field]!r}" for field in self._fields)
        return f"{type(self).__qualname__}({inner})"

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if self._frozen:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        object.__delattr__(self, name)

    def replace(self: R, **changes: Any) -> R:
        """A copy with ``changes`` (field names; anything else is a TypeError)."""
        return type(self)(**{**self.asdict(), **changes})

    def asdict(self) -> dict[str, Any]:
        """The fields and their values, in order (not recursive)."""
        d = self.__dict__
        return {field: d[field] for field in self._fields}


def replace(obj: R, **changes: Any) -> R:
    """``obj.replace(**changes)``, spelt like ``dataclasses.replace``."""
    return obj.replace(**changes)


def fields(cls: type[Record] | Record) -> tuple[str, ...]:
    """The field names of a record class or instance, in order."""
    return cls._fields
