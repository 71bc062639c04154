# Encrypted aggregation in the round state machine, with in-process sites:
# exact weighted mean, a dropout before the upload, a decryptor lost (another
# decryption set), an abandoned attempt, refusals (about 10 s on 2 cores).
fs_add_test(test_round_he test_round_he.c)
set_tests_properties(test_round_he PROPERTIES LABELS "he" TIMEOUT 300)
