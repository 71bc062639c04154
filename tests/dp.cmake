# Differential privacy (common/dp.h): the RDP accountant against Google's
# dp-accounting (tests/data/dp_rdp_reference.txt from tests/make_dp_reference.py),
# clipping, Gaussian noise, the exact discrete Gaussian sampler, adaptive
# clipping, the budget stop and parameter messages (a few seconds).
fs_add_test(test_dp test_dp.c)
set_tests_properties(test_dp PROPERTIES TIMEOUT 300)
