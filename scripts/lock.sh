#!/usr/bin/env bash
# Regenerate image/requirements.lock: resolve image/pyproject.toml's dependency ranges (plus the duckdb cap the
# header explains) with pip's resolver for the interpreter that runs it (run it on Linux x86_64 with CPython 3.11,
# what the image and CI use), and pin every package it picks.
# Nothing is installed. Review the diff, then rebuild the venv (scripts/setup.sh notices the change).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
report=$(mktemp)
trap 'rm -f "$report"' EXIT
mapfile -t deps < <("$python" - <<'PY'
import tomllib
print(*tomllib.load(open("image/pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")
PY
)
"$python" -m pip install --quiet --dry-run --ignore-installed --report "$report" "${deps[@]}" "duckdb<2"
{
  sed -n '/^#/p;/^[^#]/q' image/requirements.lock   # keep the header
  "$python" - "$report" <<'PY'
import json, sys
for item in sorted(json.load(open(sys.argv[1]))["install"], key=lambda i: i["metadata"]["name"].lower()):
    print(f'{item["metadata"]["name"].lower()}=={item["metadata"]["version"]}')
PY
} > image/requirements.lock.new
mv image/requirements.lock.new image/requirements.lock
echo "lock: $(grep -c '==' image/requirements.lock) pins written to image/requirements.lock"
