"""The traits each attention class declares, and what is derived from them outside the tests: the
table of ``docs/attention.md`` and the help of ``visattn explain``."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import visattn
from visattn.attention import AttentionTraits, attention_traits
from visattn.cli import COMMANDS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "attention.md"


def _names(cell: str) -> tuple[str, ...]:
    """The backquoted names of a table cell, in order."""
    return tuple(re.findall(r"`([^`]+)`", cell))


def _traits_from_row(cells: list[str]) -> AttentionTraits:
    """A row of the traits table read back as :class:`AttentionTraits`."""
    at_init, maps, query_maps, softmax, output = cells
    identity = {"identity": True, "not the identity": False}.get(at_init)
    if identity is None:
        (identity,) = _names(re.fullmatch(r"identity before (`\w+`)", at_init).group(1))
    return AttentionTraits(
        identity_at_init=identity, maps_drawn=_names(maps), query_maps_drawn=_names(query_maps),
        has_softmax=softmax != "—", float32_weights=_names(softmax),
        output_in_autocast_dtype={"autocast's": True, "float32": False}[output],
    )


def documented_traits(text: str) -> dict[str, AttentionTraits]:
    """Name -> traits, from the table of the "Traits" section of ``docs/attention.md``."""
    section = text.split("\n## Traits\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| `")]
    return {_names(cells[0])[0]: _traits_from_row([c.strip() for c in cells[1:]]) for cells in rows}


def test_docs_table_is_the_declared_traits():
    documented = documented_traits(DOCS.read_text(encoding="utf-8"))
    assert list(documented) == visattn.list_attentions()
    for name, traits in documented.items():
        assert traits == attention_traits(name), name


def test_docs_table_reader_sees_a_wrong_row():
    text = DOCS.read_text(encoding="utf-8").replace("| `pam` | identity |", "| `pam` | not the identity |")
    assert documented_traits(text)["pam"] != attention_traits("pam")


@pytest.mark.parametrize("name", visattn.list_attentions())
def test_explain_help_names_every_drawable_module(name):
    traits = attention_traits(name)
    assert traits.maps_drawn or traits.query_maps_drawn  # every registered module draws
    assert re.search(rf"\b{name}\b", COMMANDS["explain"])
