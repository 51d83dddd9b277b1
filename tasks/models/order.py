"""The order models are built in: each after the models it reads (tasks/models/project.py).

Plain names in, plain names out: the project turns a cycle into its message (or, building,
into files held like any broken file)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def dependency_order(
    depends_on: Mapping[str, Iterable[str]],
) -> tuple[list[str], list[str] | None]:
    """The relations of ``depends_on`` in an order where each comes after those of them it
    reads (a name it reads that is not a key is a source: no constraint), and None; or, when
    some read each other in a cycle, ``([], cycle)``: the relations forming the first cycle
    met, in reading order, the first repeated at the end."""
    ordered: list[str] = []
    state: dict[str, str] = {}  # relation -> 'visiting' | 'done'

    def visit(relation: str, path: list[str]) -> list[str] | None:
        if state.get(relation) == "done":
            return None
        if state.get(relation) == "visiting":
            return path[path.index(relation) :] + [relation]
        state[relation] = "visiting"
        for dep in depends_on[relation]:
            if dep in depends_on and (cycle := visit(dep, path + [relation])):
                return cycle
        state[relation] = "done"
        ordered.append(relation)
        return None

    for relation in sorted(depends_on):
        if cycle := visit(relation, []):
            return [], cycle
    return ordered, None
