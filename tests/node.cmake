# Site node (owned by the node area): the local-training session and the
# federation client loop against a fake aggregator (mutual TLS over 127.0.0.1,
# certificates made in-process by common/provision.c).
fs_add_test(test_session ${CMAKE_CURRENT_LIST_DIR}/test_session.c)
set_tests_properties(test_session PROPERTIES TIMEOUT 300)
fs_add_test(test_node_fake ${CMAKE_CURRENT_LIST_DIR}/test_node_fake.c)
set_tests_properties(test_node_fake PROPERTIES TIMEOUT 600)
