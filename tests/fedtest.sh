# tests/fedtest.sh — shared start of the federation's shell tests (sourced):
#   . "$(dirname "$0")/fedtest.sh"; fedtest_begin WORK_DIR
# sets F (the fedseg binary, from FS_FEDSEG), makes WORK_DIR afresh and enters
# it, sets fail=0, and defines check DESCRIPTION COMMAND... which runs the
# command and records a failure (fail=1) when it does not succeed.
fedtest_begin() {
    F=${FS_FEDSEG:?FS_FEDSEG (the fedseg binary) must be set}
    W=$1
    rm -rf "$W" && mkdir -p "$W" || exit 1
    cd "$W" || exit 1
    fail=0
}

check() { # check DESCRIPTION COMMAND...
    d=$1; shift
    if "$@"; then echo "ok: $d"; else echo "FAIL: $d"; fail=1; fi
}
