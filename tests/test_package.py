"The installed package: console scripts, the catalogue command, the README in step with its notebook"
import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

root = Path(__file__).resolve().parents[1]
scripts = tomllib.loads((root/"pyproject.toml").read_text())["project"]["scripts"]


def test_every_console_script_points_at_a_function():
    for name, target in scripts.items():
        module, function = target.split(":")
        assert callable(getattr(import_module(module), function)), f"{name} -> {target}"


def test_categories_command_lists_the_ten_categories():
    out = subprocess.run(["trendyol-categories"], capture_output=True, text=True, check=True).stdout
    rows = out.strip().splitlines()[1:]
    assert len(rows) == 10
    assert rows[0].split() == ["erkek-t-shirt-x-g2-c73", "tisort", "t-shirt", "73"]


def test_readme_is_in_step_with_index_notebook():
    result = subprocess.run([sys.executable, str(root/"tools"/"readme.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_shared_path_honours_the_environment_variable(tmp_path, monkeypatch):
    from trendyol_clf.core import shared_path
    (tmp_path/"README.md").write_text("shared")
    (tmp_path/"weights").mkdir()
    monkeypatch.setenv("TRENDYOL_CLF_SHARED", str(tmp_path))
    assert shared_path("weights") == tmp_path/"weights"
