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


def test_a_trigger_template_problem_names_the_trigger_without_a_top_level_prefix(tmp_path):
    path = write(tmp_path, "clinic: x\nname: X\ntriggers:\n  - {name: remind, event: "
                 "before_appointment, timing: 1 day before, channel: sms, template: nope, "
                 "purpose: transactional}\n")  # fmt: skip
    with pytest.raises(ConfigError) as err:
        load_clinic(path)
    assert "\n  triggers: trigger 'remind' (entry 1): template: template 'nope': no file" in str(
        err.value
    )


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


def test_a_clinic_folder_whose_clinic_line_names_another_clinic_is_refused(tmp_path, monkeypatch):
    """docs/scaling.md: copy clinics/demo/ to clinics/<clinic>/ and edit it. A copy still saying
    `clinic: demo` loaded as a second "demo" (`relay clinics` listed demo twice, one database),
    and `relay deploy` made demo-tick from it, whose runs loaded clinics/demo/: the copy's own
    settings never ran. The folder's name is the clinic's, and a file saying otherwise is refused."""
    clinics = tmp_path / "clinics"
    (clinics / "acme").mkdir(parents=True)
    (clinics / "acme" / "clinic.yaml").write_text("clinic: demo\nname: Acme Physio\n")
    (clinics / "beta").mkdir()
    (clinics / "beta" / "clinic.yaml").write_text("clinic: beta\nname: Beta Physio\n")
    monkeypatch.setenv("RELAY_CLINICS_DIR", str(clinics))
    for how in ("acme", clinics / "acme" / "clinic.yaml"):
        with pytest.raises(ConfigError) as err:
            load_clinic(how)
        said = str(err.value)
        assert "clinic: demo is not its folder's name (acme)" in said, said
        assert "Set clinic: acme" in said, said
    assert load_clinic("beta").clinic == "beta"
    # a file outside a clinics folder (a path given by hand, a test's) is named by its clinic: line
    loose = tmp_path / "elsewhere" / "clinic.yaml"
    loose.parent.mkdir()
    loose.write_text("clinic: gamma\nname: Gamma Physio\n")
    assert load_clinic(loose).clinic == "gamma"
