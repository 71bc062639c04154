# Kernel tests: the CPU backend (the specification) against central finite
# differences and naive double-precision loops, op by op.
fs_add_test(test_kernels_fd ${CMAKE_CURRENT_LIST_DIR}/test_kernels_fd.c)
