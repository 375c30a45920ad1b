"""The API reference (api.md) names every public module, and its chapter links resolve."""

import importlib
import pkgutil
import re
import sys
from pathlib import Path

import gradcourse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "_ext"))
import api_links  # noqa: E402  (the book's own Sphinx extension, _ext/api_links.py)

DOCUMENTED = re.findall(r"^\.\. automodule:: (\S+)$", (ROOT / "api.md").read_text(), re.M)


def test_every_public_module_of_the_package_is_documented():
    public = {
        f"gradcourse.{module.name}"
        for module in pkgutil.iter_modules(gradcourse.__path__)
        if not module.name.startswith("_")
    }
    assert public <= set(DOCUMENTED), sorted(public - set(DOCUMENTED))


def test_every_documented_module_imports():
    for name in DOCUMENTED:
        importlib.import_module(name)


def test_the_reference_is_in_the_table_of_contents():
    assert "- file: api" in (ROOT / "_toc.yml").read_text()


def test_a_chapter_number_becomes_a_link_to_its_page():
    text = api_links.link_chapters("Taught in: Chapter 9.")
    assert text == "Taught in: :doc:`Chapter 9 </chapters/09_monitoring_gradients>`."


def test_each_number_of_a_list_of_chapters_is_linked():
    text = api_links.link_chapters("(Chapters 3-5, 7 and 10)")
    assert text.count(":doc:") == 4
    assert ":doc:`5 </chapters/05_tied_embeddings_and_positions>`" in text


def test_code_spans_and_unknown_chapters_are_left_alone():
    assert api_links.link_chapters("``Chapter 9`` and Chapter 99") == (
        "``Chapter 9`` and Chapter 99"
    )


def test_every_chapter_file_has_a_link_target():
    chapters = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(api_links.CHAPTERS) == [int(path.name[:2]) for path in chapters]
