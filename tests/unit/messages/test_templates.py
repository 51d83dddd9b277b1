"""Templates render strictly: no blank where a variable was missing, and marketing rules enforced."""

from __future__ import annotations

import email
from datetime import datetime
from email import policy

import pytest

from tasks.messages.templates import (
    PROJECT_TEMPLATES,
    TemplateError,
    Templates,
    build_context,
    render_to_file,
    sample_context,
    size_note,
    sms_size,
)
from tasks.unsubscribe import tokens as unsubscribe

EXAMPLES = [
    ("welcome", "email", False),
    ("reminder-24h", "sms", False),
    ("recall", "email", True),
    ("promo-sms", "sms", True),
]


def clinic_templates(tmp_path, files: dict[str, str]) -> Templates:
    """A clinic folder with its own templates (they win over the project's examples)."""
    for name, text in files.items():
        path = tmp_path / "templates" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return Templates(tmp_path)


@pytest.mark.parametrize(("name", "channel", "marketing"), EXAMPLES)
def test_every_example_template_renders_against_the_sample_context(name, channel, marketing):
    assert Templates().validate(name, channel, marketing=marketing) == []


def test_a_missing_variable_is_an_error_naming_it_never_a_blank(tmp_path):
    templates = clinic_templates(tmp_path, {"oops/sms.txt": "Hi {{ patient.nickname }}, see you"})
    with pytest.raises(TemplateError, match="nickname"):
        templates.validate("oops", "sms", marketing=False)


def test_a_template_that_does_not_exist_says_where_it_was_looked_for(tmp_path):
    with pytest.raises(TemplateError, match="no file .*nothing-here/sms.txt"):
        Templates(tmp_path).validate("nothing-here", "sms", marketing=False)


def test_a_syntax_error_names_the_file_and_line(tmp_path):
    templates = clinic_templates(tmp_path, {"broken/sms.txt": "Hi\n{{ patient.first_name "})
    with pytest.raises(TemplateError, match="line 2"):
        templates.validate("broken", "sms", marketing=False)


def test_an_expression_python_refuses_is_a_template_error_naming_the_line(tmp_path):
    # {{ name + 1 }} raises Python's TypeError, not Jinja's: it ended the configuration load
    # in a traceback instead of naming the template, its file and line (and at send time it
    # would end the dispatch run); the error's text, which can quote a value, is left out
    templates = clinic_templates(
        tmp_path, {"sums/sms.txt": "Hi {{ patient.first_name }},\n{{ patient.first_name + 1 }}"}
    )
    with pytest.raises(TemplateError, match=r"template 'sums' \(sms.txt\) line 2: TypeError") as e:
        templates.validate("sums", "sms", marketing=False)
    assert "Alex" not in str(e.value)


def test_the_clinics_own_template_wins_over_the_example(tmp_path):
    templates = clinic_templates(
        tmp_path, {"reminder-24h/sms.txt": "Ours, {{ patient.first_name }}"}
    )
    rendered = templates.render_sms(
        "reminder-24h", sample_context(marketing=False), marketing=False
    )
    assert rendered.text == "Ours, Alex"


def test_html_is_autoescaped_and_text_is_not(tmp_path):
    templates = clinic_templates(
        tmp_path,
        {
            "t/subject.txt": "For {{ patient.first_name }}",
            "t/body.html": "<p>{{ patient.first_name }}</p>",
            "t/body.txt": "{{ patient.first_name }}",
        },
    )
    context = build_context(clinic={"name": "C"}, first_name="<b>Jo</b> & Co")
    rendered = templates.render_email("t", context, marketing=False)
    assert rendered.html == "<p>&lt;b&gt;Jo&lt;/b&gt; &amp; Co</p>"
    assert rendered.text == "<b>Jo</b> & Co"


def test_the_preferred_first_name_is_used_and_the_first_name_when_there_is_none():
    with_preferred = build_context(clinic={}, first_name="Alexandra", preferred_first_name="Alex")
    blank_preferred = build_context(clinic={}, first_name="Alexandra", preferred_first_name="  ")
    assert with_preferred["patient"]["first_name"] == "Alex"
    assert blank_preferred["patient"]["first_name"] == "Alexandra"


