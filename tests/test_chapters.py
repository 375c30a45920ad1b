"""The conventions every chapter notebook follows (see README, "Writing a
chapter"). nbval runs the chapters."""

import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import setup_cell  # noqa: E402  (tools/setup_cell.py)

CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))


def test_there_are_chapters():
    assert CHAPTERS, "no notebooks in chapters/"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_starts_with_the_exact_setup_cell(path):
    notebook = nbformat.read(path, as_version=4)
    assert setup_cell.first_cell_is_setup(notebook, setup_cell.setup_cell_source()), (
        f"{path.name}: the first cell is not the setup cell; run python tools/setup_cell.py"
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name}: cell {index} has outputs"
            )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_is_listed_in_the_table_of_contents(path):
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {entry["file"] for part in toc["parts"] for entry in part["chapters"]}
    assert f"chapters/{path.stem}" in files


def test_setup_cell_installs_from_the_repository_in_config():
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    source = setup_cell.setup_cell_source()
    assert f'REPOSITORY = "{url}"' in source
    assert '%pip install --quiet "gradcourse @ git+$REPOSITORY"' in source


def test_setup_cell_pip_line_expands_to_the_repository_in_ipython():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.user_ns["REPOSITORY"] = "https://example.org/fork/gradcourse"
    pip_line = '"gradcourse @ git+$REPOSITORY"'
    assert shell.var_expand(pip_line) == '"gradcourse @ git+https://example.org/fork/gradcourse"'


def test_setup_cell_follows_a_moved_repository():
    assert 'REPOSITORY = "https://example.org/fork/gradcourse"' in (
        setup_cell.setup_cell_source("https://example.org/fork/gradcourse")
    )


def test_repository_url_refuses_a_config_without_an_https_url(tmp_path):
    config = tmp_path / "_config.yml"
    config.write_text("repository:\n  url: git@github.com:a/b.git\n")
    with pytest.raises(ValueError, match="repository.url"):
        setup_cell.repository_url(config)


def test_check_mode_reports_a_chapter_whose_setup_cell_is_stale(tmp_path, monkeypatch, capsys):
    stale = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('old setup')")])
    nbformat.write(stale, tmp_path / "99_stale.ipynb")
    monkeypatch.setattr(setup_cell, "chapter_paths", lambda: [tmp_path / "99_stale.ipynb"])
    monkeypatch.setattr(setup_cell, "ROOT", tmp_path)
    assert setup_cell.main(["--check"]) == 1
    assert "99_stale.ipynb" in capsys.readouterr().out


def test_write_replaces_an_old_setup_cell_and_strips_outputs(tmp_path):
    path = tmp_path / "01_x.ipynb"
    old = nbformat.v4.new_code_cell(
        "# tools/setup_cell.py old version", metadata={"tags": ["hide-cell"]}
    )
    body = nbformat.v4.new_code_cell(
        "1 + 1",
        execution_count=3,
        outputs=[nbformat.v4.new_output("execute_result", {"text/plain": "2"})],
    )
    nbformat.write(nbformat.v4.new_notebook(cells=[old, body]), path)
    setup_cell.write_setup_cell(path, setup_cell.setup_cell_source())
    notebook = nbformat.read(path, as_version=4)
    assert len(notebook.cells) == 2
    assert setup_cell.first_cell_is_setup(notebook, setup_cell.setup_cell_source())
    assert notebook.cells[1].outputs == [] and notebook.cells[1].execution_count is None
