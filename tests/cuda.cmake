# CUDA backend parity (kernels/cuda/ against kernels/cpu/). Always built: the
# program exits 77 (SKIP) when fedseg has no CUDA backend or no device exists.
fs_add_test(test_cuda_parity ${CMAKE_CURRENT_LIST_DIR}/test_cuda_parity.c)
set_tests_properties(test_cuda_parity PROPERTIES LABELS "cuda;gpu" TIMEOUT 600)
