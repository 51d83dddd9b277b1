"""The README documents every environment variable the code reads (one list, kept whole)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("tasks", "flows", "blocks", "relay", "sandbox", "bench", "scripts")
# os.environ.get("X"...), os.environ["X"] (a read, not an assignment), os.getenv("X"...)
READ = re.compile(
    r"""(?:environ\.get\(\s*|getenv\(\s*|environ\[\s*)["']([A-Z][A-Z0-9_]+)["']\s*(?!\]\s*=[^=])"""
)


def variables_read() -> dict[str, str]:
    found: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in READ.findall(path.read_text(encoding="utf-8")):
                found.setdefault(name, str(path.relative_to(ROOT)))
    return found


def test_the_scan_finds_what_it_should():
    found = variables_read()
    assert {"RELAY_DATA_DIR", "CLINIKO_API_KEY", "BENCH_PATIENTS"} <= set(found)


def test_every_environment_variable_read_is_in_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Environment variables", 1)[1]
    missing = {
        name: where for name, where in variables_read().items() if f"`{name}`" not in section
    }
    assert not missing, f"document these in README.md's 'Environment variables': {missing}"
