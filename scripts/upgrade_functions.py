#!/usr/bin/env python3
"""Regenerates the functions section of an upgrade script.

Every function of the new version's install script (as `cargo pgrx schema`
writes it) becomes a CREATE OR REPLACE FUNCTION, sorted by name, between
the markers of the upgrade script:

    python3 scripts/upgrade_functions.py NEW_INSTALL.sql sql/segments--FROM--TO.sql

Given the old version's install script too, only the functions that are new
or changed (comments aside) are written, so the upgrade script holds what
the release changes and nothing else:

    python3 scripts/upgrade_functions.py OLD_INSTALL.sql NEW_INSTALL.sql sql/segments--FROM--TO.sql

Functions whose arguments or result changed must be dropped by hand in the
script's prologue first; tables, views, triggers, grants and comments are
written by hand around the markers. scripts/upgrade_test.sh checks the
result: an upgraded schema must equal a fresh install.
"""
import re
import sys

BEGIN = "-- BEGIN GENERATED FUNCTIONS (scripts/upgrade_functions.py)\n"
END = "-- END GENERATED FUNCTIONS\n"


def statements(sql):
    """Splits SQL into statements, honouring $$-quoted bodies and comments."""
    out, current, i, dollar = [], [], 0, None
    while i < len(sql):
        if dollar:
            j = sql.find(dollar, i)
            if j < 0:
                current.append(sql[i:])
                break
            current.append(sql[i:j + len(dollar)])
            i = j + len(dollar)
            dollar = None
            continue
        m = re.compile(r"\$[A-Za-z_]*\$|--[^\n]*\n|/\*.*?\*/|'(?:[^']|'')*'|;", re.S).search(sql, i)
        if not m:
            current.append(sql[i:])
            break
        current.append(sql[i:m.start()])
        token = m.group(0)
        if token == ";":
            current.append(";")
            out.append("".join(current).strip())
            current = []
        elif token.startswith("--"):
            current.append("\n")
        elif token.startswith("/*"):
            current.append(token)
        else:
            current.append(token)
            if token.startswith("$"):
                dollar = token
        i = m.end()
    return [s for s in out if s]


def functions(install_sql):
    found = []
    for statement in statements(install_sql):
        statement = re.sub(r"^(?:\s|/\*.*?\*/)+", "", statement, flags=re.S)
        m = re.match(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(\S+?)\s*\(", statement, re.S)
        if m:
            name = m.group(1).replace('"', "")
            body = re.sub(r"^CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION", "CREATE OR REPLACE FUNCTION", statement, flags=re.S)
            found.append((name, body))
    found.sort(key=lambda f: (f[0], f[1]))
    return found


def signature(body):
    """A function's name and argument list, as its CREATE statement spells them."""
    m = re.match(r"CREATE OR REPLACE FUNCTION\s+(\S+?\s*\(.*?\))\s*RETURNS", body, re.S)
    return re.sub(r"\s+", " ", m.group(1) if m else body.split("RETURNS")[0])


def normalized(body):
    return re.sub(r"\s+", " ", re.sub(r"/\*.*?\*/", "", body, flags=re.S)).strip()


def main():
    if len(sys.argv) == 4:
        old_install, install, upgrade = sys.argv[1:4]
        old = {normalized(body) for _, body in functions(open(old_install).read())}
        old_signatures = {signature(body) for _, body in functions(open(old_install).read())}
        new_signatures = {signature(body) for _, body in functions(open(install).read())}
        chosen = [(n, b) for n, b in functions(open(install).read()) if normalized(b) not in old]
        for gone in sorted(old_signatures - new_signatures):
            print(f"note: {gone} is not in the new version: drop it in the script's prologue", file=sys.stderr)
    else:
        install, upgrade = sys.argv[1], sys.argv[2]
        chosen = functions(open(install).read())
    text = open(upgrade).read()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    section = "".join(f"{body}\n\n" for _, body in chosen)
    open(upgrade, "w").write(head + BEGIN + section + END + tail)


if __name__ == "__main__":
    main()
