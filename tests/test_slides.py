"""The lecture deck: every figure it shows exists, every generated table matches results/."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DECK = ROOT / "slides" / "lora.md"


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("slides_build", ROOT / "slides" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slides() -> list[str]:
    text = DECK.read_text(encoding="utf-8")
    body = text.split("\n---\n", 1)[1]  # after the front matter
    return [s for s in re.split(r"\n---\n", body) if s.strip()]


def test_every_image_the_deck_shows_exists():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", DECK.read_text(encoding="utf-8"))
    assert len(images) >= 8
    missing = [p for p in images if not (DECK.parent / p).is_file()]
    assert not missing, f"{DECK.name} shows images that do not exist: {missing}"


def test_generated_tables_are_in_sync_with_the_results(build):
    text = DECK.read_text(encoding="utf-8")
    names = [m["name"] for m in build.BLOCK.finditer(text)]
    assert sorted(set(names)) == sorted(build.BLOCKS), "every generator used, none unknown"
    assert build.render(text) == text, "run: python slides/build.py"


def test_an_edited_number_is_caught(build):
    text = DECK.read_text(encoding="utf-8")
    tampered = text.replace("| lora |", "| lora | 99.9 |", 1)
    assert tampered != text and build.render(tampered) != tampered


def test_an_unknown_block_is_an_error(build):
    with pytest.raises(KeyError, match="nope"):
        build.render("<!-- generated:nope -->\nx\n<!-- /generated:nope -->")


def test_deck_size_and_speaker_notes():
    deck = slides()
    assert 20 <= len(deck) <= 30, len(deck)
    marker = re.compile(r"<!--\s*(/?generated:|_class:)")
    for s in deck:
        notes = [c for c in re.findall(r"<!--(.*?)-->", s, re.S) if not marker.match(f"<!--{c}")]
        assert notes, f"slide without speaker notes: {s.strip().splitlines()[0]}"
