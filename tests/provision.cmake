# Consortium PKI and `fedseg provision` (owned by the PKI area).
fs_add_test(test_pki ${CMAKE_CURRENT_LIST_DIR}/test_pki.c)
add_test(NAME test_provision COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/test_provision.sh)
set_tests_properties(test_provision PROPERTIES ENVIRONMENT "FS_FEDSEG=$<TARGET_FILE:fedseg>"
                     SKIP_RETURN_CODE 77 TIMEOUT 300)
