/* SPDX-License-Identifier: MIT */
/* Run a fuzz target over every file of the given corpus directories (or files): how the
 * corpora run as ordinary tests in `meson test`, without libFuzzer. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 1;
    }
    Buf b = {0};
    for (;;) {
        if (buf_reserve(&b, 65536) < 0) {
            fclose(f);
            return 1;
        }
        size_t n = fread(b.data + b.len, 1, 65536, f);
        b.len += n;
        if (n == 0) {
            break;
        }
    }
    fclose(f);
    LLVMFuzzerTestOneInput(b.data ? b.data : (const uint8_t *)"", b.len);
    buf_free(&b);
    return 0;
}

int main(int argc, char **argv)
{
    int files = 0, failed = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) < 0) {
            perror(argv[i]);
            return 1;
        }
        if (!S_ISDIR(st.st_mode)) {
            failed += run_file(argv[i]);
            files++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        struct dirent *de;
        while (d && (de = readdir(d))) {
            if (de->d_name[0] == '.') {
                continue;
            }
            char path[4096];
            snprintf(path, sizeof(path), "%s/%s", argv[i], de->d_name);
            failed += run_file(path);
            files++;
        }
        if (d) {
            closedir(d);
        }
    }
    printf("%d passed, %d failed\n", files - failed, failed);
    return failed || files == 0;
}