def test_the_appointment_is_shown_in_the_business_time_zone_across_daylight_saving():
    def local(utc: str, zone: str):
        context = build_context(
            clinic={}, first_name="A",
            appointment_starts_at=datetime.fromisoformat(utc), time_zone=zone,
        )  # fmt: skip
        return context["appointment"]["date"], context["appointment"]["time"]

    # Melbourne is UTC+11 in summer and UTC+10 in winter; Perth has no daylight saving.
    assert local("2026-01-14T23:30:00+00:00", "Australia/Melbourne") == (
        "Thursday 15 January",
        "10:30 am",
    )
    assert local("2026-07-14T23:30:00+00:00", "Australia/Melbourne") == (
        "Wednesday 15 July",
        "9:30 am",
    )
    assert local("2026-07-14T05:00:00+00:00", "Australia/Perth") == ("Tuesday 14 July", "1:00 pm")


def test_the_appointment_day_is_said_from_when_the_message_goes_in_the_clinics_time():
    """The example reminder said "tomorrow" whatever the day: a late booking's reminder sent
    at once (last_minute: send) told a patient booked for 2 pm today to come tomorrow."""
    starts = datetime.fromisoformat("2026-03-04T03:00:00+00:00")  # 2 pm Wed 4 March, Melbourne

    def day(now: str | None) -> str:
        context = build_context(
            clinic={}, first_name="A", appointment_starts_at=starts,
            time_zone="Australia/Melbourne", now=now and datetime.fromisoformat(now),
        )  # fmt: skip
        return context["appointment"]["day"]

    assert day("2026-03-03T23:00:00+00:00") == "today"  # 10 am the same day, Melbourne
    assert day("2026-03-03T03:00:00+00:00") == "tomorrow"  # 2 pm the day before
    assert day("2026-03-03T13:30:00+00:00") == "today"  # 00:30 local: UTC still says the 3rd
    assert day("2026-03-02T03:00:00+00:00") == "on Wednesday 4 March"
    assert day(None) == "on Wednesday 4 March"  # a sample: the longest form


def test_marketing_email_without_the_unsubscribe_link_is_refused(tmp_path):
    templates = clinic_templates(
        tmp_path,
        {
            "promo/subject.txt": "Sale",
            "promo/body.html": "<p>Hi {{ patient.first_name }}</p>",
            "promo/body.txt": "Hi {{ patient.first_name }} {{ unsubscribe_url }}",
        },
    )
    with pytest.raises(TemplateError, match="unsubscribe_url"):
        templates.validate("promo", "email", marketing=True)


