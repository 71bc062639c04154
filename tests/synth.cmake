# Tests of `fedseg synth` (node/synth*.c, cli/cmd_synth.c, common/png.c).
fs_add_test(test_synth_props test_synth_props.c)
set_tests_properties(test_synth_props PROPERTIES TIMEOUT 300)
foreach(t test_synth test_synth_nifti)
  add_test(NAME ${t} COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/${t}.sh)
  set_tests_properties(${t} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300
                       ENVIRONMENT "FS_FEDSEG=$<TARGET_FILE:fedseg>")
endforeach()
