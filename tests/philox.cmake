# Philox4x32-10 (kernels/philox.h): Random123 known answers, Gaussian moments.
fs_add_test(test_philox test_philox.c)
