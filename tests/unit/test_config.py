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


def test_a_name_in_an_untaken_branch_names_the_trigger_or_campaign_at_load(tmp_path):
    """The sample patient has a last name, so the else branch was never rendered: the typo
    loaded, and each message taking the branch was skipped, "not rendered", at send."""
    folder = tmp_path / "templates" / "note"
    folder.mkdir(parents=True)
    (folder / "sms.txt").write_text(
        "Hi\n{% if patient.last_name %}{{ patient.last_name }}{% else %}"
        "{{ patient.frist_name }}{% endif %} Reply STOP to opt out\n"
    )
    path = write(tmp_path, "clinic: x\nname: X\ntriggers:\n  - {name: remind, event: "
                 "before_appointment, timing: 1 day before, channel: sms, template: note, "
                 "purpose: transactional}\n")  # fmt: skip
    with pytest.raises(ConfigError) as err:
        load_clinic(path)
    assert "trigger 'remind' (entry 1): template: template 'note' (sms.txt) line 2: " \
        "patient.frist_name is not a variable" in str(err.value)  # fmt: skip
    path = write(tmp_path, "clinic: x\nname: X\ncampaigns:\n  - {name: promo, segment: recall_90_179, "
                 "channel: sms, template: note}\n")  # fmt: skip
    with pytest.raises(ConfigError) as err:
        load_clinic(path)
    assert (
        "campaign 'promo': template: template 'note' (sms.txt) line 2: patient.frist_name"
        in str(err.value)
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


def test_a_file_not_saved_as_utf8_names_the_file_instead_of_a_traceback(tmp_path):
    """A Windows editor's cp1252 ("Caf\u00e9 Physio") crashed every command and tick with a
    UnicodeDecodeError traceback naming neither the file nor what to do."""
    path = tmp_path / "clinic.yaml"
    path.write_bytes("clinic: x\nname: Caf\u00e9 Physio\n".encode("cp1252"))
    with pytest.raises(ConfigError, match=r"clinic.yaml: not UTF-8 text .*save it as UTF-8"):
        load_clinic(path)
    path.write_bytes("clinic: x\nname: Caf\u00e9 Physio\n".encode("utf-8-sig"))
    assert load_clinic(path).name == "Caf\u00e9 Physio"


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


@pytest.mark.parametrize(
    ("section", "says"),
    [
        # YAML reads an unquoted 20:00 as 1200 (minutes): it became quiet hours from 00:20, and
        # marketing SMS went out through the evening without a word
        (
            "marketing:\n  quiet_hours:\n    start: 20:00\n",
            'marketing.quiet_hours.start: Value error, write the time in quotes, e.g. "20:00" '
            "(unquoted, YAML reads 20:00 as the number 1200)",
        ),
        ("marketing:\n  quiet_hours:\n    end: 9:00\n", 'e.g. "09:00"'),
        (
            "report:\n  to: a@b.example\n  at: 8:00\n",
            'report.at: Value error, write the time in quotes, e.g. "08:00"',
        ),
        ("marketing:\n  quiet_hours:\n    start: 8pm\n", "'8pm' is not a time of day"),
        # the nightly reconcile said only "Input should be a valid string"
        (
            "schedule:\n  nightly_reconcile: 23:30\n",
            'schedule.nightly_reconcile: Value error, write the time in quotes, e.g. "23:30" '
            "(unquoted, YAML reads 23:30 as the number 1410)",
        ),
        ("schedule:\n  nightly_reconcile: 3:00\n", 'e.g. "03:00"'),
        ("schedule:\n  nightly_reconcile: 3am\n", "'3am' is not a time of day"),
        ('schedule:\n  nightly_reconcile: "03:00:30"\n', "whole minutes"),
    ],
)
def test_a_time_of_day_yaml_read_as_a_number_is_refused_saying_to_quote_it(tmp_path, section, says):
    with pytest.raises(ConfigError) as err:
        load_clinic(write(tmp_path, f"clinic: x\nname: X\n{section}"))
    assert says in str(err.value)


def test_a_quoted_time_of_day_may_leave_out_the_hours_leading_zero(tmp_path):
    # "9:00" was refused in pydantic's words ("input is too short")
    cfg = load_clinic(write(tmp_path, 'clinic: x\nname: X\nmarketing:\n  quiet_hours:\n'
                                      '    start: "20:30"\n    end: "9:00"\n'))  # fmt: skip
    assert (cfg.marketing.quiet_hours.start.hour, cfg.marketing.quiet_hours.end.hour) == (20, 9)


@pytest.mark.parametrize(("written", "read"), [('"3:00"', "03:00"), ('"23:05"', "23:05"),
                                               ("null", None)])  # fmt: skip
def test_the_nightly_reconcile_reads_times_as_the_other_times_of_day(tmp_path, written, read):
    # a quoted "3:00" was refused with pydantic's regular expression, where quiet hours and the
    # owner's report take it
    cfg = load_clinic(
        write(tmp_path, f"clinic: x\nname: X\nschedule:\n  nightly_reconcile: {written}\n")
    )
    assert cfg.schedule.nightly_reconcile == read


@pytest.mark.parametrize(
    ("section", "says"),
    [
        # YAML reads true/yes/on as a boolean, which pydantic took for the number 1: a sync
        # overlap of one minute, a report counting bookings won within one day, the business
        # with id 1, a frequency cap of one message
        ("sync:\n  overlap_minutes: yes\n", "sync.overlap_minutes: a number, not true/false"),
        ("schedule:\n  tick_every_minutes: on\n", "schedule.tick_every_minutes: a number"),
        (
            "report:\n  to: a@b.example\n  booked_within_days: true\n",
            "report.booked_within_days: a number, not true/false",
        ),
        (
            "marketing:\n  frequency_cap:\n    messages: true\n    days: 7\n",
            "marketing.frequency_cap.messages: a number, not true/false",
        ),
        (
            "triggers:\n  - name: t\n    event: appointment_booked\n    timing: 1 hour after\n"
            "    channel: email\n    template: welcome\n    purpose: transactional\n"
            "    filters:\n      businesses: [true]\n",
            "filters.businesses: a list of numbers or names, not true/false",
        ),
    ],
)
def test_true_or_false_where_a_number_goes_is_refused_in_every_section(tmp_path, section, says):
    with pytest.raises(ConfigError) as err:
        load_clinic(write(tmp_path, f"clinic: x\nname: X\n{section}"))
    assert says in str(err.value)


def test_true_or_false_still_reads_where_true_or_false_goes(tmp_path):
    cfg = load_clinic(write(tmp_path, "clinic: x\nname: X\nmarketing_list:\n"
                                      "  honour_cliniko_email_opt_in: yes\n"))  # fmt: skip
    assert cfg.marketing_list.honour_cliniko_email_opt_in is True
