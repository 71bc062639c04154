# Kernel tests: the CPU backend against finite differences and naive loops.
fs_add_test(test_kernels_fd test_kernels_fd.c)
