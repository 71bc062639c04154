# `fedseg sim` and fault injection with real processes (owned by the sim
# area). test_sim_metrics: the metrics-line and final-line readers of
# cli/sim_metrics.c (compiled in, since cli/ is not a library).
fs_add_test(test_sim_metrics ${CMAKE_CURRENT_LIST_DIR}/test_sim_metrics.c ${CMAKE_SOURCE_DIR}/cli/sim_metrics.c)
target_include_directories(test_sim_metrics PRIVATE ${CMAKE_SOURCE_DIR})

# Shell tests: the fedseg binary with synthetic data on 127.0.0.1.
#   test_sim               a small federation end to end, its run folder (about 20 s)
# (times on 2 idle cores; the limits allow for a machine shared with other jobs)
#   test_sim_stop          Ctrl-C, a node killed, the simulation killed: no process left (30-60 s)
#   test_fault_node_kill   a site SIGKILLed mid-round: deadline close, rejoin (30-60 s)
#   test_fault_agg_kill    the aggregator SIGKILLed mid-round: resume, nothing lost or doubled (20-40 s)
#   test_fault_tls         no certificate / another CA / an identity not listed: refused, logged (15-30 s)
#   test_sim_dp            --dp-clip / --dp-epsilon: calibrated noise, epsilon per round, clipping (about 20 s)
#   test_sim_secagg        --secure-agg with dropouts: recovery, an abandoned attempt (about 60 s)
#   test_sim_he            --encrypted with dropouts: recovery, an abandoned attempt (about 90 s)
#   test_fault_he          encrypted rounds: the aggregator SIGKILLed mid-round, a decryptor lost (40-70 s)
foreach(t test_sim test_sim_stop test_fault_node_kill test_fault_agg_kill test_fault_tls test_sim_dp test_sim_secagg
          test_sim_he test_fault_he)
  add_test(NAME ${t} COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/${t}.sh)
  set_tests_properties(${t} PROPERTIES ENVIRONMENT "FS_FEDSEG=$<TARGET_FILE:fedseg>"
                       WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR} TIMEOUT 600 SKIP_RETURN_CODE 77)
endforeach()
