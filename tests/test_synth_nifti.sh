#!/bin/sh
# tests/test_synth_nifti.sh — every volume `fedseg synth` writes passes
# nifti_tool's header and image checks (Debian nifti-bin), at each site's
# datatype. Skips (77) without nifti_tool or the default anatomy.
set -u
FEDSEG=${FS_FEDSEG:?FS_FEDSEG is not set}
command -v nifti_tool > /dev/null || { echo "SKIP: nifti_tool not installed (apt-get install nifti-bin)"; exit 77; }
[ -r /usr/share/mricron/templates/ch2bet.nii.gz ] || { echo "SKIP: mricron-data missing"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/fs_synth_nifti.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
"$FEDSEG" synth --out "$T/f" --cases-per-site 1,1,1 --voxel-scale 2 --quiet --seed 3 || { echo "FAIL: synth"; exit 1; }
fail=0
for f in $(find "$T/f" -name '*.nii.gz' | sort); do
    out=$(nifti_tool -check_hdr -check_nim -infiles "$f" 2>&1)
    echo "$out" | grep -q "header IS GOOD" && echo "$out" | grep -q "nifti_image IS GOOD" ||
        { echo "FAIL: $f: $out"; fail=1; }
done
[ $fail -eq 0 ] && echo "all checks passed"
exit $fail
