/*
 * tests/fuzz/replay.c — runs a libFuzzer target's LLVMFuzzerTestOneInput on
 * every file of the given folders (the saved corpus and crash inputs), so
 * every ctest run re-checks them without clang or libFuzzer. Exit 0 when all
 * inputs ran (a crash fails the test by itself).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv)
{
    int files = 0;
    for (int a = 1; a < argc; a++) {
        DIR *d = opendir(argv[a]);
        if (!d) { fprintf(stderr, "replay: cannot open %s\n", argv[a]); return 1; }
        for (struct dirent *e; (e = readdir(d));) {
            if (e->d_name[0] == '.') continue;
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[a], e->d_name);
            FILE *f = fopen(path, "rb");
            if (!f) continue;
            fseek(f, 0, SEEK_END);
            long n = ftell(f);
            fseek(f, 0, SEEK_SET);
            uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
            if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) {
                LLVMFuzzerTestOneInput(buf, (size_t)n);
                files++;
            }
            free(buf);
            fclose(f);
        }
        closedir(d);
    }
    fprintf(stderr, "replayed %d input(s)\n", files);
    return files > 0 ? 0 : 1;
}
