# gRPC transport (common/transport.c): server and clients in separate processes
# over 127.0.0.1 with a throw-away PKI made by the openssl CLI (skips without
# it). About 20-60 s on two shared cores; FS_TRANSPORT_UPLOAD_MIB shrinks the
# 400 MiB upload for slow (sanitizer / valgrind) runs.
fs_add_test(test_transport test_transport.c)
set_tests_properties(test_transport PROPERTIES TIMEOUT 300)
