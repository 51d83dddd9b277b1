"""Names a template uses that no message's context has, found in its text, every branch at once.

Rendering against the sample context (tasks/messages/templates.py) only walks the branches the
sample takes: ``{% if appointment.practitioner %}...{% else %}{{ appointment.dya }}{% endif %}``
rendered cleanly, and the typo surfaced at send time, as a message skipped. Here the parsed
template is read instead: ``patient.x`` / ``appointment['x']`` of a variable the sample context
holds as a mapping must be one of its keys, and a top-level ``{{ x }}`` one of the context's (or
Jinja's globals; names the template sets itself, loop variables and macro arguments are its own).
A name the template guards (``x is defined``, ``x is undefined``, ``x | default(...)``) may be
missing. The templates it extends, includes or imports are read too, against every name any
message has (a layout's marketing footer names ``unsubscribe_url``, which a transactional
template's messages lack but its ``footer`` block replaces).

The names come from the sample context, built as every real one is (``build_context``): no
second list of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jinja2
from jinja2 import meta, nodes

_GUARD_TESTS = {"defined", "undefined"}
_GUARD_FILTERS = {"default", "d"}
_SHOWN = 12  # names listed in the error, at most


def unknown_name(
    env: jinja2.Environment, name: str, part: str, context: Mapping[str, Any],
    every: Mapping[str, Any],
) -> str | None:  # fmt: skip
    """What is wrong (for a TemplateError) with the first name ``name/part``, or a template it
    uses, reads that no message has; None when there is none. ``context``: the variables this
    use's messages have (its keys); ``every``: a sample with every variable set."""
    seen: set[str] = set()
    queue = [(f"{name}/{part}", part, set(context))]
    while queue:
        path, label, top = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        try:
            source, filename, _ = env.loader.get_source(env, path)  # type: ignore[union-attr]
            tree = env.parse(source, path, filename)
        except jinja2.TemplateNotFound:
            continue  # one in a branch the sample never takes: not this check's business
        except jinja2.TemplateSyntaxError as exc:
            return f"template {name!r}: {exc.filename} line {exc.lineno}: {exc.message}"
        unknown = _unknown(env, tree, top, every)
        if unknown:
            line, what, known = unknown
            return (
                f"template {name!r} ({label}) line {line}: {what} is not a variable messages "
                f"have ({_listed(known)}); correct the name, or guard it with "
                f"{{% if {what} is defined %}}."
            )
        for used in meta.find_referenced_templates(tree):
            if used is not None:  # a name worked out at render time is not followed
                queue.append((used, used, set(every)))
    return None


def _unknown(
    env: jinja2.Environment, tree: nodes.Template, top: set[str], every: Mapping[str, Any]
) -> tuple[int, str, list[str]] | None:
    """(line, the name as written, the names there are) of the first unknown name, or None."""
    guarded = {_key(n.node) for n in tree.find_all(nodes.Test) if n.name in _GUARD_TESTS}
    guarded |= {
        _key(n.node) for n in tree.find_all(nodes.Filter)
        if n.name in _GUARD_FILTERS and n.node is not None
    }  # fmt: skip
    own = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    found: list[tuple[int, str, list[str]]] = []
    undeclared = meta.find_undeclared_variables(tree) - top - set(env.globals)
    for n in tree.find_all(nodes.Name):
        if n.ctx == "load" and n.name in undeclared and (n.name,) not in guarded:
            found.append((n.lineno, n.name, sorted(top)))
    for node, var, attr in _lookups(tree):
        value = every.get(var)
        if var in own or not isinstance(value, Mapping) or (var, attr) in guarded:
            continue
        if isinstance(env.getattr(value, attr), jinja2.Undefined):  # as a render looks it up
            found.append((node.lineno, f"{var}.{attr}", sorted(value)))
    return min(found, key=lambda f: f[0]) if found else None


def _lookups(tree: nodes.Template) -> Iterator[tuple[nodes.Node, str, str]]:
    """``var.attr`` and ``var['attr']`` on a plain name: (node, var, attr)."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        key = _key(node)
        if len(key) == 2:
            yield node, key[0], key[1]


def _key(node: nodes.Node) -> tuple[str, ...]:
    """``x`` as (x,), ``x.y`` / ``x['y']`` as (x, y); anything else as ()."""
    if isinstance(node, nodes.Name):
        return (node.name,)
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name):
        return (node.node.name, node.attr)
    if (
        isinstance(node, nodes.Getitem)
        and isinstance(node.node, nodes.Name)
        and isinstance(node.arg, nodes.Const)
        and isinstance(node.arg.value, str)
    ):
        return (node.node.name, node.arg.value)
    return ()


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")
    return f"there are: {shown}" if names else "there are none"
