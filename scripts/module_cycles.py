#!/usr/bin/env python3
"""Fails when a module of src/ imports one that imports it back, or a
layer imports one above it: `pg` (bindings to PostgreSQL) imports no other
room of the crate, and nothing imports `api` (the SQL surface).

Every `crate::a::b::...` path in a file (use statements and inline paths)
is an edge from that file's module to the deepest module the path names.
A strongly connected component of more than one module is a cycle; the
script prints each with the lines that close it and exits 1.
Run: python3 scripts/module_cycles.py [src]
"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
root = os.path.normpath(root)

modules = {}  # module path ("engine::live::apply") -> file
for directory, _, files in os.walk(root):
    for name in files:
        if not name.endswith(".rs"):
            continue
        path = os.path.join(directory, name)
        rel = os.path.relpath(path, root)[:-3].split(os.sep)
        if rel[-1] in ("mod", "lib"):
            rel = rel[:-1]
        modules["::".join(rel)] = path


def target(parts):
    """The deepest module a path's segments name."""
    for n in range(len(parts), 0, -1):
        candidate = "::".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def expand_use(text):
    """`crate::a::{b, c::d}` in use statements as whole paths."""
    paths = []
    for statement in re.findall(r"use\s+crate::([^;]+);", text, re.S):
        stack = [("", statement.replace("\n", " "))]
        while stack:
            prefix, rest = stack.pop()
            rest = rest.strip()
            m = re.match(r"^([\w:]*?)(::)?\{(.*)\}$", rest)
            if m:
                head = prefix + m.group(1) + ("::" if m.group(1) else "")
                depth, item, items = 0, "", []
                for ch in m.group(3):
                    if ch == "," and depth == 0:
                        items.append(item)
                        item = ""
                        continue
                    depth += ch == "{"
                    depth -= ch == "}"
                    item += ch
                items.append(item)
                stack.extend((head, i) for i in items if i.strip())
            else:
                paths.append(prefix + rest.split(" as ")[0].strip())
    return paths


edges = {m: {} for m in modules}
for module, path in modules.items():
    with open(path) as f:
        lines = f.read().split("\n")
    text = "\n".join(l for l in lines if not l.lstrip().startswith("//"))
    refs = expand_use(text) + re.findall(r"crate::((?:\w+::)*\w+)", text)
    for ref in refs:
        to = target([p for p in ref.split("::") if p and p != "self"])
        if to is None or to == module or module.startswith(to + "::") or to == "":
            continue  # itself, or an ancestor module declaring it
        edges[module].setdefault(to, ref)

# Tarjan's strongly connected components.
index, low, stack, on_stack, components = {}, {}, [], set(), []
counter = [0]


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        component = []
        while True:
            w = stack.pop()
            on_stack.discard(w)
            component.append(w)
            if w == v:
                break
        components.append(component)


sys.setrecursionlimit(10000)
for v in modules:
    if v not in index:
        visit(v)
cycles = [c for c in components if len(c) > 1]
for cycle in cycles:
    print("module cycle: " + " <-> ".join(sorted(cycle)))
    for a in sorted(cycle):
        for b, ref in edges[a].items():
            if b in cycle:
                print(f"  {a} uses crate::{ref}")
def in_room(module, room):
    return module == room or module.startswith(room + "::")


layering = []
for a, targets in edges.items():
    for b, ref in targets.items():
        if in_room(a, "pg") and not in_room(b, "pg"):
            layering.append(f"{a} (beneath every room) uses crate::{ref}")
        if in_room(b, "api") and not in_room(a, "api") and a != "":
            layering.append(f"{a} uses the SQL surface: crate::{ref}")
for line in layering:
    print("layering: " + line)
if cycles or layering:
    sys.exit(1)
print(f"no module cycles among {len(modules)} modules of {os.path.relpath(root)}")
