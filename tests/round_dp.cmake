# Central differential privacy in the round state machine: clip bound,
# unweighted fixed-denominator average, noise statistics, ε ledger and budget.
fs_add_test(test_round_dp test_round_dp.c)
