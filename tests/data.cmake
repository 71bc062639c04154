# NIfTI reading/writing and BraTS-layout case loading (node/nifti_io.c,
# node/dataset.c). Both programs write their own small volumes into a fresh
# temporary directory; nothing binary is committed.
fs_add_test(test_nifti test_nifti.c)
fs_add_test(test_dataset test_dataset.c)
