#!/usr/bin/env bash
# Build Dovecot's IMAP tester, imaptest, once into a cache outside git and print its binary's path.
#   scripts/imaptest.sh        stdout: exactly one line, the path (e.g. <repo>/.cache/imaptest/imaptest)
# Used by tests/e2e/test_imaptest.py (compliance groups, direct and through the gateway) and by
# scripts/imaptest_stress.py (make fuzz). The source is the pinned reference next to the repo,
# ../shared/reference/imaptest (build.sh, the upstream tarball, a patch for Debian's Dovecot 2.3.19);
# IMAPTEST_REFERENCE overrides that dir, IMAPTEST_CACHE the output dir (default <repo>/.cache/imaptest).
# First run ~15 s (needs root to apt-get dovecot-dev and the autotools, via scripts/deps.sh);
# afterwards it only checks a stamp, so a rebuild happens when the reference files change.
# Everything but the final path goes to stderr, so callers can use "$(scripts/imaptest.sh)".
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REF=${IMAPTEST_REFERENCE:-$ROOT/../shared/reference/imaptest}
OUT=${IMAPTEST_CACHE:-$ROOT/.cache/imaptest}
BUILD_PACKAGES=(dovecot-dev autoconf automake libtool pkg-config gcc make patch)

die() { echo "imaptest.sh: $*" >&2; exit 1; }

[[ -x $REF/build.sh ]] || die "no $REF/build.sh: the imaptest reference (shared/reference/imaptest) must sit beside the repo"
REF=$(cd "$REF" && pwd)

# The stamp names the exact inputs; a changed tarball, patch or build.sh means a rebuild.
stamp_of_inputs() { (cd "$REF" && sha256sum build.sh ./*.tar.gz ./*.patch); }
want=$(stamp_of_inputs)
built() { [[ -x $OUT/imaptest && -x $OUT/src/src/imaptest && -d $OUT/tests && -f $OUT/.stamp ]] &&
          [[ $(cat "$OUT/.stamp") == "$want" ]]; }

if built; then echo "$OUT/imaptest"; exit 0; fi

mkdir -p "$(dirname "$OUT")"
# Two runs building at once (two terminals, a test and `make fuzz`) would trample one tree.
exec 9>"$OUT.lock"
flock 9
if built; then echo "$OUT/imaptest"; exit 0; fi

"$ROOT/scripts/deps.sh" "${BUILD_PACKAGES[@]}" >&2
echo "imaptest.sh: building imaptest from $REF into $OUT" >&2
rm -rf "$OUT"
"$REF/build.sh" "$OUT" >&2 || die "build failed; log: $OUT/build.log"
# Smoke check without running it (imaptest with no arguments stress-tests 127.0.0.1:143):
# every shared library resolves with the library path the wrapper sets.
if LD_LIBRARY_PATH=/usr/lib/dovecot ldd "$OUT/src/src/imaptest" | grep -q 'not found'; then
  die "$OUT/src/src/imaptest has unresolved libraries: $(LD_LIBRARY_PATH=/usr/lib/dovecot ldd "$OUT/src/src/imaptest" | grep 'not found')"
fi
printf '%s\n' "$want" >"$OUT/.stamp"
echo "$OUT/imaptest"
