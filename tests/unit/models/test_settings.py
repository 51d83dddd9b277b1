"""The marketing-list settings in clinic.yaml: validated with errors naming the file and field,
and handed to the models as values (never pasted into SQL)."""

import pytest

from tasks.config import ConfigError, load_clinic
from tasks.models import runner as models


def write(tmp_path, text):
    path = tmp_path / "clinic.yaml"
    path.write_text("clinic: x\nname: X\ncountry: NZ\ntime_zone: Pacific/Auckland\n" + text)
    return path


def test_the_settings_reach_the_models_as_typed_values(tmp_path):
    config = load_clinic(
        write(
            tmp_path,
            "marketing_list:\n  active_patient_limit: all\n  size_cap: 250\n"
            "  cap_keeps: earliest_created\n  honour_cliniko_email_opt_in: true\n",
        )
    )
    assert models.ListSettings.from_config(config) == models.ListSettings(
        country="NZ",
        clinic_time_zone="Pacific/Auckland",
        active_patient_months=None,
        list_size_cap=250,
        honour_email_opt_in=True,
        cap_order="earliest_created",
    )


def test_the_demo_clinic_keeps_two_years_of_patients_with_no_cap():
    settings = models.ListSettings.from_config(load_clinic("demo"))
    assert (settings.active_patient_months, settings.list_size_cap) == (24, None)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("  active_patient_limit: 7\n", "marketing_list.active_patient_limit"),
        ("  size_cap: 0\n", "marketing_list.size_cap: Input should be greater than or equal to 1"),
        ("  cap_keeps: random\n", "marketing_list.cap_keeps"),
        ("  honour_opt_in: true\n", "marketing_list.honour_opt_in: unknown setting"),
    ],
)
def test_a_bad_list_setting_names_the_file_and_the_field(tmp_path, text, problem):
    path = write(tmp_path, "marketing_list:\n" + text)
    with pytest.raises(ConfigError) as err:
        load_clinic(path)
    assert str(path) in str(err.value)
    assert problem in str(err.value)


@pytest.mark.parametrize(
    "text, field",
    [
        ("  size_cap: true\n", "size_cap"),
        ("  size_cap: yes\n", "size_cap"),
        ("  size_cap: false\n", "size_cap"),
        ("  soft_bounce_limit: true\n", "soft_bounce_limit"),
    ],
)
def test_true_or_false_for_a_number_is_refused_not_read_as_one(tmp_path, text, field):
    """`size_cap: true` (the owner meaning "cap it") loaded as a cap of 1: one subscriber, the
    whole list over_cap; `soft_bounce_limit: true` took an address off at its first bounce."""
    path = write(tmp_path, "marketing_list:\n" + text)
    with pytest.raises(ConfigError) as err:
        load_clinic(path)
    assert f"marketing_list.{field}: " in str(err.value)
    assert "a number, not true/false" in str(err.value)


def test_the_tag_categories_reach_the_models_trimmed_and_lower_case(tmp_path):
    config = load_clinic(write(tmp_path, "tag_categories: [' Admin Only', Internal ADMIN]\n"))
    assert models.ListSettings.from_config(config).tag_categories == (
        "admin only",
        "internal admin",
    )
    assert models.ListSettings.from_config(load_clinic("demo")).tag_categories == ("admin only",)


def test_a_blank_tag_category_names_the_file_and_the_field(tmp_path):
    path = write(tmp_path, "tag_categories: ['  ']\n")
    with pytest.raises(ConfigError) as err:
        load_clinic(path)
    assert str(path) in str(err.value) and "tag_categories.0" in str(err.value)


def test_a_quote_in_a_setting_cannot_reach_the_sql(tmp_path):
    """Settings travel as bound parameters into state.build_context, so text is only text."""
    from datetime import UTC, datetime

    from tasks.warehouse import memory_db

    con = memory_db()
    settings = models.ListSettings(country="AU'; DROP TABLE raw.patients; --")
    models.build(con, settings, now=datetime(2026, 11, 22, tzinfo=UTC))
    assert con.execute("SELECT country FROM state.build_context").fetchone()[0] == settings.country
    assert con.execute("SELECT count(*) FROM raw.patients").fetchone()[0] == 0


@pytest.mark.parametrize(
    "written, months",
    [('"24"', 24), ("'6'", 6), ("All", None), ('"ALL"', None), (" 12", 12)],
)
def test_a_limit_written_as_text_or_in_capitals_means_the_same_limit(tmp_path, written, months):
    """`active_patient_limit: "24"` was refused with "Input should be 6, 12, 18, 24 or 'all'":
    the owner wrote 24 and was told to write 24."""
    config = load_clinic(write(tmp_path, f"marketing_list:\n  active_patient_limit: {written}\n"))
    assert models.ListSettings.from_config(config).active_patient_months == months
