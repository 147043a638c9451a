"""One type check for configuration values (gcross_core.config.coerce), used by YAML configs and node
parameters alike: what it accepts, converts and refuses, and that refusals are ConfigErrors naming the key."""
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest

from gcross_core.config import coerce, from_dict
from gcross_core.errors import ConfigError, InputError


@pytest.mark.parametrize("value, tp, expected", [
    (3, float, 3.0), (2.5, float, 2.5), (3, int, 3), (3.0, int, 3), (True, bool, True), ("a", str, "a"),
    (None, Optional[int], None), (2, Optional[float], 2.0), ([1, 2], Tuple[int, int], (1, 2)),
    ([1, 2, 3], Tuple[float, ...], (1.0, 2.0, 3.0)),
])
def test_coerce_converts_what_fits(value, tp, expected):
    out = coerce(value, tp, "k")
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("value, tp, words", [
    (2.5, int, "must be an integer"), (True, int, "must be an integer"), (True, float, "must be a number"),
    ("1", float, "must be a number"), (1, bool, "must be true or false"), (3, str, "must be a string"),
    ([1], Tuple[int, int], "must have 2 items"), ("x", Tuple[int, ...], "must be a list"),
])
def test_coerce_refuses_with_a_config_error_naming_the_key(value, tp, words):
    with pytest.raises(ConfigError, match=words) as err:
        coerce(value, tp, "train.key")
    assert str(err.value).startswith("train.key") and isinstance(err.value, InputError)


@dataclass(frozen=True)
class _Inner:
    steps: int = 1


@dataclass(frozen=True)
class _Outer:
    inner: _Inner = _Inner()
    rate: float = 1.0


def test_from_dict_names_the_dotted_key_of_a_value_of_the_wrong_type():
    assert from_dict(_Outer, {"inner": {"steps": 4.0}, "rate": 2}) == _Outer(_Inner(4), 2.0)
    with pytest.raises(ConfigError, match=r"inner\.steps must be an integer, got 'many'"):
        from_dict(_Outer, {"inner": {"steps": "many"}})
