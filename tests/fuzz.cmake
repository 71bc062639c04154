# Fuzzing. Every build replays the saved corpora (tests/fuzz/corpus/<target>/)
# through the targets with a plain driver (tests/fuzz/replay.c); with
# -DFS_FUZZ=ON and clang as the C compiler, real libFuzzer programs
# fuzz_nifti and fuzz_ckpt are built as well (docs/kernels.md § Fuzzing).
foreach(t nifti ckpt wire)
  add_executable(fuzz_replay_${t} ${CMAKE_CURRENT_LIST_DIR}/fuzz/replay.c ${CMAKE_CURRENT_LIST_DIR}/fuzz/fuzz_${t}.c)
  target_link_libraries(fuzz_replay_${t} PRIVATE fs_node)
  add_test(NAME fuzz_replay_${t} COMMAND fuzz_replay_${t} ${CMAKE_CURRENT_LIST_DIR}/fuzz/corpus/${t})
  set_tests_properties(fuzz_replay_${t} PROPERTIES TIMEOUT 300)
  if(FS_FUZZ)
    add_executable(fuzz_${t} ${CMAKE_CURRENT_LIST_DIR}/fuzz/fuzz_${t}.c)
    target_link_libraries(fuzz_${t} PRIVATE fs_node)
    target_compile_options(fuzz_${t} PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer,address,undefined)
  endif()
endforeach()
