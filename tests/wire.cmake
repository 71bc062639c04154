# The federation message codec (common/wire.c) and the config-file parser
# (common/config.c). Both are pure: no network, files only in a fresh
# temporary directory. The codec is also fuzzed (tests/fuzz/fuzz_wire.c;
# its saved corpus is replayed by fuzz_replay_wire, see fuzz.cmake).
fs_add_test(test_wire test_wire.c)
fs_add_test(test_config test_config.c)
