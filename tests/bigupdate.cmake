# Item 1 of the federation issue: two 400 MiB updates (104,857,600 parameters)
# through the aggregator's server glue, the round state machine and the
# transport over mutual TLS; checks the FedAvg result bit for bit and that the
# aggregator's peak memory (printed) stays O(P). About 10-20 s here; skips
# (77) with less than 6 GiB of memory or disk. Label "big" (ctest -L big).
fs_add_test(test_agg_big test_agg_big.c)
set_tests_properties(test_agg_big PROPERTIES LABELS "big" TIMEOUT 900)
