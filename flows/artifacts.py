"""A flow's artifacts: their keys (the same key each run, so the UI shows their history) and
what a step hands back, so that a step run alone publishes its own artifact and the same step in
a tick adds it to the tick's one summary instead (flows/tick.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def artifact_key(*parts: str) -> str:
    """``parts`` joined by dashes, e.g. ("tick", "north_side") -> "tick-north-side": Prefect allows
    only lowercase letters, digits and dashes in a key, and a clinic's name may hold an underscore."""
    return "-".join(parts).replace("_", "-")


@dataclass
class Artifact:
    """One artifact of a step: a table (rows of counts) or markdown. Counts only, never a person:
    anyone with the UI reads it."""

    key: str
    description: str
    table: list[dict] | None = None
    markdown: str | None = None

    def publish(self) -> None:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact

        if self.table is not None:
            create_table_artifact(self.table, key=self.key, description=self.description)
        else:
            create_markdown_artifact(
                self.markdown or "", key=self.key, description=self.description
            )

    def section(self) -> str:
        """As a section of the tick's summary: its description as the heading, then the table."""
        body = self.markdown or ""
        if self.table is not None:
            body = markdown_table(self.table)
        body = body.replace("\n# ", "\n### ").removeprefix("# ")  # a markdown's own title
        return f"### {self.description}\n\n{body}"


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(c for row in rows for c in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = ("" if row.get(c) is None else str(row.get(c)) for c in columns)
        lines.append(
            "| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |"
        )
    return "\n".join(lines)


@dataclass
class StepOutput:
    """What a step did: ``result`` (counts: the flow's return value, the tick's input), the
    artifacts it shows and how many Prefect task runs it made (the tick lets the server record
    them before writing to it again: flows/settle.py)."""

    result: Any
    artifacts: list[Artifact] = field(default_factory=list)
    task_runs: int = 0

    def publish(self) -> Any:
        """A step run alone (its own flow): publish each artifact; return the counts."""
        for artifact in self.artifacts:
            artifact.publish()
        return self.result


def call(task: Any, as_tasks: bool) -> Any:
    """``task`` itself (a Prefect task run each call: a step run alone shows its inner tasks)
    or its plain function (inside the tick, where the step is already one task)."""
    return task if as_tasks else task.fn
