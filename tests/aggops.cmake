# Aggregator arithmetic ops (kernels/cpu/cpu_aggops.c, kernels/cuda/cuda_aggops.cu).
#   test_aggops       the CPU versions against naive loops, RFC 8439 and libsodium's
#                     ChaCha20, and known answers
#   test_aggops_cuda  CUDA against the CPU (exits 77 = SKIP without a CUDA build or device)
fs_add_test(test_aggops ${CMAKE_CURRENT_LIST_DIR}/test_aggops.c)
fs_add_test(test_aggops_cuda ${CMAKE_CURRENT_LIST_DIR}/test_aggops_cuda.c)
set_tests_properties(test_aggops_cuda PROPERTIES LABELS "cuda;gpu" TIMEOUT 600)
# The benchmark's correctness gates on a small CPU run (every op is checked
# against its naive loop before it is timed; a failed check exits 1).
add_test(NAME bench_aggops_smoke COMMAND bench_aggops --device cpu --n 50001 --k 3 --reps 1 --threads 2)
set_tests_properties(bench_aggops_smoke PROPERTIES FAIL_REGULAR_EXPRESSION "CHECK FAILED" TIMEOUT 300)
