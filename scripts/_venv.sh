# Sourced by the README's commands: create or reuse .venv and install the project into it.
# Usage: . scripts/_venv.sh EXTRAS   (EXTRAS: "" for the core, or e.g. "test")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MTRL_VENV:-$ROOT/.venv}"
EXTRAS="${1:-}"

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1; then PY="$candidate"; break; fi
  done
fi
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "mtrl needs Python >= 3.11 (found: $("$PY" --version 2>&1))" >&2; exit 1; }

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"

# Reinstall only when the dependency declaration or the requested extras change.
SPEC=".${EXTRAS:+[$EXTRAS]}"
STAMP="$VENV/.mtrl-install-$(echo "$EXTRAS" | tr -c 'a-z0-9' '_')"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[mtrl] installing mtrl${EXTRAS:+ with extras [$EXTRAS]} into $VENV" \
       "(first time: a few minutes; one line per package follows)" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  # pip's own progress, one line per package, without the build backends' warnings.
  (cd "$ROOT" && "$VENV/bin/python" -m pip install -e "$SPEC" 2>&1 \
     | { grep --line-buffered -E '^(Collecting|Installing collected|Successfully installed|ERROR)' || true; } >&2)
  echo "$WANT" > "$STAMP"
  echo "[mtrl] installed" >&2
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
