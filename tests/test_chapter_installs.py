"""Every chapter runs on a fresh Colab runtime: what it imports beyond the package's own
dependencies goes through ``gradcourse.env.ensure_installed`` first, and a missing module is
installed by name."""

import ast
import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from gradcourse import env

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))


def code_cells(path: Path) -> list[str]:
    notebook = nbformat.read(path, as_version=4)
    return [
        "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("%"))
        for cell in notebook.cells
        if cell.cell_type == "code"
    ]


def imported_modules(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def ensured_modules(source: str) -> set[str]:
    return {
        arg.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ensure_installed"
        for arg in node.args
        if isinstance(arg, ast.Constant)
    }


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_each_extra_import_is_ensured_before_it_is_imported(path):
    ensured: set[str] = set()
    for source in code_cells(path):
        needed = imported_modules(source) & set(env.CHAPTER_REQUIREMENTS)
        assert needed <= ensured, f"{path.stem} imports {needed - ensured} before ensuring it"
        ensured |= ensured_modules(source)


def test_the_package_imports_nothing_extra_a_chapter_does_not_ensure():
    # gradcourse.hf needs transformers: the chapters that import it ensure transformers first
    for path in CHAPTERS:
        ensured: set[str] = set()
        for source in code_cells(path):
            if "gradcourse.hf" in source:
                assert "transformers" in ensured, path.stem
            ensured |= ensured_modules(source)


INSTALLING = [p for p in CHAPTERS if any(ensured_modules(s) for s in code_cells(p))]


def test_the_chapters_with_extra_imports_install_them():
    assert {p.stem[:2] for p in INSTALLING} == {"01", "04", "05", "09"}


@pytest.mark.parametrize("path", INSTALLING, ids=lambda p: p.stem)
def test_a_hidden_module_is_installed_by_name(path, monkeypatch):
    cells = [source for source in code_cells(path) if ensured_modules(source)]
    hidden = sorted(ensured_modules(cells[0]))[0]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == hidden else real_find_spec(name, *args),
    )
    commands = []
    monkeypatch.setattr(subprocess, "check_call", lambda command: commands.append(command))
    exec(compile(cells[0], str(path), "exec"), {})
    (command,) = commands
    assert command[:4] == [sys.executable, "-m", "pip", "install"]
    assert env.CHAPTER_REQUIREMENTS[hidden] in command


def test_ensure_installed_installs_nothing_when_all_are_present(monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "check_call", lambda command: pytest.fail("pip ran"))
    found = env.ensure_installed("transformers")
    assert found["transformers"] and "transformers" in capsys.readouterr().out


def test_ensure_installed_refuses_an_unknown_module():
    with pytest.raises(ValueError, match="requests"):
        env.ensure_installed("requests")
    with pytest.raises(ValueError, match="at least one"):
        env.ensure_installed()


def test_the_extras_list_every_chapter_requirement():
    # "trl; extra == 'chapter9'": the installed metadata, built from pyproject.toml
    extras = [r for r in importlib.metadata.requires("gradcourse") if "extra ==" in r]
    listed = {r.split(";")[0].strip() for r in extras}
    assert set(env.CHAPTER_REQUIREMENTS.values()) <= listed
