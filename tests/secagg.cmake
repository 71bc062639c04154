# Secure aggregation (common/secagg.c, secagg_msg.c, shamir.c): mask
# expansion known answers, Shamir, quantisation, whole rounds with every
# dropout pattern, uniformity of masked inputs, tampered shares, decoders.
# Pure logic, in process. The message decoders are also fuzzed
# (tests/fuzz/fuzz_secagg.c; its corpus is replayed by fuzz_replay_secagg).
fs_add_test(test_secagg test_secagg.c)
set_tests_properties(test_secagg PROPERTIES TIMEOUT 600)

# Fuzzing the decoders: replay the saved corpus in every build; with
# -DFS_FUZZ=ON (clang) also a real libFuzzer program fuzz_secagg, e.g.
#   build-fuzz/tests/fuzz_secagg tests/fuzz/corpus/secagg -max_total_time=600
add_executable(fuzz_replay_secagg ${CMAKE_CURRENT_LIST_DIR}/fuzz/replay.c
               ${CMAKE_CURRENT_LIST_DIR}/fuzz/fuzz_secagg.c)
target_link_libraries(fuzz_replay_secagg PRIVATE fs_node)
add_test(NAME fuzz_replay_secagg COMMAND fuzz_replay_secagg ${CMAKE_CURRENT_LIST_DIR}/fuzz/corpus/secagg)
set_tests_properties(fuzz_replay_secagg PROPERTIES TIMEOUT 300)
if(FS_FUZZ)
  add_executable(fuzz_secagg ${CMAKE_CURRENT_LIST_DIR}/fuzz/fuzz_secagg.c)
  target_link_libraries(fuzz_secagg PRIVATE fs_node)
  target_compile_options(fuzz_secagg PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_options(fuzz_secagg PRIVATE -fsanitize=fuzzer,address,undefined)
endif()
