# Sourced by the fetch scripts: one pinned PyPI wheel into a folder, checked by hash.
#
#   pinned_wheel DIR WHEEL SHA256 REQUIREMENT [PIP_DOWNLOAD_ARGS...]
#
# Downloads REQUIREMENT (no dependencies, binary only) into DIR and checks that the
# file WHEEL it names there has SHA256; exits on a mismatch. Where python3 has no pip
# (a bare Debian), a throwaway venv in DIR supplies one.
pinned_wheel() {
  local dir=$1 wheel=$2 sha256=$3 requirement=$4
  shift 4
  local pip=(python3 -m pip)
  if ! python3 -m pip --version >/dev/null 2>&1; then
    [ -x "$dir/venv/bin/python" ] || python3 -m venv "$dir/venv" >/dev/null
    pip=("$dir/venv/bin/python" -m pip)
  fi
  "${pip[@]}" download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    "$@" -d "$dir" "$requirement" >&2
  echo "$sha256  $dir/$wheel" | sha256sum -c --quiet - >&2
}
