# Benchmark programs (owned by the benchmark area): they are not timed here; these
# tests check that each runs end to end and that its correctness gates pass.
#   bench_step_smoke   tiny preset, CPU, 2 images, 2 timed steps: the warm-up
#                      loss must be finite and fall, and a JSON result line appear
#   bench_step_gate    the same run with Adam's lr 0: the loss cannot fall, so
#   (and _message)     bench_step must refuse to time it, say why, and exit 1
#   bench_step_usage   an unknown preset is refused with a message
#   torch_step_params  the PyTorch comparison model has DESIGN.md's parameter
#                      counts (skipped when PyTorch is not installed)
add_test(NAME bench_step_smoke
         COMMAND bench_step --model tiny --device cpu --batch 2 --steps 2 --warmup 3
                 --threads 2 --json)
set_tests_properties(bench_step_smoke PROPERTIES
                     PASS_REGULAR_EXPRESSION "\"model\":\"tiny\",\"device\":\"cpu\".*\"img_per_s\":[0-9]"
                     FAIL_REGULAR_EXPRESSION "error:" TIMEOUT 300)
add_test(NAME bench_step_gate
         COMMAND bench_step --model tiny --device cpu --batch 2 --steps 2 --warmup 3
                 --threads 2 --lr 0)
set_tests_properties(bench_step_gate PROPERTIES WILL_FAIL TRUE TIMEOUT 300)
add_test(NAME bench_step_gate_message
         COMMAND bench_step --model tiny --device cpu --batch 2 --steps 2 --warmup 3
                 --threads 2 --lr 0)
set_tests_properties(bench_step_gate_message PROPERTIES
                     PASS_REGULAR_EXPRESSION "the loss did not fall over 3 warm-up steps" TIMEOUT 300)
add_test(NAME bench_step_usage COMMAND bench_step --model nosuchpreset)
set_tests_properties(bench_step_usage PROPERTIES
                     PASS_REGULAR_EXPRESSION "unknown preset 'nosuchpreset'")

if(EXISTS /usr/bin/python3)
  set(FS_TORCH_PYTHON /usr/bin/python3)
else()
  find_program(FS_TORCH_PYTHON python3)
endif()
if(FS_TORCH_PYTHON)
  add_test(NAME torch_step_params
           COMMAND ${FS_TORCH_PYTHON} ${CMAKE_SOURCE_DIR}/bench/torch_step.py --check-params)
  set_tests_properties(torch_step_params PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 120)
endif()
