"""`relay deploy` refuses two clinics that name one database file. A clinic folder copied with
its `database:` line deployed both: the copy's ticks were refused ("this database holds clinic
..."), but its `relay sync` and its steps run alone wrote its Cliniko rows into the other
clinic's file, whose next tick would then plan messages for them."""

from __future__ import annotations

from pathlib import Path


def clinic(folder: Path, name: str, database: Path | None) -> None:
    (folder / name).mkdir(parents=True)
    line = f"database: {database}\n" if database else ""
    (folder / name / "clinic.yaml").write_text(
        f"clinic: {name}\nname: Clinic {name}\n{line}cliniko:\n  account: env\n",
        encoding="utf-8",
    )


def deploy(monkeypatch, folder: Path):
    import prefect.client.orchestration
    from typer.testing import CliRunner

    from relay.cli import app

    def get_client(*_args, **_kwargs):
        raise AssertionError("relay deploy went to the server with clinics it should refuse")

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.setattr(prefect.client.orchestration, "get_client", get_client)
    return CliRunner().invoke(app, ["deploy", "--clinics", str(folder)])


def test_two_clinics_naming_one_database_file_are_refused(monkeypatch, tmp_path):
    from tasks.config import ConfigError

    shared = tmp_path / "data" / "acme.duckdb"
    clinic(tmp_path / "clinics", "acme", shared)
    clinic(tmp_path / "clinics", "acme-north", tmp_path / "data" / ".." / "data" / "acme.duckdb")
    clinic(tmp_path / "clinics", "south", None)  # its own file: data/south.duckdb
    result = deploy(monkeypatch, tmp_path / "clinics")
    assert isinstance(result.exception, ConfigError), result.output
    said = str(result.exception)
    assert "acme and acme-north" in said and str(shared) in said, said
    assert "south" not in said


def test_clinics_with_their_own_files_are_not_refused_for_it(monkeypatch, tmp_path):
    for name in ("acme", "south"):
        clinic(tmp_path / "clinics", name, tmp_path / "data" / f"{name}.duckdb")
    result = deploy(monkeypatch, tmp_path / "clinics")
    # past the checks of clinic.yaml: it went for the server
    assert "went to the server" in str(result.exception), result.output
