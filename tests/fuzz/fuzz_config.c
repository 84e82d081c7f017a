/* SPDX-License-Identifier: MIT */
/* Fuzz the configuration parser: any text gives a configuration or a FILE:LINE error. */
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text) {
        return 0;
    }
    memcpy(text, data, size);
    text[size] = 0;
    Config c;
    if (config_init(&c) == 0) {
        char err[400];
        if (config_parse(&c, text, "fuzz.conf", err, sizeof(err)) < 0) {
            if (strncmp(err, "fuzz.conf:", 10) != 0) {
                abort();
            }
        } else {
            config_check(&c, err, sizeof(err));
        }
        config_free(&c);
    }
    free(text);
    return 0;
}
