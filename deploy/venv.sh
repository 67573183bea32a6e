# Sourced by the scripts that install Python tools from PyPI.
#
# python_tools NAME PIP-ARGUMENTS...: a virtualenv NAME under the tools
# cache (COPILOT_TOOLS_DIR, else ~/.cache/copilot-data) with PIP-ARGUMENTS
# installed, kept between runs; sets $venv to its path. A virtualenv cannot
# be moved (its scripts name their interpreter's path), so it is built in
# place and marked complete last: an interrupted install is redone.
tools=${COPILOT_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/copilot-data}

python_tools() {
  local name=$1
  shift
  venv="$tools/$name"
  if [[ ! -f "$venv/.complete" ]]; then
    echo "installing $name (PyPI)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "$@" >&2
    touch "$venv/.complete"
  fi
}
