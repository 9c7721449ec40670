"""core.api.names: resource-name patterns parse what they should and refuse the rest precisely."""

from __future__ import annotations

import pytest

from simulacra_services.core import errors
from simulacra_services.core.api.names import MAX_NAME_CHARS, VERSION_NUMBER, NamePattern, invalid_name
from simulacra_services.core.errors import shown

MODEL_VERSION = NamePattern("models/{model}/versions/{version}", version=VERSION_NUMBER)
STATE = NamePattern("datasets/{dataset}[/versions/{version}]", version=rf"{VERSION_NUMBER}|latest")


def test_parse_and_format_round_trip() -> None:
    assert MODEL_VERSION.parse("models/mnist-cvae/versions/3") == {"model": "mnist-cvae", "version": "3"}
    assert MODEL_VERSION.format(model="mnist-cvae", version=3) == "models/mnist-cvae/versions/3"
    assert MODEL_VERSION.variables == ["model", "version"]


def test_optional_parts() -> None:
    assert STATE.parse("datasets/cars") == {"dataset": "cars", "version": None}
    assert STATE.parse("datasets/cars/versions/latest") == {"dataset": "cars", "version": "latest"}
    assert STATE.format(dataset="cars") == "datasets/cars"
    assert STATE.format(dataset="cars", version=None) == "datasets/cars"
    assert STATE.format(dataset="cars", version=2) == "datasets/cars/versions/2"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "models/mnist-cvae",
        "models/mnist-cvae/versions/0",  # versions start at 1
        "models/mnist-cvae/versions/03",
        "models/mnist-cvae/versions/1234567890123456789",  # beyond int64
        "models/Mnist/versions/1",  # upper case
        "models/1mnist/versions/1",  # starts with a digit
        "models/mnist/versions/1/",
        "/models/mnist/versions/1",
        "models/mnist/versions/1\n",
        "models/" + "a" * 64 + "/versions/1",  # id longer than 63
        "models/../versions/1",
        "models/a.b/versions/1",  # regex metacharacters in the template are literal
        "modelsXa/versions/1",
    ],
)
def test_malformed_names_are_invalid_name(name: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        MODEL_VERSION.parse(name, field="parent")
    error = caught.value
    assert error.reason == "INVALID_NAME"
    assert error.metadata["field"] == "parent"
    assert error.metadata["expected"] == "models/{model}/versions/{version}"


def test_an_id_of_63_characters_is_accepted() -> None:
    assert MODEL_VERSION.parse("models/" + "a" * 63 + "/versions/1")["model"] == "a" * 63


def test_long_names_are_refused_before_matching_and_echoed_cut() -> None:
    name = "models/" + "a" * (MAX_NAME_CHARS + 10)
    assert MODEL_VERSION.match(name) is None
    with pytest.raises(errors.InvalidArgument) as caught:
        MODEL_VERSION.parse(name)
    assert len(caught.value.metadata["name"]) <= 203
    assert len(caught.value.message) < 400


def test_shown_cuts_long_values_only() -> None:
    assert shown("abc") == "abc"
    assert shown("x" * 500) == "x" * 200 + "..."


def test_invalid_name_says_why() -> None:
    error = invalid_name("models/x", "models/{model}/versions/{version}", "name", "no version")
    assert error.reason == "INVALID_NAME" and "(no version)" in error.message


def test_template_errors_are_caught_at_definition() -> None:
    with pytest.raises(ValueError):
        NamePattern("models/{model}", version=VERSION_NUMBER)
    with pytest.raises(KeyError):
        MODEL_VERSION.format(model="m")
