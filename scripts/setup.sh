# shellcheck shell=bash
# Shared setup for run.sh and test.sh (sourced, not executed).
#
#   mb_setup_venv [EXTRAS]   create .venv and pip install -e ".[EXTRAS]" (skipped when
#                            pyproject.toml is unchanged since the last install)
#   mb_ensure_jackd          install jackd2 (apt) / jack (brew) when jackd is missing
#
# Environment: PYTHON (interpreter to build .venv with; default python3, or the newest
# python3.12/3.11/3.10 when python3 is outside 3.10-3.12), MB_TORCH (torch pinned when the
# venv has none; default torch==2.13.0).

MB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MB_VENV="$MB_ROOT/.venv"
MB_STAMP="$MB_VENV/.midi-bridge-installed"
MB_TORCH="${MB_TORCH:-torch==2.13.0}"

mb_say() { echo "midi-bridge setup: $*" >&2; }
mb_die() { mb_say "error: $*"; exit 1; }

# Run a command as root (sudo when needed).
mb_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        mb_die "need root to run: $* (install sudo or run as root)"
    fi
}

mb_apt_install() {
    mb_say "installing $* with apt-get"
    mb_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        mb_as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "$@" ||
        mb_die "apt-get install $* failed"
}

# "3.11" for an interpreter, empty when it does not run.
mb_py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

# python-rtmidi 1.5.8 has wheels for CPython 3.10-3.12 only (and we need >= 3.10).
mb_py_supported() { case "$1" in 3.10 | 3.11 | 3.12) return 0 ;; *) return 1 ;; esac; }

mb_pick_python() {
    local py="${PYTHON:-python3}" ver cand
    command -v "$py" >/dev/null 2>&1 || mb_die "'$py' not found; install Python 3.10-3.12 or set PYTHON"
    ver="$(mb_py_version "$py")"
    if mb_py_supported "$ver"; then echo "$py"; return; fi
    if [ -n "${PYTHON:-}" ]; then
        mb_say "warning: PYTHON=$PYTHON is Python $ver; python-rtmidi 1.5.8 has wheels only for 3.10-3.12, pip may have to compile it"
        echo "$py"; return
    fi
    for cand in python3.12 python3.11 python3.10; do
        if command -v "$cand" >/dev/null 2>&1 && mb_py_supported "$(mb_py_version "$cand")"; then
            mb_say "python3 is $ver; using $cand (python-rtmidi 1.5.8 has wheels for 3.10-3.12)"
            echo "$cand"; return
        fi
    done
    mb_die "python3 is $ver, but midi-bridge needs Python 3.10-3.12 (python-rtmidi 1.5.8 ships wheels up to CPython 3.12). Install python3.12 (or 3.11) and rerun, or set PYTHON=/path/to/python3.12."
}

mb_create_venv() {
    local py="$1" ver err
    ver="$(mb_py_version "$py")"
    mb_say "creating .venv with $py (Python $ver)"
    rm -rf "$MB_VENV"
    if err="$("$py" -m venv "$MB_VENV" 2>&1)"; then return 0; fi
    rm -rf "$MB_VENV"
    # Debian/Ubuntu ship venv/ensurepip separately: python3-venv (or python3.X-venv).
    command -v apt-get >/dev/null 2>&1 ||
        mb_die "$py -m venv failed (install your distribution's venv package):"$'\n'"$err"
    if [ "$(command -v "$py")" = "$(command -v python3 2>/dev/null)" ]; then
        mb_apt_install python3-venv
    else
        mb_apt_install "python$ver-venv"
    fi
    "$py" -m venv "$MB_VENV" || { rm -rf "$MB_VENV"; mb_die "$py -m venv .venv failed"; }
}

mb_stamp_value() { # what the stamp must say for EXTRAS to count as installed
    printf '%s extras=%s\n' "$(cksum <"$MB_ROOT/pyproject.toml" | tr -s ' \t' '-')" "$1"
}

mb_setup_venv() {
    local extras="${1:-}" spec="." py
    [ -n "$extras" ] && spec=".[$extras]"
    if [ ! -x "$MB_VENV/bin/python" ] || ! "$MB_VENV/bin/python" -c '' >/dev/null 2>&1; then
        py="$(mb_pick_python)" || exit 1
        mb_create_venv "$py"
    fi
    # Quick path: nothing changed since the last install.  A stamp for the dev extra also
    # covers a plain install.
    if [ -f "$MB_STAMP" ] && [ -x "$MB_VENV/bin/midi-bridge" ]; then
        local have
        have="$(cat "$MB_STAMP")"
        if [ "$have" = "$(mb_stamp_value "$extras")" ] ||
            { [ -z "$extras" ] && [ "$have" = "$(mb_stamp_value dev)" ]; }; then
            return 0
        fi
    fi
    local pip=("$MB_VENV/bin/python" -m pip install --disable-pip-version-check)
    rm -f "$MB_STAMP"
    if ! "$MB_VENV/bin/python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is None)'; then
        if [ "$(uname -s)" = Darwin ] &&
            [ "$("$MB_VENV/bin/python" -c 'import platform; print(platform.machine())')" = x86_64 ]; then
            mb_die "PyTorch publishes no macOS wheels for Intel (x86_64) Pythons after torch 2.2, and midi-bridge needs torch >= 2.10. On an Apple Silicon Mac, use a native arm64 Python (not one under Rosetta): rm -rf .venv and rerun with PYTHON=/path/to/arm64/python3.12. On an Intel Mac, install torch >= 2.10 into .venv yourself (e.g. built from source) and rerun: the setup keeps a torch it finds there."
        fi
        mb_say "installing $MB_TORCH"
        "${pip[@]}" "$MB_TORCH" || mb_die "pip install $MB_TORCH failed"
    fi
    mb_say "pip install -e '$spec'"
    (cd "$MB_ROOT" && "${pip[@]}" -e "$spec") || mb_die "pip install -e '$spec' failed"
    if [ "$extras" = dev ]; then
        # The plugin test installs a fixture with --no-build-isolation: needs setuptools.
        "${pip[@]}" -q "setuptools>=64" || mb_die "pip install setuptools failed"
    fi
    mb_stamp_value "$extras" >"$MB_STAMP"
}

mb_ensure_jackd() {
    command -v jackd >/dev/null 2>&1 && return 0
    case "$(uname -s)" in
    Linux)
        command -v apt-get >/dev/null 2>&1 ||
            mb_die "jackd not found: install the JACK2 server (jackd2) with your package manager"
        mb_apt_install jackd2
        ;;
    Darwin)
        command -v brew >/dev/null 2>&1 ||
            mb_die "jackd not found: install Homebrew (https://brew.sh), then: brew install jack"
        mb_say "installing jack with brew"
        brew install jack || mb_die "brew install jack failed"
        ;;
    *) mb_die "jackd not found: install the JACK2 server (jackd2) for $(uname -s)" ;;
    esac
    command -v jackd >/dev/null 2>&1 || mb_die "jackd still not on PATH after installing it"
}
