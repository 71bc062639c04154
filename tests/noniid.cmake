# Non-IID federations: server optimisers (aggregator/server_opt.c), robust
# aggregation (aggregator/robust.c), SCAFFOLD and FedBN on the node
# (node/noniid.c), and the round state machine with these algorithms.
fs_add_test(test_server_opt test_server_opt.c)
fs_add_test(test_robust test_robust.c)
fs_add_test(test_noniid_round test_noniid_round.c)
fs_add_test(test_noniid_node test_noniid_node.c)
# End to end: `fedseg sim` with SCAFFOLD + personalisation and with FedAdam +
# median; refused combinations (about 40 s on 2 idle cores).
add_test(NAME test_noniid_sim COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/test_noniid_sim.sh)
set_tests_properties(test_noniid_sim PROPERTIES ENVIRONMENT "FS_FEDSEG=$<TARGET_FILE:fedseg>"
                     WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR} TIMEOUT 600 SKIP_RETURN_CODE 77)
