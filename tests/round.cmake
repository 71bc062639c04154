# The aggregator's round state machine and crash-safe aggregation
# (aggregator/round.c): pure logic on files in fresh folders under the test's
# working directory, with a fake clock. `test_round NAME` runs one part
# (memory, fedavg, refusals, deadline, min_sites, partial, crash).
fs_add_test(test_round test_round.c)
