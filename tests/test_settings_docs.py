"""The README's settings table says what each setting does, and the commands do it (issue 15,
finding 4: the table said an unset FASTSLOW_KAFKA_BOOTSTRAP starts the embedded broker, while
`fastslow serve` refused)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from fastslow.cli import main
from fastslow.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_settings() -> dict[str, str]:
    """Setting name -> the README table's "meaning" column."""
    rows = re.findall(r"^\| `(\w+)` \| `FASTSLOW_\w+` \| [^|]+ \| (.+) \|$", README.read_text(), re.MULTILINE)
    return dict(rows)


def field_doc(name: str) -> str:
    """The settings field's docstring without its trailing ``(FASTSLOW_...)``."""
    import ast
    import inspect

    import fastslow.settings as module

    tree = ast.parse(inspect.getsource(module))
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings").body
    for node, doc in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and node.target.id == name:
            return re.sub(r"\s*\(FASTSLOW_\w+\)\.?$", "", doc.value.value.strip())
    raise AssertionError(f"no docstring for {name}")


def test_every_setting_is_in_the_readme_table_with_its_docstring():
    table = readme_settings()
    assert set(table) == set(Settings.model_fields)
    for name, meaning in table.items():
        assert meaning == field_doc(name), name


def test_serve_without_a_broker_does_what_the_table_says(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("FASTSLOW_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("FASTSLOW_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["fastslow", "serve"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "error: no Kafka broker configured" in err and "`fastslow broker`" in err
    meaning = readme_settings()["kafka_bootstrap"]
    assert "`serve`" in meaning and "stop and say to start one with `fastslow broker`" in meaning
    assert "unset starts the embedded broker" not in meaning
