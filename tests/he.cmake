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
