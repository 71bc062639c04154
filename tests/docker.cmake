# Container files (owned by the deployment docs area): docker/compose.yaml is
# checked against provisioned kits by docker/check_compose.py (no engine needed).
add_test(NAME test_compose COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/test_compose.sh)
set_tests_properties(test_compose PROPERTIES ENVIRONMENT "FS_FEDSEG=$<TARGET_FILE:fedseg>"
                     SKIP_RETURN_CODE 77 TIMEOUT 120)
