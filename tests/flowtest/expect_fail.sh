#!/bin/sh
# tests/flowtest/expect_fail.sh SLUICE — `sluice flow test --cases` on a case
# whose expectation is wrong must exit 1 and show expected against got
# (ctest flow_cases_wrong; the black-box tests/blackbox/test_flowtest.py has more).
out=$("$1" flow test --cases tests/flowtest/wrong 2>&1)
rc=$?
printf '%s\n' "$out"
[ "$rc" -eq 1 ] || { echo "expected exit 1, got $rc"; exit 1; }
printf '%s\n' "$out" | grep -q 'FAIL wrong_outcome: 1 difference' || exit 1
printf '%s\n' "$out" | grep -q 'expected "failed"' || exit 1
printf '%s\n' "$out" | grep -q 'got      "succeeded"' || exit 1
