"""The annotation-store's resource names, declared on core's NamePattern: every shape parses, and
malformed names are INVALID_NAME with the template they miss."""

from __future__ import annotations

import pytest

from simulacra_services.annotation.domain import names
from simulacra_services.core.errors import InvalidArgument


def test_every_shape_parses() -> None:
    assert names.parse_dataset("datasets/cats") == "cats"
    assert names.parse_state("datasets/cats") == names.StateName("cats", None)
    assert names.parse_state("datasets/cats/versions/latest") == names.StateName("cats", "latest")
    assert names.parse_version("datasets/cats/versions/12") == names.StateName("cats", "12")
    assert names.parse_item("datasets/cats/versions/3/items/a.b_c-1") == names.ItemName(names.StateName("cats", "3"), "a.b_c-1")
    assert names.parse_category("datasets/cats/categories/7") == names.CategoryName(names.StateName("cats"), 7)
    assert names.parse_job("datasets/cats/importJobs/0a1b", "importJobs") == ("cats", "0a1b")
    assert names.WORKING_ITEM_NAME.fullmatch("datasets/cats/items/x1")
    assert not names.WORKING_ITEM_NAME.fullmatch("datasets/cats/versions/1/items/x1")


@pytest.mark.parametrize(
    ("parse", "name", "expected"),
    [
        (names.parse_dataset, "datasets/Cats", "datasets/{dataset}"),
        (names.parse_dataset, "datasets/" + "a" * 64, "datasets/{dataset}"),
        (names.parse_version, "datasets/cats/versions/0", "datasets/{dataset}/versions/{version}"),
        (names.parse_version, "datasets/cats/versions/01", "datasets/{dataset}/versions/{version}"),
        (names.parse_state, "datasets/cats/versions/", "datasets/{dataset}[/versions/{version}]"),
        (names.parse_item, "datasets/cats/items/a..b", "datasets/{dataset}[/versions/{version}]/items/{item}"),
        (names.parse_item, "datasets/cats/items/.a", "datasets/{dataset}[/versions/{version}]/items/{item}"),
        (names.parse_category, "datasets/cats/categories/0", "datasets/{dataset}[/versions/{version}]/categories/{category}"),
        (lambda n: names.parse_job(n, "exportJobs"), "datasets/cats/importJobs/j1", "datasets/{dataset}/exportJobs/{job}"),
    ],
)
def test_malformed_names_are_invalid_name_with_the_shape(parse, name: str, expected: str) -> None:  # noqa: ANN001
    with pytest.raises(InvalidArgument) as caught:
        parse(name)
    assert caught.value.reason == "INVALID_NAME" and caught.value.metadata["expected"] == expected


def test_a_category_id_beyond_int32_is_invalid_name_and_a_long_name_is_cut() -> None:
    with pytest.raises(InvalidArgument) as caught:
        names.parse_category("datasets/cats/categories/2147483648")
    assert caught.value.reason == "INVALID_NAME"
    with pytest.raises(InvalidArgument) as caught:
        names.parse_dataset("datasets/" + "a" * 10_000)
    assert len(caught.value.metadata["name"]) < 1000
