/* SPDX-License-Identifier: MIT */
/* Fuzz the MQTT decoder: the input is fed in pieces; every decoded packet must re-encode,
 * and decode again to a packet of the same type. An input whose first byte is 0x05 is MQTT 5
 * (the rest of it), any other 3.1.1. */
#include <stdlib.h>

#include "mqtt/codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The repeatable properties of a decoded block, into arrays the encoder reads. */
typedef struct Repeats {
    MqttUserProp user[64];
    uint32_t subid[64];
} Repeats;

static bool collect(MqttProps *p, Repeats *r)
{
    View raw = p->raw;
    MqttPropItem it;
    size_t nu = 0, ns = 0;
    while (mqtt_props_next(&raw, &it) == 1) {
        if (it.id == MQTT_PROP_USER && nu < 64) {
            r->user[nu++] = it.user;
        } else if (it.id == MQTT_PROP_SUBSCRIPTION_ID && ns < 64) {
            r->subid[ns++] = it.subid;
        }
    }
    if (nu != p->n_user || ns != p->n_subid) {
        return false; /* more than 64: not re-encoded */
    }
    p->has &= ~(MQTT_PROP_BIT(MQTT_PROP_USER) | MQTT_PROP_BIT(MQTT_PROP_SUBSCRIPTION_ID));
    p->user = r->user;
    p->subid = r->subid;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    MqttDecoder d;
    mqtt_decoder_init(&d, 1 << 16);
    if (size && data[0] == MQTT_V5) {
        d.version = MQTT_V5;
        data++;
        size--;
    }
    static Repeats props, will;
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
            if (!collect(&p.props, &props) ||
                (p.type == MQTT_CONNECT && !collect(&p.connect.will_props, &will))) {
                continue;
            }
            buf_clear(&out);
            if (mqtt_encode(&out, &p) != 0) {
                abort(); /* whatever decodes must encode */
            }
            MqttPacket q;
            if (mqtt_decode(buf_view(&out), p.version, 0, &q) != 1 || q.type != p.type) {
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
