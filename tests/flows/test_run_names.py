"""Every flow run has a name that says what it is (`tick-demo`, `sync-demo`, ...), never one of
Prefect's generated names ("shiny-smilodon"): each flow of flows/ names its runs."""

from __future__ import annotations

import importlib
from pathlib import Path

from prefect import Flow

FLOWS = Path(__file__).resolve().parents[2] / "flows"


def test_every_flow_names_its_runs():
    flows = [
        value
        for module in sorted(FLOWS.glob("*.py"))
        for value in vars(importlib.import_module(f"flows.{module.stem}")).values()
        if isinstance(value, Flow)
    ]
    assert len({f.name for f in flows}) >= 7
    unnamed = sorted({f.name for f in flows if not f.flow_run_name})
    assert not unnamed, f"flows without flow_run_name: {unnamed}"
