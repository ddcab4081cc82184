#!/usr/bin/env bash
# The extension's schema as pg_dump sees it, for comparing two databases:
#   schema_of.sh CONNINFO
# (pg_dump of the PostgreSQL first on PATH). Used by scripts/upgrade_test.sh
# (an updated database against a fresh install) and
# scripts/pg_upgrade_test.sh (a pg_upgraded database against a fresh one).
set -euo pipefail
# A dump in binary-upgrade mode lists every member of the extension; what
# depends on the data (OIDs, xids, sequence values, restrict keys) and
# sections left empty by that filter are dropped before comparing; the
# dumped tables' filters are compared as a set.
pg_dump "$1" --binary-upgrade --schema-only --extension=segments --schema=segments \
  | grep -vE "binary_upgrade_set|^-- set missing value|relfrozenxid|^WHERE oid = '[0-9]+';$|pg_catalog.setval|^\\\\(un)?restrict " \
  | sed -E "s/'\\{[0-9,]+\\}'/'{oids}'/" \
  | python3 -c '
import re, sys
text = sys.stdin.read()
# The filters of the extension'"'"'s dumped tables pair with their OIDs (left
# out above): a table an update marks comes last, so compare them as a set.
text = re.sub(r"('"'"'\{oids\}'"'"', '"'"')\{(.*?)\}('"'"', ARRAY)",
            lambda m: m.group(1) + "{" + ",".join(sorted(m.group(2).split(","))) + "}" + m.group(3), text)
sections = text.split("\n--\n-- Name: ")
kept = [s for s in sections[1:] if any(l.strip() and not l.startswith("--") for l in s.split("\n")[2:])]
print("\n--\n-- Name: ".join(sections[:1] + kept))'
