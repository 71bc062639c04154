# Multiparty homomorphic encryption (common/he.h). test_he: NTT against
# schoolbook multiplication, exact sums for 2..100 sites, the site bound,
# t-of-n threshold decryption with dropouts, refusal of tampered or truncated
# objects, quantisation (about 20-40 s on 2 cores).
fs_add_test(test_he ${CMAKE_CURRENT_LIST_DIR}/test_he.c)
set_tests_properties(test_he PROPERTIES LABELS "he" TIMEOUT 600)
# The CUDA kernels (kernels/cuda/he_ntt.cu) against the CPU, bit for bit: NTT,
# INTT, encryption under a seed, modular add; exits 77 without a device.
fs_add_test(test_he_cuda ${CMAKE_CURRENT_LIST_DIR}/test_he_cuda.c)
set_tests_properties(test_he_cuda PROPERTIES LABELS "he;cuda;gpu" TIMEOUT 300)
# The encrypted-aggregation protocol of one attempt (common/he_proto.c): full
# runs in process with dropouts before upload and during decryption,
# abandonment, refusal of malformed, tampered or misdirected messages, the
# server's view without key material (about 1 s on 2 cores). With
# FS_HE_CORPUS=DIR it also writes the fuzzing seeds of tests/fuzz/corpus/he.
fs_add_test(test_he_proto ${CMAKE_CURRENT_LIST_DIR}/test_he_proto.c)
set_tests_properties(test_he_proto PROPERTIES LABELS "he" TIMEOUT 300)
# Fuzzing the parsers of he_wire.c and he_proto.c: replay the saved corpus in
# every build; with -DFS_FUZZ=ON (clang) also a real libFuzzer program, e.g.
#   build-fuzz/tests/fuzz_he tests/fuzz/corpus/he -max_total_time=600
add_executable(fuzz_replay_he ${CMAKE_CURRENT_LIST_DIR}/fuzz/replay.c
               ${CMAKE_CURRENT_LIST_DIR}/fuzz/fuzz_he.c)
target_link_libraries(fuzz_replay_he PRIVATE fs_node)
add_test(NAME fuzz_replay_he COMMAND fuzz_replay_he ${CMAKE_CURRENT_LIST_DIR}/fuzz/corpus/he)
set_tests_properties(fuzz_replay_he PROPERTIES LABELS "he" TIMEOUT 300)
if(FS_FUZZ)
  add_executable(fuzz_he ${CMAKE_CURRENT_LIST_DIR}/fuzz/fuzz_he.c)
  target_link_libraries(fuzz_he PRIVATE fs_node)
  target_compile_options(fuzz_he PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_options(fuzz_he PRIVATE -fsanitize=fuzzer,address,undefined)
endif()
