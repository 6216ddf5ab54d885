"""The sample config and the README's config reference are generated from the schemas; these
tests fail when a committed copy drifts, or when the schema itself is incomplete."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from forwarders import BUILTIN_FORWARDERS
from pystatsd.config import build_config, forwarder_schema, main_schema
from pystatsd.config_docs import (
    REFERENCE_BEGIN,
    REFERENCE_END,
    render_reference,
    render_sample_config,
)

REPO = Path(__file__).resolve().parent.parent
REGENERATE = "regenerate with: python -m pystatsd.config_docs"


def test_shipped_config_is_the_generated_one() -> None:
    assert (REPO / "etc" / "pystatsd.conf").read_text() == render_sample_config(), REGENERATE


def test_readme_reference_is_the_generated_one() -> None:
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index(REFERENCE_BEGIN):readme.index(REFERENCE_END) + len(REFERENCE_END)]
    assert block + "\n" == render_reference(), REGENERATE


def test_shipped_config_means_the_defaults() -> None:
    shipped = yaml.safe_load((REPO / "etc" / "pystatsd.conf").read_text())
    assert build_config(shipped) == build_config({})


def all_schemas() -> Iterator[tuple[str, dict[str, Any]]]:
    yield "daemon", main_schema()
    for name in BUILTIN_FORWARDERS:
        yield f"forwarders.{name}", forwarder_schema(name)


def properties(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for key, sub in schema.get("properties", {}).items():
        yield f"{path}.{key}", sub
        yield from properties(sub, f"{path}.{key}")
        if isinstance(sub.get("items"), dict):
            yield from properties(sub["items"], f"{path}.{key}[]")


@pytest.mark.parametrize(("where", "schema"), list(all_schemas()), ids=lambda v: str(v)[:40])
def test_every_option_is_documented_and_its_default_valid(where: str,
                                                          schema: dict[str, Any]) -> None:
    for path, sub in properties(schema, where):
        assert sub.get("description"), f"{path} has no description"
        if "default" in sub:
            jsonschema.Draft202012Validator(sub).validate(sub["default"])
