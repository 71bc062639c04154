# U-Net, checkpoints, metrics, trainer (owned by the model area).
fs_add_test(test_unet ${CMAKE_CURRENT_LIST_DIR}/test_unet.c)
fs_add_test(test_ckpt ${CMAKE_CURRENT_LIST_DIR}/test_ckpt.c)
fs_add_test(test_metrics ${CMAKE_CURRENT_LIST_DIR}/test_metrics.c)
fs_add_test(test_fedavg ${CMAKE_CURRENT_LIST_DIR}/test_fedavg.c)
add_test(NAME test_cli_model COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/test_cli_model.sh)
set_tests_properties(test_cli_model PROPERTIES ENVIRONMENT "FS_FEDSEG=$<TARGET_FILE:fedseg>" TIMEOUT 900)
fs_add_test(test_unet_cuda ${CMAKE_CURRENT_LIST_DIR}/test_unet_cuda.c)
set_tests_properties(test_unet_cuda PROPERTIES LABELS "gpu;cuda")