def test_marketing_email_carries_one_click_unsubscribe_headers():
    context = sample_context(marketing=True)
    rendered = Templates().render_email("recall", context, marketing=True)
    assert rendered.headers == {
        "List-Unsubscribe": f"<{context['unsubscribe_url']}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert context["unsubscribe_url"] in rendered.text
    transactional = Templates().render_email(
        "welcome", sample_context(marketing=False), marketing=False
    )
    assert transactional.headers == {}


def test_marketing_sms_without_opt_out_text_is_refused(tmp_path):
    templates = clinic_templates(
        tmp_path, {"promo/sms.txt": "Hi {{ patient.first_name }}, 20% off!"}
    )
    with pytest.raises(TemplateError, match="opt out"):
        templates.validate("promo", "sms", marketing=True)
    assert templates.validate("promo", "sms", marketing=False) == []


@pytest.mark.parametrize(
    "ending",
    [
        "Reply STOP to opt out",
        'Reply "STOP" to opt out',
        "Reply 'STOP' to opt out",  # refused as saying nothing of opting out
        "Reply with STOP to opt out",
        "Reply STOPALL to opt out",  # Twilio's opt-out words (tasks/providers/twilio.py)
        "Text OPTOUT to opt out",
    ],
)
def test_marketing_sms_opt_out_text_may_quote_the_word(tmp_path, ending):
    templates = clinic_templates(
        tmp_path, {"promo/sms.txt": "Hi {{ patient.first_name }}, 20% off! " + ending}
    )
    assert templates.validate("promo", "sms", marketing=True) == []


@pytest.mark.parametrize(
    ("text", "encoding", "segments"),
    [
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("€" * 80, "GSM-7", 1),  # extended characters cost two septets: 160
        ("€" * 81, "GSM-7", 2),
        ("é" * 160, "GSM-7", 1),  # é is in the basic GSM set
        ("ê" * 70, "UCS-2", 1),  # ê is not: the whole message becomes UCS-2
        ("ê" * 71, "UCS-2", 2),
        ("😀" * 35, "UCS-2", 1),  # an emoji is two UTF-16 units
        ("😀" * 36, "UCS-2", 2),
        # A part never splits a character: an escape and its extended character, or an
        # emoji's two UTF-16 units, that would straddle a part boundary go whole to the next
        # part (Twilio's segment calculator does the same), which can cost a part more.
        ("a" * 152 + "€" + "b" * 152, "GSM-7", 3),  # 306 septets, but 152 + 154
        ("a" * 151 + "€" + "b" * 153, "GSM-7", 2),  # 153 + 153: the € fits whole
        ("a" * 66 + "😀" + "b" * 66, "UCS-2", 3),  # 134 units, but 66 + 68
        ("a" * 65 + "😀" + "b" * 67, "UCS-2", 2),  # 67 + 67
    ],
)
def test_sms_segments_are_counted_as_carriers_bill_them(text, encoding, segments):
    size = sms_size(text)
    assert (size.encoding, size.segments) == (encoding, segments)


def test_an_sms_over_one_segment_is_a_warning_not_an_error(tmp_path):
    templates = clinic_templates(
        tmp_path, {"long/sms.txt": "Hi {{ patient.first_name }} " + "x" * 170}
    )
    (warning,) = templates.validate("long", "sms", marketing=False)
    assert "2 segments" in warning


def test_a_message_renders_to_files_a_person_can_open(tmp_path):
    path = render_to_file(
        Templates(), "recall", "email", sample_context(marketing=True), tmp_path / "preview",
        marketing=True, to="alex@sample.example", sender="Sample Physio <hello@sample.example>",
    )  # fmt: skip
    assert path.suffix == ".eml"
    mail = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    assert mail["Subject"] == "Alex, time for a check-in?"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "Unsubscribe" in mail.get_body(("html",)).get_content()
    assert path.with_suffix(".html").exists()
    sms = render_to_file(
        Templates(), "reminder-24h", "sms", sample_context(marketing=False), tmp_path / "preview",
        marketing=False, to="+61400000000", sender="Sample",
    )  # fmt: skip
    assert "reminder of your Initial Consultation" in sms.read_text()


def test_an_unsubscribe_token_verifies_and_a_tampered_one_does_not():
    key = b"k" * 32
    token = unsubscribe.sign("demo", 42, 7, "email", key=key)
    claim = unsubscribe.verify(token, key=key)
    assert (claim.clinic, claim.patient_id, claim.message_id, claim.channel) == (
        "demo",
        42,
        7,
        "email",
    )
    payload, mac = token.split(".")
    forged = unsubscribe.sign("demo", 43, 7, "email", key=key).split(".")[0] + "." + mac
    for bad in (forged, token[:-2], payload, "nonsense"):
        with pytest.raises(unsubscribe.InvalidToken):
            unsubscribe.verify(bad, key=key)
    with pytest.raises(unsubscribe.InvalidToken):
        unsubscribe.verify(token, key=b"another key")


def test_without_a_configured_secret_one_is_generated_once_and_kept(data_dir, monkeypatch):
    monkeypatch.delenv("RELAY_UNSUBSCRIBE_SECRET", raising=False)
    # no Prefect server: not one a test run before this in the process left in its settings
    monkeypatch.setattr("tasks.home.api_url", lambda: None)
    first = unsubscribe.secret_key()
    assert first == unsubscribe.secret_key()
    path = data_dir / "secrets" / "unsubscribe.key"
    assert path.stat().st_mode & 0o077 == 0
    token = unsubscribe.sign("demo", 1, 2, "sms")
    assert unsubscribe.verify(token).patient_id == 1


def test_an_sms_trigger_over_one_segment_is_warned_of_by_relay_clinics(tmp_path, monkeypatch):
    # The load-time segment warning was computed and dropped: nothing showed it to anyone.
    from typer.testing import CliRunner

    from relay.cli import app

    folder = tmp_path / "clinics" / "x"
    (folder / "templates" / "long").mkdir(parents=True)
    (folder / "templates" / "long" / "sms.txt").write_text(
        "Hi {{ patient.first_name }}, see you {{ appointment.date }} 😊 " + "x" * 40
    )
    (folder / "clinic.yaml").write_text(
        "clinic: x\nname: X\ntriggers:\n  - name: remind\n    event: before_appointment\n"
        "    timing: 24 hours before\n    channel: sms\n    template: long\n"
        "    purpose: transactional\n"
    )
    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path / "clinics"))
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))
    out = CliRunner().invoke(app, ["clinics"])
    assert out.exit_code == 0, out.output
    assert "warning: trigger 'remind': template 'long': the sample SMS is 2 segments" in out.output
    assert "UCS-2" in out.output


