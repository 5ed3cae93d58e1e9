"""lacme.core.record: the value classes that replace dataclasses on the start-up path."""

from __future__ import annotations

import copy

import pytest

from lacme.core.record import Factory, FrozenInstanceError, Record, fields, replace


class Point(Record):
    x: int
    y: int = 0
    tags: dict = Factory(dict)


class Plan(Record, frozen=False):
    name: str
    done: bool = False


def test_construction_by_position_keyword_and_default():
    assert Point(1).asdict() == {"x": 1, "y": 0, "tags": {}}
    assert Point(1, 2) == Point(x=1, y=2) == Point(y=2, x=1)
    assert Point(1).tags is not Point(1).tags  # a fresh default each time
    assert fields(Point) == ("x", "y", "tags") == Point.__match_args__


@pytest.mark.parametrize("args, kwargs, message", [
    ((), {}, "missing required argument: 'x'"),
    ((1, 2, {}, 4), {}, "takes 3 positional arguments but 4 were given"),
    ((1,), {"x": 2}, "multiple values for argument 'x'"),
    ((1,), {"z": 2}, "unexpected keyword argument 'z'"),
])
def test_bad_construction_is_a_type_error(args, kwargs, message):
    with pytest.raises(TypeError, match=message):
        Point(*args, **kwargs)


def test_frozen_equality_hash_repr():
    p = Point(1, 2)
    with pytest.raises(FrozenInstanceError):
        p.x = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.y
    assert p != Point(1, 3) and p != (1, 2, {})
    assert repr(p) == "Point(x=1, y=2, tags={})"
    assert hash(Point(1, 2, ())) == hash(Point(1, 2, ()))  # type: ignore[arg-type]
    assert copy.copy(p) == p and copy.deepcopy(p) == p


def test_replace_keeps_the_rest_and_refuses_unknown_fields():
    p = Point(1, 2)
    assert replace(p, y=5) == Point(1, 5) and p.y == 2
    with pytest.raises(TypeError):
        p.replace(z=1)


def test_mutable_records_assign_and_are_unhashable():
    plan = Plan("www")
    plan.done = True
    assert plan == Plan("www", True)
    with pytest.raises(TypeError):
        hash(plan)


def test_field_without_default_after_one_with_is_refused():
    with pytest.raises(TypeError, match="without a default"):
        class Bad(Record):  # noqa: F841
            a: int = 0
            b: int
