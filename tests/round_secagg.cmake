# Secure aggregation in the round state machine, with in-process sites:
# exact weighted mean, dropout recovery, abandoned attempt, refusals.
fs_add_test(test_round_secagg test_round_secagg.c)