def test_an_sms_size_note_says_its_segments():
    assert size_note(sms_size("Hi")) == "2 GSM-7 units, 1 segment"
    assert size_note(sms_size("😀" * 36)) == "72 UCS-2 units, 2 segments (each segment is billed)"


def test_a_clinic_detail_left_empty_in_clinic_yaml_is_a_warning_naming_the_setting():
    """`relay connect` writes ``phone: ''``: a reminder switched on would say "To change it call
    ." to every patient. `relay clinics` and `relay preview trigger` say so, naming the setting."""
    from tasks.config import ClinicConfig
    from tasks.messages.templates import template_warnings

    reminder = {"name": "reminder", "event": "before_appointment", "timing": "24 hours before",
                "channel": "sms", "template": "reminder-24h", "purpose": "transactional"}  # fmt: skip
    sender = {"phone": "", "website": "https://t.example", "address": "1 T St"}
    config = ClinicConfig(clinic="t", name="T", triggers=[reminder], providers={"sender": sender})
    (warning,) = template_warnings(config, config.triggers[0])
    assert "template 'reminder-24h' (sms.txt): clinic.phone is empty" in warning
    assert "set providers.sender.phone in clinic.yaml" in warning
    filled = config.model_copy(update={"providers": config.providers.model_copy(
        update={"sender": config.providers.sender.model_copy(update={"phone": "03 9000 1"})})})  # fmt: skip
    assert template_warnings(filled, filled.triggers[0]) == []


def test_a_clinic_detail_printed_only_when_set_is_no_warning(tmp_path):
    templates = clinic_templates(
        tmp_path, {"note/sms.txt": "Hi{% if clinic.phone %}, call {{ clinic.phone }}{% endif %}"}
    )
    from types import SimpleNamespace

    from tasks.messages.templates import clinic_variables

    sender = SimpleNamespace(name=None, email="a@t.example", reply_to=None, phone=" ",
                             website="", address="")  # fmt: skip
    clinic = clinic_variables(sender, "T")
    assert templates.validate("note", "sms", marketing=False, clinic=clinic) == []
    assert templates.render_sms("note", sample_context(marketing=False, clinic=clinic),
                                marketing=False).text == "Hi"  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "name"),
    [
        # the sample appointment always has a practitioner: the else branch was never rendered
        ("Hi\n{% if appointment.practitioner %}with {{ appointment.practitioner }}"
         "{% else %}on {{ appointment.dya }}{% endif %}", 2, "appointment.dya"),
        ("Hi\n\n{% if appointment.day == 'today' %}{{ patient['frist_name'] }}{% endif %}", 3,
         "patient.frist_name"),
        ("Hi {{ patient.first_name }}\n{% if appointment.day == 'today' %}{{ nme }}{% endif %}",
         2, "nme"),
    ],
)  # fmt: skip
def test_a_name_in_a_branch_the_sample_never_takes_is_refused_at_load(tmp_path, text, line, name):
    """It loaded, and every message that took the branch was skipped as "not rendered"."""
    templates = clinic_templates(tmp_path, {"typo/sms.txt": text})
    with pytest.raises(TemplateError) as e:
        templates.validate("typo", "sms", marketing=False)
    message = str(e.value)
    assert message.startswith(f"template 'typo' (sms.txt) line {line}: {name} is not a variable")
    if name.startswith("appointment"):
        assert "there are: business, date, day, practitioner, starts_at, time, type" in message
    if name == "nme":
        assert "there are: appointment, clinic, patient)" in message
    assert "Alex" not in message  # the names, never the sample's values


