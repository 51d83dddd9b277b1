"""``fast_lane:`` in clinic.yaml: off unless set, on in the demo, a bad value named with what to do."""

from __future__ import annotations

import pytest
import yaml

from tasks.config import ConfigError, load_clinic


def clinic(tmp_path, **settings):
    path = tmp_path / "clinic.yaml"
    path.write_text(yaml.safe_dump({"clinic": "c", "name": "C", **settings}), encoding="utf-8")
    return path


def test_the_lane_is_off_unless_set_and_on_in_the_demo(tmp_path):
    assert not load_clinic(clinic(tmp_path)).fast_lane.enabled
    demo = load_clinic("demo").fast_lane
    assert demo.enabled and demo.requests_per_minute == 50 and demo.every_seconds is None


@pytest.mark.parametrize(
    ("lane", "problem"),
    [
        (
            {"requests_per_minute": 500},
            "fast_lane.requests_per_minute: Input should be less than or equal to 200",
        ),
        (
            {"every_seconds": 0},
            "fast_lane.every_seconds: Input should be greater than or equal to 1",
        ),
        ({"enable": True}, "fast_lane.enable: unknown setting"),
    ],
)
def test_a_bad_value_is_named(tmp_path, lane, problem):
    with pytest.raises(ConfigError, match="invalid configuration") as error:
        load_clinic(clinic(tmp_path, fast_lane=lane))
    assert problem in str(error.value)
