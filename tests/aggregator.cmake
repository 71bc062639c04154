# The aggregator server (aggregator/server.c, `fedseg aggregator`) and the
# aggregation fold op. test_agg_fold: the backend fold (CPU) against
# aggregator/fedavg.h bit for bit, and the round sum on CPU / CUDA.
fs_add_test(test_agg_fold test_agg_fold.c)
# `fedseg aggregator` end to end with fake sites over mutual TLS: refusals,
# hostile updates, SIGKILL + resume with an exact FedAvg result, FINISHED and
# linger (about 10-20 s).
fs_add_test(test_agg_server test_agg_server.c)
set_tests_properties(test_agg_server PROPERTIES TIMEOUT 180)
# The aggregator with two real `fedseg node` processes (synthetic data, 2
# rounds): exits, per-round lines and metrics, final models (about 10 s).
add_test(NAME test_agg_node COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/test_agg_node.sh)
set_tests_properties(test_agg_node PROPERTIES ENVIRONMENT "FS_FEDSEG=$<TARGET_FILE:fedseg>"
                     WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR} TIMEOUT 240)