@pytest.mark.parametrize(
    "text",
    [
        "Hi{% if appointment.foo is defined %} {{ appointment.foo }}{% endif %}",
        "Hi {{ appointment.foo | default('') }}{{ patient['nick'] | d('') }}",
        "Hi{% if nick is undefined %} there{% else %} {{ nick }}{% endif %}",
        "{% set greeting = 'Hi' %}{{ greeting }}{% for patient in [] %}{{ patient.whatever }}"
        "{% endfor %}{% macro m(x) %}{{ x.y }}{% endmacro %}",
        "Hi {% for key, value in clinic.items() %}{{ key }}{% endfor %}{{ loop_free | d }}",
    ],
)
def test_a_guarded_or_own_name_still_loads(tmp_path, text):
    templates = clinic_templates(tmp_path, {"ok/sms.txt": text})
    assert templates.validate("ok", "sms", marketing=False) == []


def test_a_layout_the_template_extends_is_read_too(tmp_path):
    templates = clinic_templates(
        tmp_path,
        {
            "_layout/email.txt": "{% block content %}{% endblock %}\n"
            "{{ unsubscribe_url }}{% if clinic.phone %}{{ clinic.phone }}{% else %}"
            "{{ clinic.phnoe }}{% endif %}",
        },
    )
    with pytest.raises(TemplateError, match=r"\(_layout/email.txt\) line 2: clinic.phnoe is"):
        templates.validate("birthday", "email", marketing=True)


def test_every_shipped_template_loads_for_transactional_or_marketing_messages():
    names = sorted(p.name for p in PROJECT_TEMPLATES.iterdir() if not p.name.startswith("_"))
    assert len(names) >= 10
    for name in names:
        channel = "sms" if (PROJECT_TEMPLATES / name / "sms.txt").exists() else "email"
        problems = []
        for marketing in (False, True):
            try:
                Templates().validate(name, channel, marketing=marketing)
            except TemplateError as exc:
                problems.append(str(exc))
        assert len(problems) < 2, problems


def test_marketing_sms_has_no_unsubscribe_url_at_load_as_at_send(tmp_path):
    """Dispatch gives unsubscribe_url to marketing email only: the sample gave it to SMS too."""
    templates = clinic_templates(
        tmp_path, {"promo/sms.txt": "20% off! {{ unsubscribe_url }} Reply STOP to opt out"}
    )
    with pytest.raises(TemplateError, match="unsubscribe_url"):
        templates.validate("promo", "sms", marketing=True)


def test_the_sample_context_has_the_names_a_real_one_has():
    from types import SimpleNamespace

    from tasks.config import SenderSettings
    from tasks.messages.prepare import clinic_details
    from tasks.triggers.prepare import template_context

    cfg = SimpleNamespace(name="T", providers=SimpleNamespace(sender=SenderSettings()))
    row = dict(first_name="A", preferred_first_name=None, last_name=None,
               starts_at=datetime.fromisoformat("2026-03-03T22:30:00+00:00"),
               business_time_zone="Australia/Perth", appointment_type_name=None,
               practitioner_name=None, business_name=None)  # fmt: skip
    real = template_context(clinic_details(cfg), row, datetime.now().astimezone())
    sample = sample_context(marketing=False)
    assert real.keys() == sample.keys()
    for key, value in real.items():
        assert value.keys() == sample[key].keys(), key
