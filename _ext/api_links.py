"""Link the chapters named in the package's docstrings, for the API reference (api.md).

Every docstring of ``gradcourse`` says which chapter teaches it ("Taught in: Chapter 9",
"(Chapters 3-5, 7)"). On its way into the book each chapter number becomes a link to that
chapter's page. Code spans (``...``) are left as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

CHAPTERS = {
    int(path.name[:2]): f"/chapters/{path.stem}"
    for path in (Path(__file__).resolve().parent.parent / "chapters").glob("[0-9][0-9]_*.ipynb")
}
# "Chapter 9", "Chapters 3-5, 7 and 10": the word, then numbers joined by - , or "and"
MENTION = re.compile(r"\bChapters? (\d+(?:(?:-|, | and |, and )\d+)*)")
NUMBER = re.compile(r"\d+")
CODE = re.compile(r"(``.*?``)")


def _link(number: re.Match) -> str:
    target = CHAPTERS.get(int(number.group()))
    return f":doc:`{number.group()} <{target}>`" if target else number.group()


def _mention(match: re.Match) -> str:
    word, numbers = match.group().split(" ", 1)
    target = CHAPTERS.get(int(numbers)) if numbers.isdigit() else None
    if target:  # one chapter: the whole phrase is the link
        return f":doc:`{match.group()} <{target}>`"
    return f"{word} {NUMBER.sub(_link, numbers)}"


def link_chapters(text: str) -> str:
    """``text`` with every chapter number outside code spans made a link to its chapter."""
    parts = CODE.split(text)
    return "".join(
        part if index % 2 else MENTION.sub(_mention, part) for index, part in enumerate(parts)
    )


def _process(app, what, name, obj, options, lines: list[str]) -> None:
    lines[:] = [link_chapters(line) for line in lines]


def setup(app):
    app.connect("autodoc-process-docstring", _process)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
