"""A non-editable install carries every bundled data file: setup.py's package_data globs match
each file under dss/data/ that is not Python."""

import ast
import fnmatch
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _package_data() -> dict[str, list[str]]:
    call = next(n for n in ast.walk(ast.parse((REPO / "setup.py").read_text())) if isinstance(n, ast.Call)
                and getattr(n.func, "id", "") == "setup")
    return ast.literal_eval(next(k.value for k in call.keywords if k.arg == "package_data"))


def test_every_bundled_file_is_package_data():
    globs = _package_data()["dss.data"]
    root = REPO / "dss" / "data"
    files = [p.relative_to(root).as_posix() for p in root.rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert any(f.startswith("files/") for f in files)
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert not missing, f"not in setup.py package_data['dss.data']: {missing}"
