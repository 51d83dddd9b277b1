"""The clinic configuration: a typo or a bad value is an error naming the file and the field."""

import pytest

from tasks.config import ConfigError, load_clinic


def write(tmp_path, text):
    path = tmp_path / "clinic.yaml"
    path.write_text(text)
    return path


def test_the_demo_clinic_loads():
    cfg = load_clinic("demo")
    assert cfg.clinic == "demo"
    assert cfg.cliniko.account == "env"
    assert cfg.database_path.name == "demo.duckdb"


def test_an_unknown_setting_names_the_file_and_the_field(tmp_path):
    path = write(tmp_path, "clinic: x\nname: X\nsync:\n  overlap_minute: 5\n")
    with pytest.raises(ConfigError) as err:
        load_clinic(path)
    assert str(path) in str(err.value)
    assert "sync.overlap_minute: unknown setting" in str(err.value)


def test_a_bad_time_zone_is_explained(tmp_path):
    path = write(tmp_path, "clinic: x\nname: X\ntime_zone: Melbourne\n")
    with pytest.raises(ConfigError, match="time_zone: .*not an IANA time zone"):
        load_clinic(path)


def test_missing_required_fields_are_listed(tmp_path):
    with pytest.raises(ConfigError, match="name: required but missing"):
        load_clinic(write(tmp_path, "clinic: x\n"))


def test_broken_yaml_says_where(tmp_path):
    with pytest.raises(ConfigError, match=r"line 3, column 1\): not valid YAML"):
        load_clinic(write(tmp_path, "clinic: x\nname: [unclosed\n"))


def test_an_unknown_clinic_lists_the_known_ones():
    with pytest.raises(ConfigError, match="Known clinics: .*demo"):
        load_clinic("nope")


def test_relative_database_paths_resolve_beside_the_config(tmp_path):
    cfg = load_clinic(write(tmp_path, "clinic: x\nname: X\ndatabase: db/x.duckdb\n"))
    assert cfg.database_path == tmp_path / "db" / "x.duckdb"
